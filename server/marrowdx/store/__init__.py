"""Report persistence behind one interface (``store/base.py``), two backends:
SQLite files beside the service (the default: one machine) and PostgreSQL
(``database = postgresql://...``: several replicas share it)."""

from __future__ import annotations

from pathlib import Path

from marrowdx.store.base import AuditLog, ReportStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(database: str | Path | None) -> bool:
    return isinstance(database, str) and database.startswith(POSTGRES_SCHEMES)


def open_stores(database: str | Path, audit_path: Path | None = None) -> tuple[ReportStore, AuditLog]:
    """The report store and the audit log for ``database``: a PostgreSQL URL (both in that database;
    credentials from the URL or libpq's PGPASSWORD/PGPASSFILE), else a SQLite file (the audit log in
    ``audit_path``, default beside it)."""
    if is_postgres(database):
        from marrowdx.store.postgres import PostgresAuditLog, PostgresReportStore

        store = PostgresReportStore(str(database))
        try:
            return store, PostgresAuditLog(str(database))
        except BaseException:
            store.close()
            raise
    from marrowdx.store.audit import AuditLog as SqliteAuditLog
    from marrowdx.store.sqlite import ReportStore as SqliteReportStore

    path = Path(database)
    store = SqliteReportStore(path)
    try:
        return store, SqliteAuditLog(audit_path or path.with_name(path.stem + ".audit.sqlite3"))
    except BaseException:
        store.close()
        raise


__all__ = ["AuditLog", "ReportStore", "is_postgres", "open_stores"]
