"""Per-RPC request context, authentication and role check, logs, metrics,
audit, in-flight limit and error mapping: one wrapper applied to every
servicer method, so each concern lives once."""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable

import grpc
import structlog
from prometheus_client import Counter, Gauge, Histogram

from marrowdx.api.errors import Overloaded, to_status
from marrowdx.security.access import Role

log = structlog.get_logger("marrowdx.rpc")

RPCS = Counter("marrowdx_rpcs_total", "RPCs handled", ["method", "code"])
LATENCY = Histogram("marrowdx_rpc_seconds", "RPC latency", ["method"],
                    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
IN_FLIGHT = Gauge("marrowdx_rpcs_in_flight", "RPCs being handled")


class InFlightLimit:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.current = 0

    def enter(self) -> None:
        if self.current >= self.limit:
            raise Overloaded(retry_after_s=0.5)
        self.current += 1
        IN_FLIGHT.inc()

    def leave(self) -> None:
        self.current -= 1
        IN_FLIGHT.dec()


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and value:
            return str(value)[:64]
    return uuid.uuid4().hex


def rpc(method: str, role: Role | None, streaming: bool = False) -> Callable:
    """Decorate a servicer coroutine (or async generator when ``streaming``).
    ``role`` None: any authenticated caller. The servicer provides ``limit`` (InFlightLimit), ``auth`` (Authenticator) and ``audit`` (AuditLog)."""

    def decorate(fn: Callable) -> Callable:
        def _enter(self, context, who: list) -> None:
            """Identify the caller (into ``who``, for the audit), check the role, take an
            in-flight slot; raises to refuse."""
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(request_id=_request_id(context), rpc=method)
            who[0] = self.auth.authenticate(context)
            structlog.contextvars.bind_contextvars(client_id=who[0].client_id)
            if role is not None:
                who[0].require(role)
            self.limit.enter()

        async def _refuse(self, context, start: float, who: list, exc: BaseException) -> None:
            status = to_status(exc)
            _account(self, context, start, who, status.code.name, status.details)
            await context.abort_with_status(status)

        def _account(self, context, start: float, who: list, code: str, error: str = "") -> None:
            elapsed = time.perf_counter() - start
            RPCS.labels(method, code).inc()
            LATENCY.labels(method).observe(elapsed)
            if code == "OK":
                log.info("rpc.ok", ms=round(elapsed * 1e3, 1))
            else:
                log.info("rpc.failed", code=code, error=error, ms=round(elapsed * 1e3, 1))
            bound = structlog.contextvars.get_contextvars()
            principal = who[0]
            self.audit.record(principal.client_id if principal else "", principal.org if principal else "", method, code,
                              request_id=bound.get("request_id", ""), case_ref=bound.get("case_ref", ""),
                              report_id=bound.get("report_id", ""), peer=context.peer() or "")
            structlog.contextvars.clear_contextvars()

        if streaming:
            @functools.wraps(fn)
            async def stream_wrapper(self, request_iterator, context):
                who: list = [None]
                start = time.perf_counter()
                try:
                    _enter(self, context, who)
                except Exception as exc:
                    await _refuse(self, context, start, who, exc)
                try:
                    async for item in fn(self, request_iterator, context):
                        yield item
                except Exception as exc:  # mapped once, in to_status
                    self.limit.leave()
                    await _refuse(self, context, start, who, exc)
                    return
                self.limit.leave()
                _account(self, context, start, who, "OK")
            return stream_wrapper

        @functools.wraps(fn)
        async def wrapper(self, request, context):
            who: list = [None]
            start = time.perf_counter()
            try:
                _enter(self, context, who)
            except Exception as exc:
                await _refuse(self, context, start, who, exc)
            try:
                response = await fn(self, request, context)
            except Exception as exc:
                self.limit.leave()
                await _refuse(self, context, start, who, exc)
                raise AssertionError("unreachable: abort raises") from exc  # pragma: no cover
            self.limit.leave()
            _account(self, context, start, who, "OK")
            return response
        return wrapper

    return decorate
