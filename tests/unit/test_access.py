"""Client registry, roles, exposure policy, and TLS wiring without a model server."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from marrowdx.app import check_exposure, server_credentials
from marrowdx.security.access import LOCAL, AccessDenied, ClientRegistry, Role, new_token, token_digest
from marrowdx.security.policy import exposure_problems
from marrowdx.settings import Settings
from marrowdx.transport import ClientSecurity
from tests.pki import CertificateAuthority


def _registry(tmp_path, entries) -> ClientRegistry:
    path = tmp_path / "clients.json"
    path.write_text(json.dumps({"clients": entries}))
    return ClientRegistry.load(path)


def test_registry_finds_clients_by_token_and_certificate_name(tmp_path):
    token, digest = new_token()
    registry = _registry(tmp_path, [
        {"id": "lis", "org": "north", "roles": ["submit", "read"], "token_sha256": digest},
        {"id": "pacs", "org": "north", "roles": ["submit"], "certificate_cn": "pacs.north"}])
    assert registry.by_token(token).client_id == "lis"
    assert registry.by_token(token + "x") is None
    assert registry.by_certificate("pacs.north").roles == {Role.SUBMIT}
    assert registry.by_certificate("pacs.south") is None
    assert digest == token_digest(token) and token not in (tmp_path / "clients.json").read_text()


@pytest.mark.parametrize("entry, problem", [
    ({"id": "a", "org": "o", "roles": ["root"], "token_sha256": "0" * 64}, "roles"),
    ({"id": "a", "roles": ["read"], "token_sha256": "0" * 64}, "org"),
    ({"id": "a", "org": "o", "roles": ["read"]}, "token_sha256 or certificate_cn"),
    ({"id": "a", "org": "o", "roles": ["read"], "token_sha256": "plaintext-token"}, "64 hex"),
])
def test_registry_rejects_bad_entries_naming_them(tmp_path, entry, problem):
    with pytest.raises(ValueError, match=problem) as info:
        _registry(tmp_path, [entry])
    assert "clients[0]" in str(info.value)


def test_duplicate_client_ids_are_refused(tmp_path):
    entry = {"id": "a", "org": "o", "roles": ["read"], "certificate_cn": "a"}
    with pytest.raises(ValueError, match="duplicate"):
        _registry(tmp_path, [entry, entry])


def test_roles_and_report_scope():
    reader = LOCAL.__class__("r", "org", frozenset({Role.READ}))
    admin = LOCAL.__class__("ops", "vendor", frozenset({Role.ADMIN}))
    with pytest.raises(AccessDenied, match="submit"):
        reader.require(Role.SUBMIT)
    admin.require(Role.SUBMIT)
    assert reader.report_owner == "org" and admin.report_owner is None
    assert not LOCAL.allows(Role.ADMIN)


def test_exposure_policy_allows_open_plaintext_only_on_loopback():
    assert exposure_problems("127.0.0.1", tls=False, registry=False) == []
    assert len(exposure_problems("0.0.0.0", tls=False, registry=False)) == 2
    assert exposure_problems("0.0.0.0", tls=True, registry=True) == []
    with pytest.raises(ValueError, match="refusing to serve"):
        check_exposure(Settings(host="0.0.0.0"), tls=False, registry=True)
    check_exposure(Settings(host="0.0.0.0", allow_insecure=True), tls=False, registry=False)  # warned, allowed


def test_incomplete_tls_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="both"):
        server_credentials(Settings(tls_cert=tmp_path / "a.crt"))
    with pytest.raises(ValueError, match="mutual TLS is TLS first"):
        server_credentials(Settings(tls_client_ca=tmp_path / "ca.crt"))
    with pytest.raises(ValueError, match="cannot read"):
        server_credentials(Settings(tls_cert=tmp_path / "missing.crt", tls_key=tmp_path / "missing.key"))


def test_server_only_tls_serves_a_client_that_trusts_the_ca_and_refuses_plaintext(tmp_path):
    ca = CertificateAuthority(tmp_path)
    cert, key = ca.issue("localhost", server=True)
    credentials = server_credentials(Settings(tls_cert=cert, tls_key=key))

    async def scenario() -> tuple[int, grpc.StatusCode]:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        port = server.add_secure_port("localhost:0", credentials)
        await server.start()
        try:
            security = ClientSecurity(ca=ca.cert_path)
            async with grpc.aio.secure_channel(f"localhost:{port}", security.credentials()) as channel:
                status = (await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)).status
            async with grpc.aio.insecure_channel(f"localhost:{port}") as channel:
                try:
                    await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
                    plaintext = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as exc:
                    plaintext = exc.code()
            return status, plaintext
        finally:
            await server.stop(None)

    status, plaintext = asyncio.run(scenario())
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert plaintext == grpc.StatusCode.UNAVAILABLE


def test_client_security_reads_a_token_file_and_refuses_half_a_certificate(tmp_path):
    (tmp_path / "token").write_text("s3cret\n")
    security = ClientSecurity.from_env({}, token_file=tmp_path / "token")
    assert security.metadata == (("authorization", "Bearer s3cret"),)
    assert "s3cret" not in repr(security)
    with pytest.raises(ValueError, match="CA"):
        ClientSecurity(cert=tmp_path / "c.crt", key=tmp_path / "c.key").credentials()
