"""Errors mapped to gRPC status codes, once, with google.rpc details."""

from __future__ import annotations

import uuid

import grpc
import structlog
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from marrowdx.imaging.decode import ImageError
from marrowdx.inference.triton import ModelError, ModelTimeout, ModelUnavailable
from marrowdx.security.access import AccessDenied, NotAuthenticated
from marrowdx.service import RequestConflict
from marrowdx.store.base import StoreUnavailable

log = structlog.get_logger(__name__)


class RequestError(ValueError):
    """A request that is wrong in a named field (INVALID_ARGUMENT)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.description = message


class NotFound(LookupError):
    pass


class StreamIdle(TimeoutError):
    """A case stream sent nothing for longer than the idle timeout (DEADLINE_EXCEEDED)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the stream sent no message for {seconds:g} s and was closed to free its slot; "
                         "resend the case (with the same request_id)")


class Overloaded(RuntimeError):
    def __init__(self, retry_after_s: float) -> None:
        super().__init__("server is at its in-flight limit; retry later")
        self.retry_after_s = retry_after_s


def _status(code: int, message: str, *details) -> grpc.Status:
    status = status_pb2.Status(code=code, message=message)
    for d in details:
        status.details.add().Pack(d)
    return rpc_status.to_status(status)


def to_status(exc: BaseException) -> grpc.Status:
    """The one place that decides which gRPC status an exception becomes."""
    if isinstance(exc, (RequestError, ImageError)):
        field = exc.field
        description = exc.description if isinstance(exc, RequestError) else str(exc)
        violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
        return _status(code_pb2.INVALID_ARGUMENT, f"{field}: {description}", error_details_pb2.BadRequest(field_violations=[violation]))
    if isinstance(exc, NotAuthenticated):
        return _status(code_pb2.UNAUTHENTICATED, str(exc))
    if isinstance(exc, AccessDenied):
        return _status(code_pb2.PERMISSION_DENIED, str(exc))
    if isinstance(exc, NotFound):
        return _status(code_pb2.NOT_FOUND, str(exc))
    if isinstance(exc, RequestConflict):
        violation = error_details_pb2.BadRequest.FieldViolation(field="case_info.request_id", description=str(exc))
        return _status(code_pb2.ALREADY_EXISTS, str(exc), error_details_pb2.BadRequest(field_violations=[violation]))
    if isinstance(exc, Overloaded):
        retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=int(exc.retry_after_s),
                                                                              nanos=int((exc.retry_after_s % 1) * 1e9)))
        return _status(code_pb2.RESOURCE_EXHAUSTED, str(exc), retry)
    if isinstance(exc, StreamIdle):
        return _status(code_pb2.DEADLINE_EXCEEDED, str(exc))
    if isinstance(exc, ModelTimeout):
        return _status(code_pb2.DEADLINE_EXCEEDED, str(exc))
    if isinstance(exc, ModelUnavailable):
        return _status(code_pb2.UNAVAILABLE, str(exc), error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1)))
    if isinstance(exc, StoreUnavailable):  # the database is restarting or failing over: resend
        return _status(code_pb2.UNAVAILABLE, f"report store unavailable: {exc}",
                       error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1)))
    if isinstance(exc, ModelError):
        return _status(code_pb2.UNAVAILABLE, str(exc))
    error_id = uuid.uuid4().hex[:12]
    log.exception("internal_error", error_id=error_id)
    return _status(code_pb2.INTERNAL, f"internal error {error_id}; the id is in the service log")


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    status = to_status(exc)
    await context.abort_with_status(status)
