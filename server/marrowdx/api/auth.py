"""Who is calling: a bearer token in the ``authorization`` metadata and/or a
verified client certificate (mutual TLS: its subject alternative names, common
names and digest), looked up in the client registry. When both are sent they
must name the same client. Without a registry only a loopback listener is open
(to the single local client); any other refuses every call."""

from __future__ import annotations

import base64
import contextvars
import hashlib

import grpc

from marrowdx.security.access import (
    LOCAL,
    CertificateIdentity,
    ClientRegistry,
    NotAuthenticated,
    Principal,
)

_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("marrowdx_principal", default=LOCAL)


def current_principal() -> Principal:
    """The caller of the RPC being handled (set by the rpc wrapper)."""
    return _current.get()


def _metadata(context: grpc.aio.ServicerContext, key: str) -> str:
    for k, value in context.invocation_metadata() or ():
        if k == key:
            return str(value)
    return ""


def _text(values) -> tuple[str, ...]:
    return tuple(v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in values or ())


def certificate_identity(auth_context: dict) -> CertificateIdentity:
    """The verified peer certificate's names and digest, from gRPC's auth context."""
    digest = ""
    pem = _text(auth_context.get("x509_pem_cert"))
    if pem:
        body = "".join(line for line in pem[0].splitlines() if line and not line.startswith("-----"))
        digest = hashlib.sha256(base64.b64decode(body)).hexdigest()
    return CertificateIdentity(_text(auth_context.get("x509_subject_alternative_name")),
                               _text(auth_context.get("x509_common_name")), digest)


class Authenticator:
    def __init__(self, registry: ClientRegistry | None, open_local: bool = False) -> None:
        """``open_local``: with no registry, serve every caller as the local client. Only for a
        loopback listener (app.create_server decides); otherwise no registry means no caller."""
        self.registry = registry
        self.open_local = open_local

    def authenticate(self, context: grpc.aio.ServicerContext) -> Principal:
        principal = self._identify(context)
        _current.set(principal)
        return principal

    def _identify(self, context: grpc.aio.ServicerContext) -> Principal:
        if self.registry is None:
            if self.open_local:
                return LOCAL
            raise NotAuthenticated("no client registry is configured (clients_file): only a loopback listener is "
                                   "open without one")
        by_token = None
        header = _metadata(context, "authorization")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise NotAuthenticated("authorization metadata must be 'Bearer <token>'")
            by_token = self.registry.by_token(token.strip())
            if by_token is None:
                raise NotAuthenticated("unknown or revoked token")
        cert = certificate_identity(context.auth_context() or {})
        by_cert = self.registry.by_certificate(cert) if cert.present else None
        if by_token and by_cert and by_token.client_id != by_cert.client_id:
            raise NotAuthenticated("the bearer token and the client certificate name different clients")
        if by_token:
            return by_token
        if by_cert:
            return by_cert
        if cert.present:
            raise NotAuthenticated("client certificate is valid but not registered")
        raise NotAuthenticated("no credentials: send 'authorization: Bearer <token>' or a client certificate")
