"""Clients, their organisations and roles; no grpc here.

A client registry is a JSON file the operator keeps:

    {"clients": [
      {"id": "lis-north", "org": "north-hospital", "roles": ["submit", "read"],
       "token_sha256": "<hex sha256 of the bearer token>"},
      {"id": "pacs-bridge", "org": "north-hospital", "roles": ["submit"],
       "certificate_san": "pacs-bridge.north.example", "certificate_sha256": ["<hex>"]},
      {"id": "ops", "org": "marrowdx", "roles": ["admin"], "token_sha256": "..."}]}

Only hashes of tokens are stored, so the file is not itself a secret store.
``marrowdx token`` makes a token and the line to add.

A client certificate (already verified against ``tls_client_ca`` by the TLS
handshake) names a client by a subject alternative name (DNS or URI,
``certificate_san``) or, for older certificates, a common name
(``certificate_cn``, any of them, not only the first); ``certificate_sha256``
pins the certificate itself (SHA-256 of its DER bytes, one or a list, so a
renewal can be added before the switch), alone or on top of a name. A
certificate that names two registered clients identifies neither.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path


class Role(StrEnum):
    SUBMIT = "submit"  # send images, cases
    READ = "read"  # read reports of one's own organisation, model info
    ADMIN = "admin"  # everything, reports of every organisation


class AccessDenied(PermissionError):
    """Authenticated, but the role does not allow this."""


class NotAuthenticated(PermissionError):
    """No valid credentials."""


@dataclass(frozen=True)
class Principal:
    client_id: str
    org: str
    roles: frozenset[Role]

    def allows(self, role: Role) -> bool:
        return Role.ADMIN in self.roles or role in self.roles

    def require(self, role: Role) -> None:
        if not self.allows(role):
            raise AccessDenied(f"client {self.client_id!r} lacks the {role.value!r} role")

    @property
    def report_owner(self) -> str | None:
        """The owner whose reports this principal reads; None: every owner (admin)."""
        return None if Role.ADMIN in self.roles else self.org


# An open service (loopback only, no registry): one local client with every role but admin.
LOCAL = Principal("local", "local", frozenset({Role.SUBMIT, Role.READ}))


@dataclass(frozen=True)
class CertificateIdentity:
    """What a verified client certificate says about its holder."""

    sans: tuple[str, ...] = ()  # subject alternative names (DNS, URI, IP as text)
    common_names: tuple[str, ...] = ()
    sha256: str = ""  # hex SHA-256 of the DER certificate

    @property
    def present(self) -> bool:
        return bool(self.sans or self.common_names or self.sha256)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh bearer token and its digest for the registry."""
    token = secrets.token_urlsafe(32)
    return token, token_digest(token)


def _hex64(value: object, where: str, key: str) -> str:
    text = str(value).lower().replace(":", "")
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(f"{where}: {key} must be 64 hex digits")
    return text


@dataclass(frozen=True)
class ClientRegistry:
    by_token_digest: dict[str, Principal]
    by_certificate_cn: dict[str, Principal]
    by_certificate_san: dict[str, Principal] = field(default_factory=dict)
    pins: dict[str, frozenset[str]] = field(default_factory=dict)  # client id -> pinned certificate digests
    by_pin: dict[str, Principal] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> ClientRegistry:
        try:
            entries = json.loads(Path(path).read_text())["clients"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"client registry {path}: {exc}") from None
        tokens: dict[str, Principal] = {}
        names: dict[str, Principal] = {}
        sans: dict[str, Principal] = {}
        pins: dict[str, frozenset[str]] = {}
        by_pin: dict[str, Principal] = {}
        seen: set[str] = set()
        for i, entry in enumerate(entries):
            where = f"client registry {path}, clients[{i}]"
            try:
                principal = Principal(str(entry["id"]), str(entry["org"]), frozenset(Role(r) for r in entry["roles"]))
            except (KeyError, ValueError, TypeError) as exc:
                raise ValueError(f"{where}: needs id, org and roles from {[r.value for r in Role]} ({exc})") from None
            if principal.client_id in seen:
                raise ValueError(f"{where}: duplicate id {principal.client_id!r}")
            seen.add(principal.client_id)
            digest, cn, san = entry.get("token_sha256"), entry.get("certificate_cn"), entry.get("certificate_san")
            pinned = entry.get("certificate_sha256") or []
            pinned = [pinned] if isinstance(pinned, str) else list(pinned)
            if not (digest or cn or san or pinned):
                raise ValueError(f"{where}: give token_sha256 or certificate_san, certificate_cn or certificate_sha256")
            if digest:
                tokens[_hex64(digest, where, "token_sha256")] = principal
            for key, value, table in (("certificate_cn", cn, names), ("certificate_san", san, sans)):
                if value:
                    if str(value) in table:
                        raise ValueError(f"{where}: {key} {value!r} already names client {table[str(value)].client_id!r}")
                    table[str(value)] = principal
            if pinned:
                pins[principal.client_id] = frozenset(_hex64(p, where, "certificate_sha256") for p in pinned)
                for pin in pins[principal.client_id]:
                    by_pin[pin] = principal
        return cls(tokens, names, sans, pins, by_pin)

    def by_token(self, token: str) -> Principal | None:
        digest = token_digest(token)
        for known, principal in self.by_token_digest.items():
            if hmac.compare_digest(known, digest):
                return principal
        return None

    def by_certificate(self, cert: CertificateIdentity | str) -> Principal | None:
        """The one client this certificate names (a SAN, any CN, or its pinned digest), checked
        against that client's pins; None if it names none. A plain string is a common name."""
        if isinstance(cert, str):
            cert = CertificateIdentity(common_names=(cert,))
        named = {p.client_id: p for p in (*(self.by_certificate_san.get(n) for n in cert.sans),
                                          *(self.by_certificate_cn.get(n) for n in cert.common_names),
                                          self.by_pin.get(cert.sha256)) if p is not None}
        if len(named) > 1:
            raise NotAuthenticated(f"the client certificate names more than one registered client ({sorted(named)})")
        if not named:
            return None
        principal = next(iter(named.values()))
        pins = self.pins.get(principal.client_id)
        if pins and cert.sha256 not in pins:
            raise NotAuthenticated(f"the client certificate names {principal.client_id!r} but is not the certificate "
                                   "pinned for it")
        return principal
