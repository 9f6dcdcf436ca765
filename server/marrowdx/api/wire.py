"""What the generated registration and the grpc packages leave out, in one place:

- request bytes that are not a valid message reach the servicer as ``Undecodable``
  (the rpc wrapper answers INVALID_ARGUMENT naming the message) instead of failing in
  the deserializer, which grpc reports as UNKNOWN;
- server reflection under ``grpc.reflection.v1`` as well as ``v1alpha``: grpcio-reflection
  (1.81) ships only v1alpha, and the two protocols are the same messages on the wire;
- an audit row for every health and reflection call (open methods: no client is
  identified, the row carries the peer address and the outcome).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable

import grpc
from google.protobuf.message import DecodeError
from grpc_reflection.v1alpha import reflection, reflection_pb2

from marrowdx._proto.marrowdx.v1 import diagnosis_pb2 as pb
from marrowdx.store.audit import AuditLog

REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
AUDITED_OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class Undecodable:
    """A request whose bytes did not parse as ``message``."""

    def __init__(self, message: str, error: str) -> None:
        self.message = message
        self.error = error


def _decoder(cls) -> Callable[[bytes], object]:
    def decode(data: bytes):
        try:
            return cls.FromString(data)
        except (DecodeError, RuntimeError) as exc:  # RuntimeError: upb's "Error parsing message"
            return Undecodable(cls.DESCRIPTOR.full_name, str(exc) or "not a valid message")
    return decode


def add_service(servicer, server: grpc.aio.Server, service: str = "DiagnosisService") -> None:
    """Register ``servicer``'s methods like the generated ``add_..._to_server``, but with
    deserializers that never raise."""
    descriptor = pb.DESCRIPTOR.services_by_name[service]
    handlers = {}
    for method in descriptor.methods:
        request = getattr(pb, method.input_type.name)
        response = getattr(pb, method.output_type.name)
        kind = {(False, False): grpc.unary_unary_rpc_method_handler,
                (False, True): grpc.unary_stream_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler}[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = kind(getattr(servicer, method.name), request_deserializer=_decoder(request),
                                     response_serializer=response.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(descriptor.full_name, handlers),))


def enable_reflection(service_names: tuple[str, ...], server: grpc.aio.Server) -> None:
    """v1alpha as grpcio-reflection serves it, and the same servicer under v1."""
    names = (*service_names, reflection.SERVICE_NAME, REFLECTION_V1)
    reflection.enable_server_reflection(names, server)
    servicer = reflection.aio.ReflectionServicer(names)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": handler}),))


class AuditOpenMethods(grpc.aio.ServerInterceptor):
    """One audit row per health and reflection call. The diagnosis service's own methods are
    audited by the rpc wrapper (with the caller's identity); these are open to anyone (load
    balancers, tooling), so their rows name no client, only the peer and the outcome."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or not details.method.startswith(AUDITED_OPEN_PREFIXES):
            return handler
        # "/grpc.health.v1.Health/Check" -> "grpc.health.v1.Health/Check": the full name, so v1 and
        # v1alpha reflection stay apart.
        method = details.method.lstrip("/")
        request_id = next((str(v)[:64] for k, v in details.invocation_metadata or () if k == "x-request-id"), "")
        if handler.unary_unary:
            return handler._replace(unary_unary=self._unary(handler.unary_unary, method, request_id))
        if handler.unary_stream:
            return handler._replace(unary_stream=self._stream(handler.unary_stream, method, request_id))
        if handler.stream_stream:
            return handler._replace(stream_stream=self._stream(handler.stream_stream, method, request_id))
        return handler

    async def _record(self, peer: str, method: str, request_id: str, code: str) -> None:
        await asyncio.shield(self.audit.submit("", "", method, code, request_id=request_id, peer=peer))

    def _unary(self, behaviour, method: str, request_id: str):
        async def audited(request, context):
            code = "UNKNOWN"
            peer = context.peer() or ""  # now: a cancelled call's context must not be asked
            try:
                response = await behaviour(request, context)
                code = "OK"
                return response
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except Exception:
                code = _code_of(context)
                raise
            finally:
                await self._record(peer, method, request_id, code)
        return audited

    def _stream(self, behaviour, method: str, request_id: str):
        if not inspect.isasyncgenfunction(behaviour):  # writes with context.write (health Watch)
            return self._unary(behaviour, method, request_id)

        async def audited(request, context):
            code = "UNKNOWN"
            peer = context.peer() or ""
            try:
                async for item in behaviour(request, context):
                    yield item
                code = "OK"
            except (asyncio.CancelledError, GeneratorExit):
                code = "CANCELLED"
                raise
            except Exception:
                code = _code_of(context)
                raise
            finally:
                await self._record(peer, method, request_id, code)
        return audited


def _code_of(context) -> str:
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
