"""Per-RPC request context, authentication and role check, logs, metrics,
audit, in-flight limit and error mapping: one wrapper applied to every
servicer method, so each concern lives once."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from collections.abc import Callable

import grpc
import structlog
from prometheus_client import Counter, Gauge, Histogram

from marrowdx.api.errors import Overloaded, RequestError, to_status
from marrowdx.api.wire import Undecodable
from marrowdx.inference.triton import CALLER_DEADLINE
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


DEADLINE_SLACK_S = 0.25


def _ended_by_cancel(call: _Call) -> str:
    """The code a call cancelled under us ended with: its deadline passed, or the client went away.
    When the client's own deadline fires first it cancels the stream a moment before the server's
    copy of the deadline (the two clocks differ by tens of ms): that is still the deadline."""
    if call.deadline is not None and time.monotonic() >= call.deadline - DEADLINE_SLACK_S:
        return "DEADLINE_EXCEEDED"
    return "CANCELLED"


def rpc(method: str, role: Role | None, streaming: bool = False) -> Callable:
    """Decorate a servicer coroutine (or async generator when ``streaming``).
    ``role`` None: any authenticated caller. The servicer provides ``limit`` (InFlightLimit), ``auth`` (Authenticator) and ``audit`` (AuditLog).

    However a call ends (a result, an error, its deadline, the client cancelling, a stream
    closed under it), one ``finally`` gives its in-flight slot back and writes its audit row:
    cancellation arrives as ``CancelledError`` and a closed stream as ``GeneratorExit``, neither
    of which is an ``Exception``."""

    def decorate(fn: Callable) -> Callable:
        def _enter(self, context, call: _Call) -> None:
            """Identify the caller (into ``call``, for the audit), check the role, take an
            in-flight slot; raises to refuse."""
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(request_id=_request_id(context), rpc=method)
            # Model calls made for this RPC take no longer than its caller waits (inference/triton.py).
            CALLER_DEADLINE.set(call.deadline)
            call.principal = self.auth.authenticate(context)
            structlog.contextvars.bind_contextvars(client_id=call.principal.client_id)
            if role is not None:
                call.principal.require(role)
            self.limit.enter()
            call.holds_slot = True

        async def _fail(self, context, call: _Call, exc: Exception) -> None:
            status = to_status(exc)  # mapped once, here
            call.code, call.error = status.code.name, status.details
            await context.abort_with_status(status)

        async def _end(self, context, call: _Call) -> None:
            if call.holds_slot:
                call.holds_slot = False
                self.limit.leave()
            elapsed = time.perf_counter() - call.start
            RPCS.labels(method, call.code).inc()
            LATENCY.labels(method).observe(elapsed)
            if call.code == "OK":
                log.info("rpc.ok", ms=round(elapsed * 1e3, 1))
            else:
                log.info("rpc.failed", code=call.code, error=call.error, ms=round(elapsed * 1e3, 1))
            bound = structlog.contextvars.get_contextvars()
            principal = call.principal
            written = self.audit.submit(principal.client_id if principal else "", principal.org if principal else "",
                                        method, call.code, request_id=bound.get("request_id", ""),
                                        case_ref=bound.get("case_ref", ""), report_id=bound.get("report_id", ""),
                                        peer=call.peer)
            structlog.contextvars.clear_contextvars()
            # Wait for the row so that it exists when the caller has its answer; if this task is
            # cancelled again meanwhile, the worker still writes it.
            await asyncio.shield(written)

        if streaming:
            @functools.wraps(fn)
            async def stream_wrapper(self, request_iterator, context):
                call = _Call(context)
                try:
                    try:
                        _enter(self, context, call)
                        async with contextlib.aclosing(fn(self, _each_decoded(request_iterator), context)) as items:
                            async for item in items:
                                yield item
                        call.code = "OK"
                    except Exception as exc:
                        await _fail(self, context, call, exc)
                except (asyncio.CancelledError, GeneratorExit):
                    call.code = _ended_by_cancel(call)
                    raise
                finally:
                    await _end(self, context, call)
            return stream_wrapper

        @functools.wraps(fn)
        async def wrapper(self, request, context):
            call = _Call(context)
            try:
                try:
                    _enter(self, context, call)
                    response = await fn(self, _decoded(request), context)
                    call.code = "OK"
                    return response
                except Exception as exc:
                    await _fail(self, context, call, exc)
                    raise AssertionError("unreachable: abort raises") from exc  # pragma: no cover
            except asyncio.CancelledError:
                call.code = _ended_by_cancel(call)
                raise
            finally:
                await _end(self, context, call)
        return wrapper

    return decorate


def _decoded(request):
    """The request, or INVALID_ARGUMENT when its bytes were not a valid message (api/wire.py)."""
    if isinstance(request, Undecodable):
        raise RequestError("request", f"the bytes are not a valid {request.message} message ({request.error})")
    return request


async def _each_decoded(request_iterator):
    async for request in request_iterator:
        yield _decoded(request)


class _Call:
    """What one call's ``finally`` needs: who called, how it ended, whether it holds a slot.
    The peer and the deadline are read from the context at once: once grpc has cancelled a call,
    its context must not be asked (``peer()`` on a cancelled aio call crashed the process)."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self.peer = context.peer() or ""
        remaining = context.time_remaining()
        self.deadline = time.monotonic() + remaining if remaining is not None else None
        self.start = time.perf_counter()
        self.principal = None
        self.holds_slot = False
        self.code = "UNKNOWN"  # anything not caught below (a BaseException) ends as UNKNOWN in the audit
        self.error = ""
