"""Renderers read back by independent parsers: python-hl7 for the ORU,
fhir.resources for the Bundle, pydicom/highdicom for SR and annotations;
MLLP against a real socket peer."""

from __future__ import annotations

import json
import socket

import highdicom as hd
import hl7
import numpy as np
import pytest
from fhir.resources.R4B.bundle import Bundle
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from pydicom import dcmread
from pydicom.uid import generate_uid

from marrowdx._proto.marrowdx.v1 import diagnosis_pb2 as pb
from marrowdx.interop import mllp
from marrowdx.interop.codes import CODES_PATH
from marrowdx.interop.context import OrderContext
from marrowdx.interop.dicom import (
    DicomInputError,
    FieldOrigin,
    frames_as_png,
    render_annotations,
    render_sr,
    smear_image,
)
from marrowdx.interop.fhir import render_bundle
from marrowdx.interop.hl7 import render_oru

TRICKY = "blasts | 31.7% ^ high & rising ~ see \\ note"


@pytest.fixture()
def report() -> pb.CaseReport:
    r = pb.CaseReport(
        report_id="rpt_test", created_at="2026-11-27T05:00:00.123Z", cells_counted=331, target_count=500,
        minimum_count=300, conclusion=TRICKY, disclaimer="Research use only.", images_received=4,
        models=pb.ModelVersions(detector="det-1", classifier="cls-1", taxonomy="tax-1", rule_set="rules-1"),
        differential=[
            pb.DifferentialItem(cell_class="blast", label="Blast", count=105, percent=31.72, ci_low_percent=26.9,
                                ci_high_percent=36.9, trained=True),
            pb.DifferentialItem(cell_class="segmented_neutrophil", label="Segmented neutrophil", count=226,
                                percent=68.28, ci_low_percent=63.1, ci_high_percent=73.1, trained=True),
            pb.DifferentialItem(cell_class="lymphoblast", label="Lymphoblast", trained=False)],
        excluded_counts={"cut_by_edge": 12, "low_confidence": 40},
        findings=[pb.Finding(code="acute_leukemia", label="Acute leukaemia", status=pb.FINDING_STATUS_POSITIVE,
                             explanation="blasts 31.7% >= 20%", rule_id="R-AL-01", source="WHO 2022"),
                  pb.Finding(code="acute_lymphoblastic_leukemia", label="ALL", status=pb.FINDING_STATUS_INDETERMINATE,
                             explanation="lymphoblasts untrained", rule_id="R-ALL-01", source="WHO 2022")])
    r.myeloid_erythroid_ratio = 2.5
    r.thresholds.detection_score = 0.25
    r.thresholds.reject_probability = 0.5
    r.evidence.extend([
        pb.CellCall(source_index=0, box=pb.BoundingBox(x_min=10, y_min=12, x_max=50, y_max=60), countable=True,
                    cell_class="blast", detection_score=0.9),
        pb.CellCall(source_index=0, box=pb.BoundingBox(x_min=60, y_min=12, x_max=90, y_max=40), countable=True,
                    cell_class="blast", detection_score=0.8),
        pb.CellCall(source_index=1, box=pb.BoundingBox(x_min=0, y_min=5, x_max=30, y_max=35), countable=False,
                    exclusion_reason=pb.EXCLUSION_REASON_CUT_BY_EDGE, detection_score=0.7),
        pb.CellCall(source_index=2, countable=True, cell_class="blast")])  # a crop: no box
    return r


CONTEXT = OrderContext(patient_id="MRN^42", patient_family_name="O'Brien", patient_given_name="Ann", birth_date="19700102",
                       sex="F", placer_order_number="PO-1")


def test_oru_parses_back_with_one_obx_per_class_and_escaped_text(report):
    er7 = render_oru(report, CONTEXT, control_id="CTRL1")
    message = hl7.parse(er7)
    assert str(message.segment("MSH")[10]) == "CTRL1" and str(message.segment("MSH")[12]) == "2.5.1"
    assert message.unescape(str(message.segment("PID")[3][0][0])) == "MRN^42"  # escaped, not split
    cell_obx = [s for s in message.segments("OBX") if str(s[3][0][0]).startswith("MDX-CELL-")]
    assert [str(s[3][0][0]) for s in cell_obx] == ["MDX-CELL-BLAST", "MDX-CELL-SEGMENTED_NEUTROPHIL", "MDX-CELL-LYMPHOBLAST"]
    assert [str(s[5]) for s in cell_obx] == ["31.7", "68.3", ""]  # the untrained class: no value, not 0.0
    assert [str(s[11]) for s in cell_obx] == ["P", "P", "X"]  # X: results cannot be obtained
    assert all(str(s[11]) == "P" for s in message.segments("OBX") if s not in cell_obx)
    notes = [message.unescape(str(s[3])) for s in message.segments("NTE")]
    assert f"Conclusion: {TRICKY}" in notes
    assert any("not assessed" in n for n in notes) and any("det-1" in n and "rules-1" in n for n in notes)
    assert any("detection_score 0.25" in n for n in notes)
    excluded = [s for s in message.segments("OBX") if str(s[3][0][0]) == "MDX-EXCLUDED"]
    assert {str(s[4]): int(str(s[5])) for s in excluded} == {"cut_by_edge": 12, "low_confidence": 40}
    findings = [s for s in message.segments("OBX") if str(s[2]) == "CWE"]
    assert [str(s[5][0][0]) for s in findings] == ["MDX-POS", "MDX-IND"]
    parse_message(er7, validation_level=VALIDATION_LEVEL.STRICT).validate()  # the 2.5.1 structure holds


def test_a_signed_result_is_final(report):
    signed = OrderContext(patient_id="1", reviewed_by="Dr Haem")
    message = hl7.parse(render_oru(report, signed))
    assert str(message.segment("OBR")[25]) == "F"
    assert render_bundle(report, signed).entry[-1].resource.status == "final"


def test_only_checked_loinc_codes_are_emitted(report):
    table = json.loads(CODES_PATH.read_text())
    unused = {entry["code"] for entry in table["not_used"]}
    er7 = render_oru(report, CONTEXT)
    bundle = render_bundle(report, CONTEXT).model_dump_json()
    loinc_in_hl7 = {str(s[3][0][0]) for s in hl7.parse(er7).segments("OBX") if str(s[3][0][2]) == "LN"}
    assert loinc_in_hl7 == {"38257-2"}
    assert not any(code in er7 or code in bundle for code in unused)


def test_fhir_bundle_validates_and_links_the_panel(report):
    text = render_bundle(report, CONTEXT).model_dump_json(exclude_none=True)
    bundle = Bundle.model_validate_json(text)
    by_url = {e.fullUrl: e.resource for e in bundle.entry}
    diagnostic = next(r for r in by_url.values() if r.get_resource_type() == "DiagnosticReport")
    assert diagnostic.status == "preliminary" and TRICKY in diagnostic.conclusion
    assert {c.coding[0].code for c in diagnostic.conclusionCode} == {"MDX-FINDING-ACUTE_LEUKEMIA",
                                                                    "MDX-FINDING-ACUTE_LYMPHOBLASTIC_LEUKEMIA"}
    panel = by_url[diagnostic.result[0].reference]
    members = [by_url[m.reference] for m in panel.hasMember]
    cells = [m for m in members if m.code.coding[0].code.startswith("MDX-CELL-")]
    assert [float(c.valueQuantity.value) for c in cells[:2]] == [31.72, 68.28]
    assert [(float(c.component[0].valueQuantity.value), float(c.component[1].valueQuantity.value)) for c in cells[:2]][0] == (26.9, 36.9)
    assert cells[2].valueQuantity is None and cells[2].dataAbsentReason.coding[0].code == "not-performed"
    assert "not trained" in cells[2].note[0].text
    device = by_url[members[0].device.reference]
    assert {v.value for v in device.version} == {"det-1", "cls-1", "tax-1", "rules-1"}
    patient = by_url[diagnostic.subject.reference]
    assert patient.identifier[0].value == "MRN^42" and patient.birthDate.isoformat() == "1970-01-02"


def _sources():
    study, series = generate_uid(), generate_uid()
    rgb = np.full((120, 160, 3), 200, np.uint8)
    return [smear_image(rgb, "P1", "A1", study, series, i + 1) for i in range(2)]


def test_sr_reads_back_with_the_differential_and_findings(report, tmp_path):
    sources = _sources()
    render_sr(report, sources).save_as(tmp_path / "sr.dcm")
    sr = hd.sr.srread(tmp_path / "sr.dcm")
    assert sr.StudyInstanceUID == sources[0].StudyInstanceUID and sr.PatientID == "P1"
    group = sr.content.get_image_measurement_groups()[0]
    values = {m.name.value: m.value for m in group.get_measurements()}
    assert values["MDX-CELL-BLAST"] == pytest.approx(31.72) and values["38257-2"] == 331
    assert values["MDX-EXCLUDED-CUT_BY_EDGE"] == 12
    assert [(e.name.value, e.value.value) for e in group.get_qualitative_evaluations()] == [
        ("MDX-FINDING-ACUTE_LEUKEMIA", "MDX-POS"), ("MDX-FINDING-ACUTE_LYMPHOBLASTIC_LEUKEMIA", "MDX-IND")]
    assert dcmread(tmp_path / "sr.dcm").CompletionFlag == "COMPLETE"


def test_annotations_group_boxes_by_class_and_move_them_by_the_field_offset(report, tmp_path):
    sources = _sources()
    objects = render_annotations(report, sources, {0: FieldOrigin(0), 1: FieldOrigin(1, 100.0, 50.0)})
    assert len(objects) == 2
    read = []
    for i, obj in enumerate(objects):
        obj.save_as(tmp_path / f"a{i}.dcm")
        read.append(hd.ann.annread(tmp_path / f"a{i}.dcm"))
    first = {g.label: g for g in read[0].get_annotation_groups()}
    assert first["blast"].number_of_annotations == 2
    second = read[1].get_annotation_groups()[0]
    assert second.label == "excluded_cut_by_edge"
    assert second.get_graphic_data("2D")[0].tolist() == [[100, 55], [130, 55], [130, 85], [100, 85]]
    assert read[1].ReferencedImageSequence[0].ReferencedSOPInstanceUID == sources[1].SOPInstanceUID


def test_frames_as_png_refuses_what_it_cannot_read():
    image = _sources()[0]
    assert len(frames_as_png(image)) == 1
    del image.PixelData
    with pytest.raises(DicomInputError, match="PixelData"):
        frames_as_png(image)
    image.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT
    with pytest.raises(DicomInputError, match="not a smear image"):
        frames_as_png(image)


def test_mllp_peer_acks_good_messages_and_naks_bad_ones(report):
    seen = []
    with mllp.MllpReceiver(on_message=lambda er7, code: seen.append(code)) as peer:
        good = render_oru(report, CONTEXT, control_id="C-77")
        ack = mllp.send("127.0.0.1", peer.port, good)
        assert ack.accepted and ack.control_id == "C-77"
        assert mllp.send("127.0.0.1", peer.port, "not hl7 at all").code == "AR"
        broken = good.replace("\rPID|1||", "\rPID|1||\rPIDX|")
        assert mllp.send("127.0.0.1", peer.port, broken).code in ("AE", "AR")
    assert seen[0] == "AA" and len(seen) == 3


def test_mllp_send_to_nobody_fails_clearly():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(OSError):
        mllp.send("127.0.0.1", port, "MSH|^~\\&|", timeout_s=2)


def test_the_committed_example_messages_still_parse():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "docs" / "integration"
    message = hl7.parse((folder / "example-oru.hl7").read_text().replace("\n", "\r").strip("\r"))
    assert str(message.segment("MSH")[9]) == "ORU^R01^ORU_R01"
    from marrowdx.domain.taxonomy import default_taxonomy

    # Regenerate the examples (see docs/integration.md) when the taxonomy changes.
    cells = [str(s[3][0][0]) for s in message.segments("OBX") if str(s[3][0][0]).startswith("MDX-CELL-")]
    assert cells == [f"MDX-CELL-{c.upper()}" for c in default_taxonomy().countable_codes]
    Bundle.model_validate_json((folder / "example-fhir-bundle.json").read_text())


def test_every_threshold_is_carried_even_a_zero_one(report):
    report.thresholds.overlap_iou = 0.0  # protobuf would leave a zero out of ListFields
    names = [f.name for f in report.thresholds.DESCRIPTOR.fields]
    message = hl7.parse(render_oru(report, CONTEXT))
    notes = [message.unescape(str(segment[3])) for segment in message.segments("NTE")]
    note = next(n for n in notes if n.startswith("Thresholds:"))
    assert all(name in note for name in names) and "overlap_iou 0" in note
    device = next(e.resource for e in render_bundle(report, CONTEXT).entry if e.resource.get_resource_type() == "Device")
    assert {p.type.text for p in device.property} == {f"threshold:{n}" for n in names}


@pytest.mark.parametrize("frames", [1, 3])
def test_grey_images_become_one_rgb_png_per_frame(frames):
    from io import BytesIO

    from PIL import Image

    image = _sources()[0]  # 120 x 160
    image.SamplesPerPixel, image.PhotometricInterpretation = 1, "MONOCHROME2"
    del image.PlanarConfiguration
    if frames > 1:
        image.NumberOfFrames = frames
    image.PixelData = np.full((frames, 120, 160), 90, np.uint8).tobytes()
    pngs = frames_as_png(image)
    assert len(pngs) == frames
    for png in pngs:
        decoded = Image.open(BytesIO(png))
        assert decoded.size == (160, 120) and decoded.mode == "RGB"


def test_result_uids_follow_the_report_so_a_resend_cannot_duplicate(report):
    sources = _sources()
    origins = {0: FieldOrigin(0), 1: FieldOrigin(1)}
    first, again = render_sr(report, sources), render_sr(report, sources)
    assert first.SOPInstanceUID == again.SOPInstanceUID and first.SeriesInstanceUID == again.SeriesInstanceUID
    annotations = [a.SOPInstanceUID for a in render_annotations(report, sources, origins)]
    assert annotations == [a.SOPInstanceUID for a in render_annotations(report, sources, origins)]
    assert len(set(annotations)) == 2 and first.SOPInstanceUID not in annotations
    changed = pb.CaseReport()
    changed.CopyFrom(report)
    changed.report_id = "rpt_other"
    assert render_sr(changed, sources).SOPInstanceUID != first.SOPInstanceUID
    assert not set(annotations) & {a.SOPInstanceUID for a in render_annotations(changed, sources, origins)}



# -- issue #23: not assessed is not zero, blood is not marrow, urgent is critical ---------------------
def _by_code(bundle, prefix: str):
    return [e.resource for e in bundle.entry if e.resource.get_resource_type() == "Observation"
            and e.resource.code.coding[0].code.startswith(prefix)]


def test_an_untrained_class_is_not_assessed_never_zero_with_an_interval(report):
    message = hl7.parse(render_oru(report, CONTEXT))
    (obx,) = [s for s in message.segments("OBX") if str(s[3][0][0]) == "MDX-CELL-LYMPHOBLAST"]
    assert str(obx[5]) == "" and str(obx[6]) == "" and str(obx[11]) == "X"
    (observation,) = _by_code(render_bundle(report, CONTEXT), "MDX-CELL-LYMPHOBLAST")
    assert observation.valueQuantity is None and not observation.component
    assert observation.dataAbsentReason.coding[0].system == "http://terminology.hl7.org/CodeSystem/data-absent-reason"
    sr = render_sr(report, _sources())
    assert "MDX-CELL-LYMPHOBLAST" not in {m.name.value for m in hd.sr.ComprehensiveSR.from_dataset(sr).content
                                          .get_image_measurement_groups()[0].get_measurements()}


def test_a_blood_case_uses_blood_codes_and_no_marrow_only_results(report):
    report.case_info.specimen_type = pb.SPECIMEN_TYPE_PERIPHERAL_BLOOD
    report.findings.add(code="lymphoma_infiltration", label="Marrow infiltration", specimen="bone_marrow_aspirate",
                        status=pb.FINDING_STATUS_NEGATIVE)
    er7 = render_oru(report, CONTEXT)
    message = hl7.parse(er7)
    assert str(message.segment("OBR")[4][0][0]) == "69738-3"
    codes = {str(s[3][0][0]) for s in message.segments("OBX")}
    assert "MDX-CELLS-COUNTED-BLD" in codes and "38257-2" not in codes
    assert not {"MDX-ME-RATIO", "MDX-FINDING-LYMPHOMA_INFILTRATION"} & codes
    bundle_json = render_bundle(report, CONTEXT).model_dump_json()
    for marrow_only in ("47286-0", "38257-2", "MDX-ME-RATIO", "MDX-FINDING-LYMPHOMA_INFILTRATION"):
        assert marrow_only not in er7 and marrow_only not in bundle_json
    assert "69738-3" in bundle_json
    parse_message(er7, validation_level=VALIDATION_LEVEL.STRICT).validate()
    report.case_info.specimen_type = pb.SPECIMEN_TYPE_BONE_MARROW_ASPIRATE  # the same report from marrow keeps them
    assert {"47286-0", "38257-2", "MDX-ME-RATIO"} <= {str(s[3][0][0]) for s in hl7.parse(render_oru(report, CONTEXT)).segments("OBX")} | {
        str(hl7.parse(render_oru(report, CONTEXT)).segment("OBR")[4][0][0])}


def test_an_urgent_finding_is_critical_in_hl7_and_fhir(report):
    apl = report.findings.add(code="suspected_apl", label="Suspected APL: confirm PML::RARA today",
                              status=pb.FINDING_STATUS_POSITIVE, explanation="abnormal promyelocytes",
                              rule_id="R-APL", source="WHO 2022")
    apl.urgent = True
    message = hl7.parse(render_oru(report, CONTEXT))
    flags = {str(s[3][0][0]): str(s[8]) for s in message.segments("OBX") if str(s[2]) == "CWE"}
    assert flags == {"MDX-FINDING-ACUTE_LEUKEMIA": "", "MDX-FINDING-ACUTE_LYMPHOBLASTIC_LEUKEMIA": "",
                     "MDX-FINDING-SUSPECTED_APL": "AA"}
    assert any(message.unescape(str(s[3])).startswith("CRITICAL: Suspected APL") for s in message.segments("NTE"))
    (observation,) = _by_code(render_bundle(report, CONTEXT), "MDX-FINDING-SUSPECTED_APL")
    assert observation.interpretation[0].coding[0].code == "AA"
    assert not _by_code(render_bundle(report, CONTEXT), "MDX-FINDING-ACUTE_LEUKEMIA")[0].interpretation


def test_a_finding_not_assessed_has_no_value(report):
    report.findings[1].not_assessed = True
    message = hl7.parse(render_oru(report, CONTEXT))
    (obx,) = [s for s in message.segments("OBX") if str(s[3][0][0]) == "MDX-FINDING-ACUTE_LYMPHOBLASTIC_LEUKEMIA"]
    assert str(obx[5]) == "" and str(obx[11]) == "X"
    (observation,) = _by_code(render_bundle(report, CONTEXT), "MDX-FINDING-ACUTE_LYMPHOBLASTIC_LEUKEMIA")
    assert observation.valueCodeableConcept is None and observation.dataAbsentReason.coding[0].code == "not-performed"
