"""Per-RPC request context, logs, metrics, in-flight limit and error mapping:
one wrapper applied to every servicer method, so each concern lives once."""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable

import grpc
import structlog
from prometheus_client import Counter, Gauge, Histogram

from marrowdx.api.errors import Overloaded, to_status

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


def rpc(method: str, streaming: bool = False) -> Callable:
    """Decorate a servicer coroutine (or async generator when ``streaming``)."""

    def decorate(fn: Callable) -> Callable:
        async def _enter(self, context):
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(request_id=_request_id(context), rpc=method)
            self.limit.enter()
            return time.perf_counter()

        async def _finish(context, start: float, exc: BaseException | None) -> None:
            code = "OK"
            if exc is not None:
                status = to_status(exc)
                code = status.code.name
                log.info("rpc.failed", code=code, error=status.details, ms=round((time.perf_counter() - start) * 1e3, 1))
                RPCS.labels(method, code).inc()
                LATENCY.labels(method).observe(time.perf_counter() - start)
                await context.abort_with_status(status)
            RPCS.labels(method, code).inc()
            LATENCY.labels(method).observe(time.perf_counter() - start)
            log.info("rpc.ok", ms=round((time.perf_counter() - start) * 1e3, 1))
            structlog.contextvars.clear_contextvars()

        if streaming:
            @functools.wraps(fn)
            async def stream_wrapper(self, request_iterator, context):
                try:
                    start = await _enter(self, context)
                except Overloaded as exc:
                    await context.abort_with_status(to_status(exc))
                try:
                    async for item in fn(self, request_iterator, context):
                        yield item
                except Exception as exc:  # mapped once, in to_status
                    self.limit.leave()
                    await _finish(context, start, exc)
                    return
                self.limit.leave()
                await _finish(context, start, None)
            return stream_wrapper

        @functools.wraps(fn)
        async def wrapper(self, request, context):
            try:
                start = await _enter(self, context)
            except Overloaded as exc:
                RPCS.labels(method, "RESOURCE_EXHAUSTED").inc()
                await context.abort_with_status(to_status(exc))
            try:
                response = await fn(self, request, context)
            except Exception as exc:
                self.limit.leave()
                await _finish(context, start, exc)
                raise AssertionError("unreachable: abort raises") from exc  # pragma: no cover
            self.limit.leave()
            await _finish(context, start, None)
            return response
        return wrapper

    return decorate
