"""Who is calling: a bearer token in the ``authorization`` metadata or the
common name of a verified client certificate (mutual TLS), looked up in the
client registry. Without a registry the service is open to the local client
(the app only allows that on loopback)."""

from __future__ import annotations

import contextvars

import grpc

from marrowdx.security.access import LOCAL, ClientRegistry, NotAuthenticated, Principal

_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("marrowdx_principal", default=LOCAL)


def current_principal() -> Principal:
    """The caller of the RPC being handled (set by the rpc wrapper)."""
    return _current.get()


def _metadata(context: grpc.aio.ServicerContext, key: str) -> str:
    for k, value in context.invocation_metadata() or ():
        if k == key:
            return str(value)
    return ""


class Authenticator:
    def __init__(self, registry: ClientRegistry | None) -> None:
        self.registry = registry

    def authenticate(self, context: grpc.aio.ServicerContext) -> Principal:
        principal = self._identify(context)
        _current.set(principal)
        return principal

    def _identify(self, context: grpc.aio.ServicerContext) -> Principal:
        if self.registry is None:
            return LOCAL
        header = _metadata(context, "authorization")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise NotAuthenticated("authorization metadata must be 'Bearer <token>'")
            principal = self.registry.by_token(token.strip())
            if principal is None:
                raise NotAuthenticated("unknown or revoked token")
            return principal
        names = (context.auth_context() or {}).get("x509_common_name") or []
        if names:
            name = names[0].decode() if isinstance(names[0], bytes) else str(names[0])
            principal = self.registry.by_certificate(name)
            if principal is None:
                raise NotAuthenticated("client certificate is valid but not registered")
            return principal
        raise NotAuthenticated("no credentials: send 'authorization: Bearer <token>' or a client certificate")
