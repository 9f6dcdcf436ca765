"""Reports and the audit log in PostgreSQL, shared by every front replica.

The same guarantees as the SQLite store (``store/base.py``), by the database:
a save returns after its COMMIT, which with PostgreSQL's defaults
(``synchronous_commit=on``, and a synchronous standby where the cluster has
one) is on disk before the RPC answers; ``UNIQUE (owner, request_id)`` makes
one report per request id and organisation across replicas (``INSERT ... ON
CONFLICT DO NOTHING`` waits for a concurrent insert of the same key and then
reads the winner's row); triggers refuse UPDATE, DELETE and TRUNCATE on the
audit log.

The schema is versioned by the numbered SQL files in
``store/migrations/postgresql/``, applied in order and recorded in
``schema_version``, under an advisory lock so that replicas starting together
migrate once. A database migrated by a newer marrowdx is refused rather than
written with an older idea of its schema.

Connections come from a small pool (psycopg_pool) that checks a connection
before lending it, so a database restart or failover costs the calls in
flight, not the process. Calls block: the service runs them in worker threads.
The URL may carry a password; it is never logged (libpq's PGPASSWORD or
PGPASSFILE keep it out of the URL altogether).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from importlib import resources

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from marrowdx.store.audit import COLUMNS as AUDIT_COLUMNS
from marrowdx.store.audit import AuditEntry
from marrowdx.store.base import StoreUnavailable
from marrowdx.store.sqlite import ANY_OWNER, StoredReport

MIGRATIONS = "migrations/postgresql"
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# Any constant: replicas agree on it, and the lock is held only for the migrating transaction.
_MIGRATION_LOCK = 0x6D61_7272_6F77


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer marrowdx than this one."""


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL), in order; versions are 1, 2, ... without gaps."""
    folder = resources.files("marrowdx.store").joinpath(MIGRATIONS)
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    found.sort()
    if [v for v, _, _ in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations are not numbered 1..n without gaps: {[name for _, name, _ in found]}")
    return found


def migrate(conn: psycopg.Connection) -> int:
    """Apply the migrations this database lacks, in one transaction; return its schema version."""
    known = migrations()
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                     "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        applied = {row[0] for row in conn.execute("SELECT version FROM schema_version")}
        newest = max(applied, default=0)
        if newest > len(known):
            raise SchemaTooNew(f"the database is at schema version {newest}; this marrowdx knows up to {len(known)}")
        for version, name, sql in known:
            if version in applied:
                continue
            conn.execute(sql)
            conn.execute("INSERT INTO schema_version(version, name) VALUES (%s, %s)", (version, name))
    return len(known)


def schema_version(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]


# How long a call waits for a connection: a database that is down (restart, failover) fails the
# call within this, as UNAVAILABLE, and the client retries; the pool reconnects in the background.
CONNECT_TIMEOUT_S = 10.0


def _pool(url: str, size: int, name: str) -> ConnectionPool:
    pool = ConnectionPool(url, min_size=1, max_size=size, open=False, name=name, timeout=CONNECT_TIMEOUT_S,
                          kwargs={"autocommit": True, "connect_timeout": 5}, check=ConnectionPool.check_connection)
    try:
        pool.open(wait=True, timeout=30)
    except PoolTimeout:
        pool.close()
        raise StoreUnavailable("the PostgreSQL database did not accept a connection within 30 s") from None
    return pool


@contextlib.contextmanager
def _connection(pool: ConnectionPool) -> Iterator[psycopg.Connection]:
    """A pooled connection; losing the database becomes StoreUnavailable (never its address)."""
    try:
        with pool.connection() as conn:
            yield conn
    except PoolTimeout:
        raise StoreUnavailable(f"no database connection within {CONNECT_TIMEOUT_S:g} s") from None
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(f"the database connection failed ({type(exc).__name__})") from None


_COLUMNS = "report_id, payload, owner, case_digest, image_digests"


def _stored(row: tuple | None) -> StoredReport | None:
    if row is None:
        return None
    report_id, payload, owner, case_digest, image_digests = row
    return StoredReport(report_id, bytes(payload), owner, case_digest,
                        bytes(image_digests) if image_digests is not None else None)


class PostgresReportStore:
    def __init__(self, url: str, pool_size: int = 8) -> None:
        # A pool of several: saves and lookups of concurrent cases do not queue behind one another
        # (PostgreSQL's MVCC lets a lookup read while another connection's commit is being flushed).
        self._pool = _pool(url, pool_size, "marrowdx-reports")
        try:
            with _connection(self._pool) as conn:
                self.schema_version = migrate(conn)
        except BaseException:
            self._pool.close()
            raise

    def close(self) -> None:
        self._pool.close()

    def save(self, report_id: str, accession_id: str, request_id: str, created_at: str, payload: bytes,
             owner: str, client_id: str = "", case_digest: str | None = None,
             image_digests: bytes | None = None) -> StoredReport:
        """Commit the report; if this owner sent ``request_id`` before (on any replica), return the
        earlier report (with its fingerprint, for the caller to compare) instead."""
        with _connection(self._pool) as conn:
            inserted = conn.execute(
                "INSERT INTO reports(report_id, owner, client_id, accession_id, request_id, created_at, payload, "
                "case_digest, image_digests) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s) "
                "ON CONFLICT (owner, request_id) DO NOTHING RETURNING report_id",
                (report_id, owner, client_id, accession_id or None, request_id or None, created_at, payload,
                 case_digest, image_digests)).fetchone()
            if inserted is None:  # the key was taken (committed, or committed while we waited): read that one
                row = conn.execute(f"SELECT {_COLUMNS} FROM reports WHERE owner = %s AND request_id = %s",
                                   (owner, request_id)).fetchone()
                return _stored(row)
        return StoredReport(report_id, payload, owner, case_digest, image_digests)

    def by_request_id(self, request_id: str, owner: str) -> StoredReport | None:
        return self._one("request_id = %s", request_id, owner)

    def by_report_id(self, report_id: str, owner: str | None) -> StoredReport | None:
        """``owner`` None (an administrator) finds any owner's report."""
        return self._one("report_id = %s", report_id, owner)

    def by_accession_id(self, accession_id: str, owner: str | None) -> StoredReport | None:
        """The newest report for an accession."""
        return self._one("accession_id = %s", accession_id, owner, order="ORDER BY created_at DESC LIMIT 1")

    def report_ids(self) -> set[str]:
        with _connection(self._pool) as conn:
            return {row[0] for row in conn.execute("SELECT report_id FROM reports")}

    def _one(self, where: str, key: str, owner: str | None, order: str = "") -> StoredReport | None:
        sql = f"SELECT {_COLUMNS} FROM reports WHERE {where}"
        args: tuple = (key,)
        if owner is not ANY_OWNER:
            sql += " AND owner = %s"
            args += (owner,)
        with _connection(self._pool) as conn:
            return _stored(conn.execute(f"{sql} {order}", args).fetchone())


class PostgresAuditLog:
    def __init__(self, url: str) -> None:
        self._pool = _pool(url, 2, "marrowdx-audit")
        try:
            with _connection(self._pool) as conn:
                migrate(conn)
        except BaseException:
            self._pool.close()
            raise
        # One worker: rows are written off the event loop, in the order the calls ended.
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="marrowdx-audit")
        self._closed = threading.Event()

    def submit(self, *args: str, **kwargs: str) -> asyncio.Future:
        return asyncio.get_running_loop().run_in_executor(self._writer, lambda: self.record(*args, **kwargs))

    def record(self, client_id: str, org: str, method: str, outcome: str, request_id: str = "",
               case_ref: str = "", report_id: str = "", peer: str = "") -> None:
        at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        with _connection(self._pool) as conn:
            conn.execute("INSERT INTO audit(at, client_id, org, method, outcome, request_id, case_ref, report_id, "
                         "peer) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                         (at, client_id, org, method, outcome, request_id, case_ref, report_id, peer))

    def recent(self, limit: int = 100) -> list[AuditEntry]:
        with _connection(self._pool) as conn:
            rows = conn.execute(f"SELECT {', '.join(AUDIT_COLUMNS)} FROM audit ORDER BY seq DESC LIMIT %s",
                                (limit,)).fetchall()
        return [AuditEntry(*row) for row in reversed(rows)]

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._writer.shutdown(wait=True)  # rows already submitted are written first
        self._pool.close()
