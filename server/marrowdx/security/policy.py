"""Safe defaults for exposing the port: plaintext and open access only on loopback."""

from __future__ import annotations

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def exposure_problems(host: str, tls: bool, registry: bool) -> list[str]:
    """What is unsafe about serving on ``host`` with this configuration (empty: nothing)."""
    if host in LOOPBACK_HOSTS:
        return []
    problems = []
    if not tls:
        problems.append(f"{host} is not loopback and TLS is off (set tls_cert and tls_key)")
    if not registry:
        problems.append(f"{host} is not loopback and anyone may call (set clients_file)")
    return problems
