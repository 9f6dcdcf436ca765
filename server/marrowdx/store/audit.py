"""An append-only audit log of who did what: client, organisation, method,
outcome, and the report or keyed case reference it touched; never a patient
identifier, an image or a credential.

It lives in its own SQLite file beside the reports (``Settings.audit_path``),
so an audit write never waits on a report's commit, with synchronous=NORMAL
(WAL): an entry survives a crash of the service; only a power cut may take
the last few.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from marrowdx.store.sqlite import connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    at         TEXT NOT NULL,
    client_id  TEXT NOT NULL,
    org        TEXT NOT NULL,
    method     TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    request_id TEXT NOT NULL DEFAULT '',
    case_ref   TEXT NOT NULL DEFAULT '',
    report_id  TEXT NOT NULL DEFAULT '',
    peer       TEXT NOT NULL DEFAULT ''
);
CREATE TRIGGER IF NOT EXISTS audit_append_only_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_append_only_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""
COLUMNS = ("seq", "at", "client_id", "org", "method", "outcome", "request_id", "case_ref", "report_id", "peer")


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: str
    client_id: str
    org: str
    method: str
    outcome: str
    request_id: str
    case_ref: str
    report_id: str
    peer: str


class AuditLog:
    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = connect(path, synchronous="NORMAL")
        self._db.executescript(SCHEMA)
        # One worker: rows are written off the event loop, in the order the calls ended.
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="marrowdx-audit")

    def submit(self, *args: str, **kwargs: str) -> asyncio.Future:
        """``record`` on the audit worker thread; the row is written even if the awaiting task is
        cancelled (an RPC ending by cancellation still gets its row)."""
        return asyncio.get_running_loop().run_in_executor(self._writer, lambda: self.record(*args, **kwargs))

    def record(self, client_id: str, org: str, method: str, outcome: str, request_id: str = "",
               case_ref: str = "", report_id: str = "", peer: str = "") -> None:
        at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        with self._lock:
            self._db.execute("INSERT INTO audit(at, client_id, org, method, outcome, request_id, case_ref, report_id, peer) "
                             "VALUES (?,?,?,?,?,?,?,?,?)",
                             (at, client_id, org, method, outcome, request_id, case_ref, report_id, peer))

    def recent(self, limit: int = 100) -> list[AuditEntry]:
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM audit ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return [AuditEntry(*row) for row in reversed(rows)]

    def close(self) -> None:
        self._writer.shutdown(wait=True)  # rows already submitted are written first
        with self._lock:
            self._db.close()
