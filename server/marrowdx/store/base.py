"""The store's interface: what the service needs from a report store and an
audit log, whichever database is behind them (``store/sqlite.py`` +
``store/audit.py`` embedded, ``store/postgres.py`` shared by replicas).

Every backend gives the same guarantees, checked by one test suite
(``tests/unit/test_store_contract.py``):

- ``save`` returns only once the report is committed durably;
- a request id is unique per owner, enforced by the database (a constraint),
  so replicas saving the same request at once keep one report and both get it;
- every lookup but an administrator's (``ANY_OWNER``) is scoped to the owner;
- the audit log is append-only, enforced by the database (triggers).
"""

from __future__ import annotations

import asyncio
from typing import Protocol, runtime_checkable

from marrowdx.store.audit import AuditEntry
from marrowdx.store.sqlite import ANY_OWNER, StoredReport

__all__ = ["ANY_OWNER", "AuditEntry", "AuditLog", "ReportStore", "StoreUnavailable", "StoredReport"]


class StoreUnavailable(RuntimeError):
    """The database cannot be reached now (restarting, failing over): the call may be retried
    (UNAVAILABLE). Its message names no host, user or password."""


@runtime_checkable
class ReportStore(Protocol):
    def save(self, report_id: str, accession_id: str, request_id: str, created_at: str, payload: bytes,
             owner: str, client_id: str = "", case_digest: str | None = None,
             image_digests: bytes | None = None) -> StoredReport:
        """Commit the report, or return the report this owner already saved under ``request_id``."""

    def by_request_id(self, request_id: str, owner: str) -> StoredReport | None: ...

    def by_report_id(self, report_id: str, owner: str | None) -> StoredReport | None: ...

    def by_accession_id(self, accession_id: str, owner: str | None) -> StoredReport | None: ...

    def report_ids(self) -> set[str]: ...

    def close(self) -> None: ...


@runtime_checkable
class AuditLog(Protocol):
    def submit(self, *args: str, **kwargs: str) -> asyncio.Future:
        """``record`` off the event loop; the row is written even if the awaiting task is cancelled."""

    def record(self, client_id: str, org: str, method: str, outcome: str, request_id: str = "",
               case_ref: str = "", report_id: str = "", peer: str = "") -> None: ...

    def recent(self, limit: int = 100) -> list[AuditEntry]: ...

    def close(self) -> None: ...
