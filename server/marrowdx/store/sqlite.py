"""Reports in an embedded SQLite database (WAL, synchronous=FULL): a report is
on disk before the RPC that made it returns success.

Rows hold the serialized report (opaque bytes to this module) and the keys to
find it by; ``request_id`` is unique so a resubmitted request gets the same
report back.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (
    report_id    TEXT PRIMARY KEY,
    accession_id TEXT,
    request_id   TEXT UNIQUE,
    created_at   TEXT NOT NULL,
    payload      BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS reports_accession ON reports(accession_id, created_at);
"""


@dataclass(frozen=True)
class StoredReport:
    report_id: str
    payload: bytes


class ReportStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def save(self, report_id: str, accession_id: str, request_id: str, created_at: str, payload: bytes) -> StoredReport:
        """Commit the report; if ``request_id`` was seen before, return the earlier report instead."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                if request_id:
                    row = self._db.execute("SELECT report_id, payload FROM reports WHERE request_id = ?",
                                           (request_id,)).fetchone()
                    if row:
                        self._db.execute("ROLLBACK")
                        return StoredReport(row[0], row[1])
                self._db.execute(
                    "INSERT INTO reports(report_id, accession_id, request_id, created_at, payload) VALUES (?,?,?,?,?)",
                    (report_id, accession_id or None, request_id or None, created_at, payload))
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return StoredReport(report_id, payload)

    def by_request_id(self, request_id: str) -> StoredReport | None:
        return self._one("SELECT report_id, payload FROM reports WHERE request_id = ?", request_id)

    def by_report_id(self, report_id: str) -> StoredReport | None:
        return self._one("SELECT report_id, payload FROM reports WHERE report_id = ?", report_id)

    def by_accession_id(self, accession_id: str) -> StoredReport | None:
        """The newest report for an accession."""
        return self._one("SELECT report_id, payload FROM reports WHERE accession_id = ? "
                         "ORDER BY created_at DESC LIMIT 1", accession_id)

    def _one(self, sql: str, key: str) -> StoredReport | None:
        with self._lock:
            row = self._db.execute(sql, (key,)).fetchone()
        return StoredReport(row[0], row[1]) if row else None
