"""The LIS paths against the real service: submit a case (crops, or DICOM
fields), get an ORU that an independent HL7 parser reads with one OBX per
class, a FHIR Bundle that fhir.resources validates, and the ORU delivered to
a real MLLP peer that ACKs; a NAK keeps the message with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import hl7
import numpy as np
import pytest
from fhir.resources.R4B.bundle import Bundle
from PIL import Image
from pydicom.uid import generate_uid

from clients.lis.cli import main
from marrowdx.interop import mllp
from marrowdx.interop.dicom import smear_image

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CROPS = sorted((ROOT / "samples" / "demo-case" / "crops").glob("*.jpg"))
FIELDS = sorted((ROOT / "samples" / "fields" / "images").glob("*.jpg"))


def _submit(stack, out: Path, inputs: list[Path], *extra: str) -> int:
    return main(["submit", *map(str, inputs), "--server", stack.address, "--case", f"CASE-{out.name}",
                 "--accession", f"ACC-{out.name}", "--specimen", "marrow", "--patient-id", "MRN-0042", "--patient-name", "DOE^JANE",
                 "--out", str(out), *extra])


def test_crops_to_oru_and_fhir_delivered_over_mllp(stack, tmp_path):
    crop_dir = tmp_path / "crops"
    crop_dir.mkdir()
    for p in CROPS[:60]:
        (crop_dir / p.name).write_bytes(p.read_bytes())
    received = []
    with mllp.MllpReceiver(on_message=lambda er7, code: received.append((er7, code))) as lis:
        assert _submit(stack, tmp_path / "out", [crop_dir], "--crops", "--mllp", f"127.0.0.1:{lis.port}") == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    classes = [item["cell_class"] for item in report["differential"]]

    message = hl7.parse((tmp_path / "out" / "oru.hl7").read_bytes().decode())  # python-hl7, not hl7apy
    assert str(message.segment("MSH")[9]) == "ORU^R01^ORU_R01"
    assert str(message.segment("PID")[3][0][0]) == "MRN-0042"
    obx = message.segments("OBX")
    class_obx = [s for s in obx if str(s[3][0][0]).startswith("MDX-CELL-")]
    assert [str(s[3][0][0]).removeprefix("MDX-CELL-").lower() for s in class_obx] == classes
    for segment, item in zip(class_obx, report["differential"], strict=True):
        if not item.get("trained"):  # not assessed: no value (never 0%), result status X
            assert str(segment[5]) == "" and str(segment[11]) == "X"
            continue
        assert float(str(segment[5])) == pytest.approx(item.get("percent", 0.0), abs=0.05)
        assert str(segment[6][0][0]) == "%" and str(segment[11]) == "P"  # preliminary until signed
    counted = next(s for s in obx if str(s[3][0][0]) == "38257-2")
    assert int(str(counted[5])) == report["cells_counted"]
    assert any("Research use only" in str(s[3]) for s in message.segments("NTE"))

    bundle = Bundle.model_validate_json((tmp_path / "out" / "fhir-bundle.json").read_text())
    resources = [e.resource for e in bundle.entry]
    diagnostic = next(r for r in resources if r.get_resource_type() == "DiagnosticReport")
    assert diagnostic.code.coding[0].code == "47286-0" and diagnostic.status == "preliminary"
    panel = next(r for r in resources if r.get_resource_type() == "Observation" and r.code.coding[0].code == "47286-0")
    members = [m.reference for m in panel.hasMember]
    class_urls = [e.fullUrl for e in bundle.entry if e.resource.get_resource_type() == "Observation"
                  and e.resource.code.coding[0].code.startswith("MDX-CELL-")]
    # Every class Observation, in the report's order, is a member of the panel (by its entry's fullUrl).
    assert len(class_urls) == len(set(class_urls)) == len(classes)
    assert [u for u in members if u in set(class_urls)] == class_urls

    ((delivered, code),) = received
    assert code == "AA" and delivered == (tmp_path / "out" / "oru.hl7").read_bytes().decode()
    assert (tmp_path / "out" / "oru.ack.txt").read_text().startswith("AA")


def test_dicom_fields_are_read_and_a_refused_oru_is_kept(stack, tmp_path, monkeypatch):
    study, series = generate_uid(), generate_uid()
    dicom_dir = tmp_path / "dicom"
    dicom_dir.mkdir()
    for i, p in enumerate(FIELDS):
        ds = smear_image(np.asarray(Image.open(p).convert("RGB")), "MRN-7", "ACC-D", study, series, i + 1)
        ds.save_as(dicom_dir / f"{i}.dcm", enforce_file_format=True)
    monkeypatch.setattr(mllp, "check_message", lambda er7: ("AE", "unknown patient", mllp.control_id_of(er7)))
    with mllp.MllpReceiver() as lis:
        assert _submit(stack, tmp_path / "out", [dicom_dir], "--mllp", f"127.0.0.1:{lis.port}") == 3
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["images_received"] == len(FIELDS)
    assert (tmp_path / "out" / "oru.hl7").exists()
    assert "unknown patient" in (tmp_path / "out" / "oru.nak.txt").read_text()
    monkeypatch.undo()
    with mllp.MllpReceiver() as lis:  # the LIS is fixed: resend the kept message
        assert main(["resend", str(tmp_path / "out"), "--mllp", f"127.0.0.1:{lis.port}"]) == 0
    assert not (tmp_path / "out" / "oru.nak.txt").exists()


def test_a_file_that_is_neither_image_nor_dicom_is_refused_by_name(stack, tmp_path, capsys):
    bad = tmp_path / "notes.dcm"
    bad.write_bytes(b"this is not DICOM")
    assert _submit(stack, tmp_path / "out", [bad]) == 1
    assert "notes.dcm" in capsys.readouterr().err
