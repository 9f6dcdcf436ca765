"""The LIS client's parts that need no service: the idempotency key and MLLP delivery."""

from __future__ import annotations

import pytest

from clients.lis.cli import main
from clients.lis.submit import request_id_for, write_outputs
from marrowdx._proto.marrowdx.v1 import diagnosis_pb2 as pb
from marrowdx.interop.context import OrderContext
from marrowdx.interop.mllp import control_id_of
from tests.hl7_lis import Lis


def _case(folder, contents: dict[str, bytes]):
    folder.mkdir(parents=True)
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    return sorted(folder.iterdir())


def test_the_request_id_follows_the_image_bytes_not_their_names_and_sizes(tmp_path):
    first = _case(tmp_path / "scan1", {"f1.png": b"\x89PNG first scan", "f2.png": b"\x89PNG other field"})
    rescan = _case(tmp_path / "scan2", {"f1.png": b"\x89PNG FIRST SCAN", "f2.png": b"\x89PNG other field"})
    copy = _case(tmp_path / "copy", {"f1.png": b"\x89PNG first scan", "f2.png": b"\x89PNG other field"})
    assert [p.stat().st_size for p in first] == [p.stat().st_size for p in rescan]  # same names, same sizes
    assert request_id_for("C1", "A1", first) != request_id_for("C1", "A1", rescan)  # new pixels: a new request
    assert request_id_for("C1", "A1", first) == request_id_for("C1", "A1", copy)  # a true resubmission: same id
    assert request_id_for("C1", "A1", first) != request_id_for("C2", "A1", first)


def _oru(folder, given_name: str = "ANN", charset: str | None = None, transliterate: bool = False):
    """A kept ORU as `marrowdx-lis submit` leaves it (oru.hl7 in the output folder)."""
    report = pb.CaseReport(report_id="rpt_1", created_at="2026-11-27T05:00:00Z", cells_counted=300,
                           disclaimer="Research use only.", differential=[
                               pb.DifferentialItem(cell_class="blast", label="Blast", count=3, percent=1.0,
                                                   ci_low_percent=0.3, ci_high_percent=2.9, trained=True)])
    context = OrderContext(patient_id="MRN-1", patient_family_name="DOE", patient_given_name=given_name,
                           transliterate=transliterate, **({"charset": charset} if charset else {}))
    folder.mkdir(parents=True, exist_ok=True)
    write_outputs(report, context, folder)
    return folder / "oru.hl7"


def test_an_ack_for_this_message_is_delivery(tmp_path):
    oru = _oru(tmp_path / "out")
    with Lis("ack") as lis:
        assert main(["resend", str(oru.parent), "--mllp", f"127.0.0.1:{lis.port}"]) == 0
    (message,) = lis.received
    assert str(message.segment("MSH")[10]) == control_id_of(oru.read_bytes())
    assert (oru.parent / "oru.ack.txt").read_text().startswith("AA ") and not (oru.parent / "oru.nak.txt").exists()


@pytest.mark.parametrize(("behaviour", "reason"), [
    ("other-id", "acknowledges message 'SOME-OTHER-MESSAGE'"),  # an ACK, but for another message
    ("close", "connection closed"),  # the peer hung up without answering
    ("garbage", "not an HL7 ACK"),  # an answer that is not HL7
])
def test_no_ack_for_this_message_is_exit_3_and_the_oru_is_kept(tmp_path, capsys, behaviour, reason):
    oru = _oru(tmp_path / "out")
    with Lis(behaviour) as lis:
        assert main(["resend", str(oru.parent), "--mllp", f"127.0.0.1:{lis.port}"]) == 3
    assert len(lis.raw) == 1  # it did reach the peer
    assert reason in (oru.parent / "oru.nak.txt").read_text() and reason in capsys.readouterr().err
    assert oru.exists() and not (oru.parent / "oru.ack.txt").exists()


def test_an_unreachable_lis_is_exit_3(tmp_path):
    from marrowdx.inference.launcher import free_port

    oru = _oru(tmp_path / "out")
    assert main(["resend", str(oru.parent), "--mllp", f"127.0.0.1:{free_port()}"]) == 3
    assert "not delivered" in (oru.parent / "oru.nak.txt").read_text()


def test_a_non_ascii_name_goes_out_as_utf_8_and_msh_18_says_so(tmp_path):
    """Issue #20 item 4: python-hl7's LIS decodes by MSH-18, ASCII when empty (the HL7 default)."""
    oru = _oru(tmp_path / "out", given_name="Zoë")
    with Lis("ack") as lis:
        assert main(["resend", str(oru.parent), "--mllp", f"127.0.0.1:{lis.port}"]) == 0
    (message,) = lis.received
    assert str(message.segment("MSH")[18]) == "UNICODE UTF-8" and not lis.refused
    assert str(message.segment("PID")[5][0][1]) == "Zoë"


def test_a_peer_that_wants_latin_1_gets_latin_1(tmp_path):
    oru = _oru(tmp_path / "out", given_name="Zoë", charset="8859/1")
    assert "Zo\xeb".encode("latin-1") in oru.read_bytes()
    with Lis("ack") as lis:
        assert main(["resend", str(oru.parent), "--mllp", f"127.0.0.1:{lis.port}"]) == 0
    (message,) = lis.received
    assert str(message.segment("MSH")[18]) == "8859/1" and str(message.segment("PID")[5][0][1]) == "Zoë"


def test_ascii_refuses_a_name_it_cannot_hold_without_echoing_it_or_transliterates(tmp_path):
    from marrowdx.interop.hl7 import check_charset

    with pytest.raises(ValueError, match="patient_given_name holds characters that ASCII cannot encode") as refused:
        check_charset(OrderContext(patient_id="MRN-1", patient_given_name="Zoë", charset="ASCII"))
    assert "Zoë" not in str(refused.value)  # patient data stays out of errors and logs
    with pytest.raises(ValueError, match="PID-5 holds characters that ASCII cannot encode"):
        _oru(tmp_path / "refused", given_name="Zoë", charset="ASCII")
    oru = _oru(tmp_path / "out", given_name="Zoë", charset="ASCII", transliterate=True)
    with Lis("ack") as lis:
        assert main(["resend", str(oru.parent), "--mllp", f"127.0.0.1:{lis.port}"]) == 0
    (message,) = lis.received
    assert str(message.segment("MSH")[18]) == "ASCII" and str(message.segment("PID")[5][0][1]) == "Zoe"
