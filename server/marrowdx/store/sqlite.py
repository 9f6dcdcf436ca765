"""Reports in an embedded SQLite database (WAL, synchronous=FULL): a report is
on disk before the RPC that made it returns success.

Rows hold the serialized report (opaque bytes to this module), the keys to
find it by and its owner (the organisation whose client submitted it). Every
lookup is scoped to an owner, so one organisation never sees another's
reports; ``request_id`` is unique per owner, so a resubmitted request gets the
same report back and another organisation's request id reveals nothing.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (
    report_id    TEXT PRIMARY KEY,
    owner        TEXT NOT NULL,
    client_id    TEXT NOT NULL DEFAULT '',
    accession_id TEXT,
    request_id   TEXT,
    created_at   TEXT NOT NULL,
    payload      BLOB NOT NULL,
    UNIQUE (owner, request_id)
);
CREATE INDEX IF NOT EXISTS reports_accession ON reports(owner, accession_id, created_at);
"""
# Version 1 had no owner; its reports belong to the single local owner of an open (no-auth) service.
MIGRATE_FROM_1 = """
ALTER TABLE reports RENAME TO reports_v1;
DROP INDEX IF EXISTS reports_accession;
""" + SCHEMA + """
INSERT INTO reports(report_id, owner, accession_id, request_id, created_at, payload)
    SELECT report_id, 'local', accession_id, request_id, created_at, payload FROM reports_v1;
DROP TABLE reports_v1;
"""
ANY_OWNER = None  # an administrator's lookups


@dataclass(frozen=True)
class StoredReport:
    report_id: str
    payload: bytes
    owner: str = ""


def connect(path: Path, synchronous: str = "FULL") -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    return db


class ReportStore:
    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = connect(path)
        self._migrate()

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(reports)")}
        script = SCHEMA if not columns or "owner" in columns else MIGRATE_FROM_1
        if version < SCHEMA_VERSION:
            self._db.executescript(f"BEGIN IMMEDIATE; {script} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def save(self, report_id: str, accession_id: str, request_id: str, created_at: str, payload: bytes,
             owner: str, client_id: str = "") -> StoredReport:
        """Commit the report; if this owner sent ``request_id`` before, return the earlier report instead."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                if request_id:
                    row = self._db.execute("SELECT report_id, payload, owner FROM reports WHERE owner = ? AND request_id = ?",
                                           (owner, request_id)).fetchone()
                    if row:
                        self._db.execute("ROLLBACK")
                        return StoredReport(*row)
                self._db.execute(
                    "INSERT INTO reports(report_id, owner, client_id, accession_id, request_id, created_at, payload) "
                    "VALUES (?,?,?,?,?,?,?)",
                    (report_id, owner, client_id, accession_id or None, request_id or None, created_at, payload))
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return StoredReport(report_id, payload, owner)

    def by_request_id(self, request_id: str, owner: str) -> StoredReport | None:
        return self._one("request_id = ?", request_id, owner)

    def by_report_id(self, report_id: str, owner: str | None) -> StoredReport | None:
        """``owner`` None (an administrator) finds any owner's report."""
        return self._one("report_id = ?", report_id, owner)

    def by_accession_id(self, accession_id: str, owner: str | None) -> StoredReport | None:
        """The newest report for an accession."""
        return self._one("accession_id = ?", accession_id, owner, order="ORDER BY created_at DESC LIMIT 1")

    def report_ids(self) -> set[str]:
        with self._lock:
            return {row[0] for row in self._db.execute("SELECT report_id FROM reports")}

    def _one(self, where: str, key: str, owner: str | None, order: str = "") -> StoredReport | None:
        sql = f"SELECT report_id, payload, owner FROM reports WHERE {where}"
        args: tuple = (key,)
        if owner is not ANY_OWNER:
            sql += " AND owner = ?"
            args += (owner,)
        with self._lock:
            row = self._db.execute(f"{sql} {order}", args).fetchone()
        return StoredReport(*row) if row else None
