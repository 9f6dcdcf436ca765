"""Clients, their organisations and roles; no grpc here.

A client registry is a JSON file the operator keeps:

    {"clients": [
      {"id": "lis-north", "org": "north-hospital", "roles": ["submit", "read"],
       "token_sha256": "<hex sha256 of the bearer token>"},
      {"id": "pacs-bridge", "org": "north-hospital", "roles": ["submit"],
       "certificate_cn": "pacs-bridge.north"},
      {"id": "ops", "org": "marrowdx", "roles": ["admin"], "token_sha256": "..."}]}

Only hashes of tokens are stored, so the file is not itself a secret store.
``marrowdx token`` makes a token and the line to add.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
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


# An open service (loopback, no registry): one local client with every role but admin.
LOCAL = Principal("local", "local", frozenset({Role.SUBMIT, Role.READ}))


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh bearer token and its digest for the registry."""
    token = secrets.token_urlsafe(32)
    return token, token_digest(token)


@dataclass(frozen=True)
class ClientRegistry:
    by_token_digest: dict[str, Principal]
    by_certificate_cn: dict[str, Principal]

    @classmethod
    def load(cls, path: Path) -> ClientRegistry:
        try:
            entries = json.loads(Path(path).read_text())["clients"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"client registry {path}: {exc}") from None
        tokens: dict[str, Principal] = {}
        names: dict[str, Principal] = {}
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
            digest, cn = entry.get("token_sha256"), entry.get("certificate_cn")
            if not digest and not cn:
                raise ValueError(f"{where}: give token_sha256 or certificate_cn")
            if digest:
                if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
                    raise ValueError(f"{where}: token_sha256 must be 64 hex digits")
                tokens[digest.lower()] = principal
            if cn:
                names[str(cn)] = principal
        return cls(tokens, names)

    def by_token(self, token: str) -> Principal | None:
        digest = token_digest(token)
        for known, principal in self.by_token_digest.items():
            if hmac.compare_digest(known, digest):
                return principal
        return None

    def by_certificate(self, common_name: str) -> Principal | None:
        return self.by_certificate_cn.get(common_name)
