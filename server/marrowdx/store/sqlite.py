"""Reports in an embedded SQLite database (WAL, synchronous=FULL): a report is
on disk before the RPC that made it returns success.

Rows hold the serialized report (opaque bytes to this module), the keys to
find it by and its owner (the organisation whose client submitted it). Every
lookup is scoped to an owner, so one organisation never sees another's
reports; ``request_id`` is unique per owner, so a resubmitted request gets the
same report back and another organisation's request id reveals nothing. Each
row also keeps the request's fingerprint (a digest of the case details and
one digest per image, opaque here) so that the caller can tell a resubmission
from another case sent under the same request id.

Writes go through one connection under a lock, each a FULL-synchronous commit;
lookups use a second connection (WAL lets it read while a commit is being
fsynced), so a lookup never waits for a save. Both are blocking calls: the
service runs them in worker threads, off the event loop.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 3
SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (
    report_id     TEXT PRIMARY KEY,
    owner         TEXT NOT NULL,
    client_id     TEXT NOT NULL DEFAULT '',
    accession_id  TEXT,
    request_id    TEXT,
    created_at    TEXT NOT NULL,
    payload       BLOB NOT NULL,
    case_digest   TEXT,
    image_digests BLOB,
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
# Version 2 had no fingerprint: its rows keep NULL (a resubmission of one is answered as before).
MIGRATE_FROM_2 = """
ALTER TABLE reports ADD COLUMN case_digest TEXT;
ALTER TABLE reports ADD COLUMN image_digests BLOB;
"""
ANY_OWNER = None  # an administrator's lookups


@dataclass(frozen=True)
class StoredReport:
    report_id: str
    payload: bytes
    owner: str = ""
    case_digest: str | None = None  # the request's fingerprint; None for rows older than schema 3
    image_digests: bytes | None = None


def connect(path: Path, synchronous: str = "FULL") -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    return db


_COLUMNS = "report_id, payload, owner, case_digest, image_digests"


class ReportStore:
    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = connect(path)
        self._migrate()
        # Lookups: a connection of their own (its own lock: a connection is used by one thread at a time).
        self._read_lock = threading.Lock()
        self._read = connect(path)

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(reports)")}
        if not columns or "case_digest" in columns:
            script = SCHEMA
        elif "owner" in columns:
            script = MIGRATE_FROM_2
        else:
            script = MIGRATE_FROM_1
        if version < SCHEMA_VERSION:
            self._db.executescript(f"BEGIN IMMEDIATE; {script} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")

    def close(self) -> None:
        with self._lock:
            self._db.close()
        with self._read_lock:
            self._read.close()

    def save(self, report_id: str, accession_id: str, request_id: str, created_at: str, payload: bytes,
             owner: str, client_id: str = "", case_digest: str | None = None,
             image_digests: bytes | None = None) -> StoredReport:
        """Commit the report; if this owner sent ``request_id`` before, return the earlier report
        (with its fingerprint, for the caller to compare) instead."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                if request_id:
                    row = self._db.execute(f"SELECT {_COLUMNS} FROM reports WHERE owner = ? AND request_id = ?",
                                           (owner, request_id)).fetchone()
                    if row:
                        self._db.execute("ROLLBACK")
                        return StoredReport(*row)
                self._db.execute(
                    "INSERT INTO reports(report_id, owner, client_id, accession_id, request_id, created_at, payload, "
                    "case_digest, image_digests) VALUES (?,?,?,?,?,?,?,?,?)",
                    (report_id, owner, client_id, accession_id or None, request_id or None, created_at, payload,
                     case_digest, image_digests))
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return StoredReport(report_id, payload, owner, case_digest, image_digests)

    def by_request_id(self, request_id: str, owner: str) -> StoredReport | None:
        return self._one("request_id = ?", request_id, owner)

    def by_report_id(self, report_id: str, owner: str | None) -> StoredReport | None:
        """``owner`` None (an administrator) finds any owner's report."""
        return self._one("report_id = ?", report_id, owner)

    def by_accession_id(self, accession_id: str, owner: str | None) -> StoredReport | None:
        """The newest report for an accession."""
        return self._one("accession_id = ?", accession_id, owner, order="ORDER BY created_at DESC LIMIT 1")

    def report_ids(self) -> set[str]:
        with self._read_lock:
            return {row[0] for row in self._read.execute("SELECT report_id FROM reports")}

    def _one(self, where: str, key: str, owner: str | None, order: str = "") -> StoredReport | None:
        sql = f"SELECT {_COLUMNS} FROM reports WHERE {where}"
        args: tuple = (key,)
        if owner is not ANY_OWNER:
            sql += " AND owner = ?"
            args += (owner,)
        with self._read_lock:  # never the writer's lock: a lookup does not wait for a commit's fsync
            row = self._read.execute(f"{sql} {order}", args).fetchone()
        return StoredReport(*row) if row else None
