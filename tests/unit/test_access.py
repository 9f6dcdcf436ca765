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
    ({"id": "a", "org": "o", "roles": ["read"]}, "token_sha256 or certificate_san"),
    ({"id": "a", "org": "o", "roles": ["read"], "certificate_sha256": "ab"}, "64 hex"),
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
    check_exposure(Settings(host="0.0.0.0", allow_insecure=True), tls=False, registry=True)  # plaintext: warned
    with pytest.raises(ValueError, match="no client registry"):  # anonymous callers: never, whatever the flag
        check_exposure(Settings(host="0.0.0.0", allow_insecure=True), tls=True, registry=False)


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


# -- client certificates: SANs, every CN, pins; token and certificate must agree ----------------------------

def _pem_identity(cert_path):
    """The identity the service reads from gRPC's auth context for this certificate."""
    from cryptography import x509

    from marrowdx.api.auth import certificate_identity

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        sans = [str(v) for v in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                .get_values_for_type(x509.DNSName)]
        sans += cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        sans = []
    cns = [a.value for a in cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)]
    return certificate_identity({"x509_subject_alternative_name": [n.encode() for n in sans],
                                 "x509_common_name": [n.encode() for n in cns],
                                 "x509_pem_cert": [cert_path.read_bytes()]}), cert


def test_certificates_are_identified_by_san_any_cn_and_pinned_digest(tmp_path):
    from cryptography.hazmat.primitives import hashes

    from marrowdx.security.access import CertificateIdentity, NotAuthenticated

    ca = CertificateAuthority(tmp_path)
    pinned, cert = _pem_identity(ca.issue("pacs", dns=("pacs.north.example",))[0])
    assert pinned.sha256 == cert.fingerprint(hashes.SHA256()).hex()  # the digest is the DER certificate's
    impostor, _ = _pem_identity(ca.issue("pacs", dns=("pacs.north.example",), stem="pacs-2")[0])
    spiffe, _ = _pem_identity(ca.issue("svc", uris=("spiffe://north/lis",))[0])
    registry = _registry(tmp_path, [
        {"id": "pacs", "org": "north", "roles": ["submit"], "certificate_san": "pacs.north.example",
         "certificate_sha256": [pinned.sha256]},
        {"id": "lis", "org": "north", "roles": ["submit"], "certificate_san": "spiffe://north/lis"},
        {"id": "old", "org": "north", "roles": ["read"], "certificate_cn": "legacy"},
        {"id": "other", "org": "south", "roles": ["read"], "certificate_cn": "south-reader"}])
    assert registry.by_certificate(pinned).client_id == "pacs"
    assert registry.by_certificate(spiffe).client_id == "lis"
    with pytest.raises(NotAuthenticated, match="pinned"):  # right name, CA-signed, but not the pinned certificate
        registry.by_certificate(impostor)
    assert registry.by_certificate(CertificateIdentity(common_names=("x", "legacy"))).client_id == "old"  # not only the first
    with pytest.raises(NotAuthenticated, match="more than one"):
        registry.by_certificate(CertificateIdentity(common_names=("legacy", "south-reader")))
    assert registry.by_certificate(CertificateIdentity(sans=("nobody.example",), common_names=("pacs",))) is None


class _Context:
    def __init__(self, token: str = "", cert: dict | None = None) -> None:
        self.token, self.cert = token, cert or {}

    def invocation_metadata(self):
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def auth_context(self):
        return self.cert


def test_a_token_and_a_certificate_naming_different_clients_are_refused(tmp_path):
    from marrowdx.api.auth import Authenticator
    from marrowdx.security.access import NotAuthenticated

    token, digest = new_token()
    registry = _registry(tmp_path, [
        {"id": "lis", "org": "north", "roles": ["submit", "read"], "token_sha256": digest},
        {"id": "pacs", "org": "north", "roles": ["submit"], "certificate_san": "pacs.north.example"}])
    auth = Authenticator(registry)
    pacs_cert = {"x509_subject_alternative_name": [b"pacs.north.example"], "x509_common_name": [b"pacs"]}
    unregistered = {"x509_common_name": [b"carrier"]}
    assert auth.authenticate(_Context(token, unregistered)).client_id == "lis"  # the token names the client
    assert auth.authenticate(_Context(cert=pacs_cert)).client_id == "pacs"
    with pytest.raises(NotAuthenticated, match="different clients"):
        auth.authenticate(_Context(token, pacs_cert))


def test_without_a_registry_only_a_loopback_listener_has_a_default_client():
    from marrowdx.api.auth import Authenticator
    from marrowdx.security.access import NotAuthenticated

    assert Authenticator(None, open_local=True).authenticate(_Context()) == LOCAL
    with pytest.raises(NotAuthenticated, match="no client registry"):
        Authenticator(None).authenticate(_Context())
