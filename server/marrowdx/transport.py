"""How a client reaches the service: plaintext on loopback, TLS, mutual TLS,
and a bearer token sent as ``authorization`` metadata on every call; several
replicas are balanced per call (round robin), never pinned per connection."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

import grpc


@dataclass(frozen=True)
class ClientSecurity:
    ca: Path | None = None  # CA that signed the server certificate: turns TLS on
    cert: Path | None = None  # client certificate and key: mutual TLS
    key: Path | None = None
    # bearer token; kept out of repr (and so out of logs), never on a command line (use a file or MARROWDX_TOKEN)
    token: str = field(default="", repr=False)
    server_name: str = ""  # override the name checked against the server certificate

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: object) -> ClientSecurity:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {
            "ca": Path(env["MARROWDX_CLIENT_CA"]) if env.get("MARROWDX_CLIENT_CA") else None,
            "cert": Path(env["MARROWDX_CLIENT_CERT"]) if env.get("MARROWDX_CLIENT_CERT") else None,
            "key": Path(env["MARROWDX_CLIENT_KEY"]) if env.get("MARROWDX_CLIENT_KEY") else None,
            "token": env.get("MARROWDX_TOKEN", ""),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        token_file = values.pop("token_file", None)
        if token_file:
            values["token"] = Path(str(token_file)).read_text().strip()
        return cls(**values)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ClientSecurity:
        """From the flags ``add_client_security_flags`` defines, over the environment."""
        return cls.from_env(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key, token_file=args.token_file,
                            server_name=args.server_name)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def credentials(self) -> grpc.ChannelCredentials | None:
        if self.ca is None:
            if self.cert or self.key:
                raise ValueError("a client certificate needs the server's CA too (TLS first)")
            return None
        if bool(self.cert) != bool(self.key):
            raise ValueError("give both the client certificate and its key")
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None)

    def options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


PLAINTEXT = ClientSecurity()


def add_client_security_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every client command takes to reach a secured service."""
    parser.add_argument("--tls-ca", type=Path, help="CA of the server certificate (turns TLS on)")
    parser.add_argument("--tls-cert", type=Path, help="client certificate for mutual TLS")
    parser.add_argument("--tls-key", type=Path, help="client key for mutual TLS")
    parser.add_argument("--token-file", type=Path, help="file holding a bearer token (or set MARROWDX_TOKEN)")
    parser.add_argument("--server-name", help="name to check the server certificate against")


# Targets naming several replicas: gRPC's own resolvers (dns:/// answers every address of a name,
# e.g. a Kubernetes headless service; ipv4:/ipv6: list addresses).
_RESOLVER_SCHEMES = ("dns:", "ipv4:", "ipv6:")


def channel_target(address: str) -> tuple[str, bool]:
    """The gRPC target for ``address`` and whether to balance per call over what it resolves to.

    ``host:port`` is one service, as before. ``dns:///name:port`` (every replica behind a headless
    service) and ``ip:port,ip:port,...`` (written ``ipv4:``/``ipv6:`` for gRPC) name several: each
    call then goes to the next ready replica (round_robin). gRPC's default, pick_first, would send
    every call of a channel to one replica, as any connection-level (TCP) balancer does for HTTP/2.
    """
    if address.startswith(_RESOLVER_SCHEMES):
        return address, True
    if "," in address:
        parts = [p.strip() for p in address.split(",") if p.strip()]
        hosts = [p.rsplit(":", 1)[0] for p in parts]
        if all(h.startswith("[") for h in hosts):
            return "ipv6:" + ",".join(parts), True
        if all(h.replace(".", "").isdigit() for h in hosts):
            return "ipv4:" + ",".join(parts), True
        raise ValueError(f"a list of replicas must be IP addresses (ip:port,ip:port), not {address!r}; "
                         "for names use dns:///NAME:PORT, which resolves every address of the name")
    return address, False


def _options(security: ClientSecurity, max_message_mb: int, balanced: bool = False) -> list[tuple[str, object]]:
    limit = max_message_mb * 1024 * 1024
    options: list[tuple[str, object]] = [("grpc.max_send_message_length", limit),
                                         ("grpc.max_receive_message_length", limit), *security.options()]
    if balanced:
        options.append(("grpc.lb_policy_name", "round_robin"))
    return options


def open_channel(address: str, security: ClientSecurity = PLAINTEXT, max_message_mb: int = 64) -> grpc.Channel:
    address, balanced = channel_target(address)
    credentials = security.credentials()
    options = _options(security, max_message_mb, balanced)
    if credentials is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, credentials, options=options)


def open_aio_channel(address: str, security: ClientSecurity = PLAINTEXT, max_message_mb: int = 64) -> grpc.aio.Channel:
    address, balanced = channel_target(address)
    credentials = security.credentials()
    options = _options(security, max_message_mb, balanced)
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=options)
    return grpc.aio.secure_channel(address, credentials, options=options)
