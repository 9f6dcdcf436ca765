"""TLS, mutual TLS, per-client roles, per-organisation report access and the
audit log, against a real stack whose port requires client certificates."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from marrowdx._proto.marrowdx.v1 import diagnosis_pb2 as pb
from marrowdx.client import Client, image_message
from marrowdx.embedded import embedded_stack
from marrowdx.security.access import new_token
from marrowdx.settings import Settings
from marrowdx.transport import ClientSecurity
from tests.pki import CertificateAuthority

pytestmark = pytest.mark.integration
CROPS = sorted((Path(__file__).resolve().parents[2] / "samples" / "demo-case" / "crops").glob("*.jpg"))


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    """A stack on mutual TLS with a registry: tokens for lis-a (org-a), reader-b (org-b), ops (admin);
    a certificate name for pacs-a (org-a, submit only)."""
    folder = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(folder)
    server_cert, server_key = ca.issue("localhost", server=True)
    tokens, entries = {}, []
    for client_id, org, roles in (("lis-a", "org-a", ["submit", "read"]), ("reader-b", "org-b", ["read"]),
                                  ("lis-b", "org-b", ["submit", "read"]), ("ops", "marrowdx", ["admin"])):
        tokens[client_id], digest = new_token()
        entries.append({"id": client_id, "org": org, "roles": roles, "token_sha256": digest})
    certs = {cn: ca.issue(cn) for cn in ("unregistered", "token-carrier")}
    # pacs-a: named by a subject alternative name and pinned; a second certificate from the same CA
    # with the same names (an impostor, or a renewal not yet pinned) must not pass for it.
    certs["pacs-a"] = ca.issue("pacs-a", dns=("pacs-a.org-a.example",))
    certs["pacs-a-unpinned"] = ca.issue("pacs-a", dns=("pacs-a.org-a.example",), stem="pacs-a-unpinned")
    pin = x509.load_pem_x509_certificate(certs["pacs-a"][0].read_bytes()).fingerprint(hashes.SHA256()).hex()
    entries.append({"id": "pacs-a", "org": "org-a", "roles": ["submit"], "certificate_san": "pacs-a.org-a.example",
                    "certificate_sha256": pin})
    clients_file = folder / "clients.json"
    clients_file.write_text(json.dumps({"clients": entries}))
    state = tmp_path_factory.mktemp("secure-stack")
    settings = Settings.from_env(os.environ, state_dir=state, database=state / "reports.sqlite3", tls_cert=server_cert, tls_key=server_key, tls_client_ca=ca.cert_path,
                              clients_file=clients_file)
    with embedded_stack(settings) as stack:
        stack_address = stack.address.replace("127.0.0.1", "localhost")

        def connect(token_of: str = "", cert: str = "token-carrier") -> Client:
            cert_path, key_path = certs[cert]
            return Client(stack_address, timeout_s=120, security=ClientSecurity(
                ca=ca.cert_path, cert=cert_path, key=key_path, token=tokens.get(token_of, token_of)))

        yield stack, connect, ca, tokens, certs


def _case(tag: str) -> pb.CaseInfo:
    return pb.CaseInfo(case_id=f"PATIENT-{tag}-{uuid.uuid4().hex[:6]}", accession_id=f"ACC-{uuid.uuid4().hex[:8]}",
                       request_id=uuid.uuid4().hex, specimen_type=pb.SPECIMEN_TYPE_BONE_MARROW_ASPIRATE)


def test_a_connection_without_a_client_certificate_is_refused(secure):
    stack, _, ca, tokens, _ = secure
    address = stack.address.replace("127.0.0.1", "localhost")
    security = ClientSecurity(ca=ca.cert_path, token=tokens["lis-a"])
    with Client(address, timeout_s=10, security=security) as client, pytest.raises(grpc.RpcError) as info:
        client.model_info()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_plaintext_connection_is_refused(secure):
    stack, *_ = secure
    with Client(stack.address, timeout_s=10) as client, pytest.raises(grpc.RpcError) as info:
        client.model_info()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_unknown_token_and_unregistered_certificate_are_unauthenticated(secure):
    _, connect, *_ = secure
    with connect("not-a-real-token") as client, pytest.raises(grpc.RpcError) as info:
        client.model_info()
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with connect(cert="unregistered") as client, pytest.raises(grpc.RpcError) as info:
        client.model_info()
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "not registered" in info.value.details()


def test_a_certificate_is_identified_by_san_and_pin_and_must_agree_with_the_token(secure):
    _, connect, *_ = secure
    with connect(cert="pacs-a") as pacs:
        assert pacs.model_info().models.classifier  # SAN + pinned digest: pacs-a
    with connect(cert="pacs-a-unpinned") as impostor, pytest.raises(grpc.RpcError) as info:
        impostor.model_info()
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and "pinned" in info.value.details()
    # lis-a's token over pacs-a's certificate: two identities, neither is taken.
    with connect("lis-a", cert="pacs-a") as mixed, pytest.raises(grpc.RpcError) as info:
        mixed.model_info()
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and "different clients" in info.value.details()


def test_roles_are_enforced(secure):
    _, connect, *_ = secure
    with connect("reader-b") as reader, pytest.raises(grpc.RpcError) as info:
        reader.classify([image_message(CROPS[0])])
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with connect(cert="pacs-a") as pacs:  # identified by its certificate alone
        report = pacs.diagnose(_case("pacs"), crops=[image_message(p) for p in CROPS[:5]])
        assert report.report_id
        with pytest.raises(grpc.RpcError) as info:
            pacs.report(report_id=report.report_id)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_client_reads_its_organisations_reports_only(secure):
    _, connect, *_ = secure
    info = _case("lis")
    with connect("lis-a") as lis:
        written = lis.diagnose(info, crops=[image_message(p) for p in CROPS[:5]])
        assert lis.report(report_id=written.report_id) == written
        assert lis.report(accession_id=info.accession_id).report_id == written.report_id
    with connect("reader-b") as other:
        for key in ({"report_id": written.report_id}, {"accession_id": info.accession_id}):
            with pytest.raises(grpc.RpcError) as err:
                other.report(**key)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND  # not even told it exists
    with connect("ops") as admin:
        assert admin.report(report_id=written.report_id) == written


def test_reusing_another_organisations_request_id_does_not_return_its_report(secure):
    _, connect, *_ = secure
    info = _case("idem")
    five = [image_message(p) for p in CROPS[:5]]
    with connect("lis-a") as lis:
        mine = lis.diagnose(info, crops=five)
        assert lis.diagnose(info, crops=five).report_id == mine.report_id
    with connect("lis-b") as other_org:  # org-b: the same request id and content make a report of its own
        theirs = other_org.diagnose(info, crops=five)
        assert theirs.report_id != mine.report_id
        assert other_org.report(report_id=theirs.report_id) == theirs
    with connect(cert="pacs-a") as same_org:  # org-a again, other content: refused, not org-a's earlier report
        with pytest.raises(grpc.RpcError) as err:
            same_org.diagnose(info, crops=[image_message(CROPS[0])])
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS and info.request_id in err.value.details()


def test_audit_log_records_who_did_what_without_patient_ids_or_secrets(secure, capsys):
    stack, connect, _, tokens, _ = secure
    info = _case("audit")
    with connect("lis-a") as lis:
        written = lis.diagnose(info, crops=[image_message(p) for p in CROPS[:3]])
    with connect("reader-b") as reader, pytest.raises(grpc.RpcError):
        reader.report(report_id=written.report_id)
    entries = stack.runtime.audit.recent(200)
    mine = [e for e in entries if e.report_id == written.report_id and e.client_id == "lis-a"]
    assert mine and mine[-1].method == "DiagnoseCase" and mine[-1].outcome == "OK" and mine[-1].org == "org-a"
    assert any(e.client_id == "reader-b" and e.method == "GetReport" and e.outcome == "NOT_FOUND" for e in entries)
    assert any(e.client_id == "" and e.outcome == "UNAUTHENTICATED" for e in entries)
    dump = json.dumps([e.__dict__ for e in entries])
    assert info.case_id not in dump and info.accession_id not in dump
    for token in tokens.values():
        assert token not in dump
    with pytest.raises(Exception, match="append-only"):
        stack.runtime.audit._db.execute("DELETE FROM audit")
    out = capsys.readouterr()
    for token in tokens.values():
        assert token not in out.out + out.err


def test_health_command_checks_over_mutual_tls(secure):
    from marrowdx.cli import main

    stack, _, ca, _, certs = secure
    cert, key = certs["token-carrier"]
    address = stack.address.replace("127.0.0.1", "localhost")
    assert main(["health", "--server", address, "--tls-ca", str(ca.cert_path), "--tls-cert", str(cert),
                 "--tls-key", str(key)]) == 0
    assert main(["health", "--server", address, "--tls-ca", str(ca.cert_path)]) == 1  # the certificate is what let it in
    assert main(["health", "--server", stack.address]) == 1  # plaintext against a TLS port: not healthy
