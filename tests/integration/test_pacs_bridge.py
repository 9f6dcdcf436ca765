"""The PACS path with real DICOM peers on loopback: a pynetdicom SCU sends smear
images to the bridge, the bridge runs the case through the real service, and a
pynetdicom SCP receives an SR and annotation objects that pydicom and highdicom
read back with the right counts. Malformed objects are refused, kept, and do
not stop the case."""

from __future__ import annotations

import re
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.uid import generate_uid

from clients.pacs.bridge import BridgeConfig, Destination, PacsBridge
from clients.pacs.nodes import StoreSCP, echo, send_files
from clients.pacs.spool import Spool
from marrowdx.interop.dicom import SECONDARY_CAPTURE, smear_image, smear_slide
from tests.integration import dcmtk
from tests.integration.dcmtk import need_dcmtk

pytestmark = pytest.mark.integration
FIELDS = sorted((Path(__file__).resolve().parents[2] / "samples" / "fields" / "images").glob("*.jpg"))


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _write(folder: Path, datasets) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _wait(predicate, timeout=180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError("timed out")


def _sr_measurements(sr) -> dict[str, float]:
    group = hd.sr.ComprehensiveSR.from_dataset(sr).content.get_image_measurement_groups()[0]
    return {m.name.value: m.value for m in group.get_measurements()}


def test_images_in_results_out_with_the_right_counts(stack, tmp_path):
    study = generate_uid()
    series = generate_uid()
    images = [smear_image(_rgb(p), "PAT-1", "ACC-PACS-1", study, series, i + 1) for i, p in enumerate(FIELDS[:2])]
    images.append(smear_image(_rgb(FIELDS[2]), "PAT-1", "ACC-PACS-1", study, series, 3, sop_class=SECONDARY_CAPTURE))
    slide_rgb = np.concatenate([_rgb(FIELDS[0]), _rgb(FIELDS[0])[:, ::-1]], axis=1)  # two fields side by side
    images.append(smear_slide(slide_rgb, "PAT-1", "ACC-PACS-1", study))
    for image in images:  # the study runs when all four are in: a slow transfer must not split it
        image.ImagesInAcquisition = len(images)
    files = _write(tmp_path / "scanner", images)

    with StoreSCP(tmp_path / "archive") as archive:
        config = BridgeConfig(spool_dir=tmp_path / "spool", service_address=stack.address, port=0, idle_s=60,
                              specimen="bone_marrow_aspirate", poll_s=0.2,
                              destination=Destination("127.0.0.1", archive.port, archive.ae_title))
        with PacsBridge(config) as bridge:
            assert echo("127.0.0.1", bridge.port, "MARROWDX") == 0
            assert send_files(files, "127.0.0.1", bridge.port, "MARROWDX") == [0, 0, 0, 0]
            _wait(lambda: any(str(d.SOPClassUID) == "1.2.840.10008.5.1.4.1.1.88.33" for d in archive.received)
                  and sum(str(d.SOPClassUID) == "1.2.840.10008.5.1.4.1.1.91.1" for d in archive.received) >= 1)
            report_id = next(iter(bridge.reports.values()))
        received = {str(d.SOPClassUID): [] for d in archive.received}
        for d in archive.received:
            received[str(d.SOPClassUID)].append(d)

    report = stack.runtime.store.by_report_id(report_id, "local")
    from marrowdx._proto.marrowdx.v1 import diagnosis_pb2 as pb

    report = pb.CaseReport.FromString(report.payload)
    # The SR, read back from the file the archive wrote, in the source study, referencing every source image.
    (sr,) = received["1.2.840.10008.5.1.4.1.1.88.33"]
    sr = dcmread(tmp_path / "archive" / f"{sr.SOPInstanceUID}.dcm")
    assert sr.StudyInstanceUID == study and sr.PatientID == "PAT-1"
    referenced = {item.ReferencedSOPInstanceUID for study_item in sr.CurrentRequestedProcedureEvidenceSequence
                  for series_item in study_item.ReferencedSeriesSequence for item in series_item.ReferencedSOPSequence}
    assert referenced == {d.SOPInstanceUID for d in images}
    measurements = _sr_measurements(sr)
    assert measurements["38257-2"] == report.cells_counted > 0
    for item in report.differential:  # untrained classes are not assessed: no measurement, never a 0%
        code = f"MDX-CELL-{item.cell_class.upper()}"
        if item.trained:
            assert measurements[code] == pytest.approx(item.percent, abs=1e-3)
        else:
            assert code not in measurements
    # Annotations: one object per annotated source image; boxes add up to the report's evidence with boxes.
    annotations = [hd.ann.annread(tmp_path / "archive" / f"{d.SOPInstanceUID}.dcm")
                   for d in received["1.2.840.10008.5.1.4.1.1.91.1"]]
    boxes = sum(g.number_of_annotations for a in annotations for g in a.get_annotation_groups())
    assert boxes == sum(1 for c in report.evidence if c.HasField("box"))
    counted = sum(g.number_of_annotations for a in annotations for g in a.get_annotation_groups()
                  if not g.label.startswith("excluded_"))
    assert counted == report.cells_counted
    slide_uid = images[-1].SOPInstanceUID
    slide_annotations = [a for a in annotations if a.ReferencedImageSequence[0].ReferencedSOPInstanceUID == slide_uid]
    assert slide_annotations, "the whole-slide image's cells are annotated in its pixel matrix"
    xs = np.concatenate([g.get_graphic_data("2D")[i][:, 0] for g in slide_annotations[0].get_annotation_groups()
                         for i in range(g.number_of_annotations)])
    assert xs.max() > _rgb(FIELDS[0]).shape[1]  # boxes from the second region sit right of the first


def test_malformed_objects_are_refused_and_kept_and_the_case_goes_on(stack, tmp_path):
    study, series = generate_uid(), generate_uid()
    good = smear_image(_rgb(FIELDS[0]), "PAT-2", "ACC-PACS-2", study, series, 1)
    no_pixels = smear_image(_rgb(FIELDS[1]), "PAT-2", "ACC-PACS-2", study, series, 2)
    del no_pixels.PixelData
    broken = smear_image(_rgb(FIELDS[1]), "PAT-2", "ACC-PACS-2", study, series, 3)
    broken.PixelData = broken.PixelData[:1000]  # truncated pixel data
    files = _write(tmp_path / "scanner", [good, no_pixels, broken])
    with StoreSCP(tmp_path / "archive") as archive:
        config = BridgeConfig(spool_dir=tmp_path / "spool", service_address=stack.address, port=0, idle_s=1.0,
                              specimen="bone_marrow_aspirate", poll_s=0.2,
                              destination=Destination("127.0.0.1", archive.port, archive.ae_title))
        with PacsBridge(config) as bridge:
            statuses = send_files(files, "127.0.0.1", bridge.port, "MARROWDX")
            assert statuses[0] == 0 and statuses[1] != 0 and statuses[2] != 0
            _wait(lambda: any(str(d.SOPClassUID) == "1.2.840.10008.5.1.4.1.1.88.33" for d in archive.received))
    reasons = sorted(p.read_text() for p in (tmp_path / "spool" / "rejected").glob("*.reason.txt"))
    assert len(reasons) == 2 and any("PixelData is missing" in r for r in reasons)
    assert len(list((tmp_path / "spool" / "rejected").glob("*.dcm"))) == 2  # kept for a person, not dropped


def test_results_wait_in_the_spool_while_the_destination_is_down(stack, tmp_path):
    study, series = generate_uid(), generate_uid()
    files = _write(tmp_path / "scanner", [smear_image(_rgb(FIELDS[0]), "PAT-3", "ACC-PACS-3", study, series, 1)])
    archive = StoreSCP(tmp_path / "archive")
    from marrowdx.inference.launcher import free_port

    archive.port = free_port()  # nobody listens there yet
    config = BridgeConfig(spool_dir=tmp_path / "spool", service_address=stack.address, port=0, idle_s=0.5,
                          specimen="bone_marrow_aspirate", poll_s=0.2, retry_s=0.5,
                          destination=Destination("127.0.0.1", archive.port, "ARCHIVE"))
    with PacsBridge(config) as bridge:
        send_files(files, "127.0.0.1", bridge.port, "MARROWDX")
        _wait(lambda: bridge.spool.unsent())
        time.sleep(1.5)
        assert bridge.spool.unsent()  # still waiting, nothing thrown away
        with archive:
            _wait(lambda: len(archive.received) >= 2)
        _wait(lambda: not bridge.spool.unsent())


# -- independent peers: dcmtk's storescu as the modality, storescp as the archive ----------------------
def _bridge(stack, tmp_path, archive, **overrides) -> PacsBridge:
    # retry_max_s is short: on a loaded CI machine a busy service (RESOURCE_EXHAUSTED) must not push a
    # retry past the test's wait.
    config = dict(spool_dir=tmp_path / "spool", service_address=stack.address, specimen="bone_marrow_aspirate",
                  port=0, idle_s=1.0, poll_s=0.2, retry_max_s=2.0,
                  retry_s=0.5, destination=Destination("127.0.0.1", archive.port, archive.ae_title))
    config.update(overrides)
    return PacsBridge(BridgeConfig(**config))


def test_a_secondary_capture_without_modality_is_reported_once(stack, tmp_path):
    """Issue #20 item 1: a capture station's SC image with no Modality (and no patient/study type 2
    attributes) is stored Success, reported, and the SR reads back in dcmtk; the service is called once."""
    need_dcmtk()
    study = generate_uid()
    image = smear_image(_rgb(FIELDS[0]), "PAT-SC", "ACC-SC", study, generate_uid(), 1, sop_class=SECONDARY_CAPTURE)
    for keyword in ("Modality", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
                    "ReferringPhysicianName"):
        delattr(image, keyword)
    files = _write(tmp_path / "station", [image])
    with dcmtk.StoreSCP(tmp_path / "archive") as archive, _bridge(stack, tmp_path, archive) as bridge:
        sent = dcmtk.storescu(bridge.port, files)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        _wait(lambda: any(m.startswith("SR") for m in archive.modalities()) and not bridge.spool.unsent(), 120)
        time.sleep(1.0)  # a few more passes of the worker: it must not run the study again
        assert bridge.service_calls - bridge.deferred == 1 and not bridge.rejected  # (deferred: busy, retried)
    sr_path = next(p for p in archive.files() if p.name.startswith("SR"))
    dump = dcmtk.run("dsrdump", "+Pc", str(sr_path))  # dcmtk's own SR parser, codes printed
    assert dump.returncode == 0 and "COMPLETE" in dump.stdout, dump.stderr
    report = stack.runtime.store.by_report_id(next(iter(bridge.reports.values())), "local")
    from marrowdx._proto.marrowdx.v1 import diagnosis_pb2 as pb

    counted = re.search(r'\(38257-2,LN,"[^"]*"\)="([0-9.]+)"', dump.stdout)
    assert counted and float(counted.group(1)) == pb.CaseReport.FromString(report.payload).cells_counted
    header = dcmtk.run("dcmdump", "+P", "StudyInstanceUID", "+P", "Modality", str(sr_path)).stdout
    assert study in header and "[SR]" in header


def _tiny(study: str, series: str, n: int):
    return smear_image(np.full((8, 8, 3), 180, np.uint8), "PAT-T", "ACC-T", study, series, n)


def test_an_image_the_service_would_refuse_gets_a_failure_status_at_c_store(tmp_path):
    """Issue #20 item 2, first half: the 8x8 field is refused to the sender, with why, not acknowledged."""
    need_dcmtk()
    study, series = generate_uid(), generate_uid()
    files = _write(tmp_path / "station", [_tiny(study, series, 1), smear_image(_rgb(FIELDS[0]), "P", "A", study, series, 2)])
    with PacsBridge(BridgeConfig(spool_dir=tmp_path / "spool", service_address="unused:1", destination=None,
                                 port=0, idle_s=3600)) as bridge:
        sent = dcmtk.storescu(bridge.port, files)
    output = sent.stdout + sent.stderr
    assert "Received Store Response (Error: DataSetDoesNotMatchSOPClass)" in output, output  # the tiny one
    assert "Received Store Response (Success)" in output, output  # the good one, after it
    assert len(list((tmp_path / "spool" / "incoming").rglob("*.dcm"))) == 1  # only the good image was kept
    (reason,) = (tmp_path / "spool" / "rejected").glob("*.reason.txt")
    assert reason.read_text() == "image is 8x8; the service needs at least 32 pixels a side"


def test_an_image_the_service_refuses_later_is_rejected_and_the_rest_of_the_study_reported(stack, tmp_path):
    """Issue #20 item 2, second half: an image already in the spool (from before the check, or a
    service with stricter limits) is refused by the service; that object moves to rejected/ with the
    service's reason, and the study's other images are still reported: no endless deferral."""
    need_dcmtk()
    study, series = generate_uid(), generate_uid()
    with dcmtk.StoreSCP(tmp_path / "archive") as archive, _bridge(stack, tmp_path, archive, idle_s=0.5) as bridge:
        tiny = bridge.spool.accept(_tiny(study, series, 1))  # written as an old spool would hold it
        bridge.spool.accept(smear_image(_rgb(FIELDS[1]), "PAT-T", "ACC-T", study, series, 2))
        _wait(lambda: any(m.startswith("SR") for m in archive.modalities()) and not bridge.spool.unsent(), 120)
        assert bridge.service_calls - bridge.deferred == 2  # one refused run, one run of the rest
    key = tiny.parent.name
    assert (tmp_path / "spool" / "rejected" / key / tiny.name).exists()
    reason = (tmp_path / "spool" / "rejected" / f"{key}.reason.txt").read_text()
    assert "the service refused it" in reason and "8x8" in reason
    report = stack.runtime.store.by_report_id(bridge.reports[key], "local")
    from marrowdx._proto.marrowdx.v1 import diagnosis_pb2 as pb

    assert pb.CaseReport.FromString(report.payload).images_received == 1


def test_re_sending_a_reported_study_sends_the_archive_nothing_new(stack, tmp_path):
    """Issue #20 item 3: the same study again gives the same report, and no second SR or annotations."""
    need_dcmtk()
    study, series = generate_uid(), generate_uid()
    images = [smear_image(_rgb(p), "PAT-R", "ACC-R", study, series, i + 1) for i, p in enumerate(FIELDS[:2])]
    for image in images:  # the study runs when both are in, not when a slow transfer leaves a gap
        image.ImagesInAcquisition = 2
    files = _write(tmp_path / "scanner", images)
    with dcmtk.StoreSCP(tmp_path / "archive") as archive, _bridge(stack, tmp_path, archive, idle_s=60) as bridge:
        assert dcmtk.storescu(bridge.port, files).returncode == 0
        _wait(lambda: any(m.startswith("SR") for m in archive.modalities()) and not bridge.spool.unsent(), 120)
        first = archive.files()
        assert bridge.service_calls - bridge.deferred == 1
        assert dcmtk.storescu(bridge.port, files).returncode == 0  # the modality sends the study again
        _wait(lambda: bridge.service_calls - bridge.deferred == 2 and not bridge.spool.pending(), 240)
        time.sleep(2.0)  # several worker passes: anything new would have been sent by now
        assert not bridge.spool.unsent()
    assert archive.files() == first  # nothing new reached the archive
    assert sum(m.startswith("SR") for m in archive.modalities()) == 1


def test_the_wrong_called_ae_title_is_refused_and_results_declare_their_local_scheme(stack, tmp_path):
    """Issue #20 item 6 (DICOM): an association for another AE title is rejected; the SR and the
    annotations identify the local scheme 99MDX they use (CodingSchemeIdentificationSequence)."""
    need_dcmtk()
    study, series = generate_uid(), generate_uid()
    files = _write(tmp_path / "scanner", [smear_image(_rgb(FIELDS[2]), "PAT-AE", "ACC-AE", study, series, 1)])
    with dcmtk.StoreSCP(tmp_path / "archive") as archive, _bridge(stack, tmp_path, archive) as bridge:
        wrong = dcmtk.storescu(bridge.port, files, called="NOT-MARROWDX")
        assert wrong.returncode != 0 and "Association Rejected" in wrong.stdout + wrong.stderr
        assert not bridge.spool.pending()
        assert dcmtk.storescu(bridge.port, files).returncode == 0
        _wait(lambda: any(m.startswith("SR") for m in archive.modalities()) and not bridge.spool.unsent(), 120)
    assert {m[:2] for m in archive.modalities()} == {"SR", "MA"}  # storescp: SRc.<uid> and MAs.<uid>
    for path in archive.files():
        scheme = dcmtk.run("dcmdump", "+P", "0008,0110", str(path)).stdout  # that sequence only, with its items
        assert "(0008,0102) SH [99MDX]" in scheme, f"{path.name}: no CodingSchemeIdentificationSequence for 99MDX"


def test_a_spool_with_a_poison_object_and_a_refused_study_still_reports_the_good_ones(stack, tmp_path):
    """Issue #20's scenario: a spool (as a bridge restarted on it finds it) holding one poison object
    (undecodable pixels, no Modality), one study the service refuses (an 8x8 field) and three good
    studies, one of them the Secondary Capture without Modality that used to be the poison. The three
    are reported within a minute, the two bad ones are in rejected/ with reasons, and the service was
    called once per study, as its own audit log confirms."""
    need_dcmtk()
    spool = Spool(tmp_path / "spool")
    poison = smear_image(_rgb(FIELDS[0]), "PAT-X", "ACC-X", generate_uid(), generate_uid(), 1)
    poison.PixelData = poison.PixelData[:999]
    del poison.Modality
    bad_keys = [spool.accept(poison).parent.name,
                spool.accept(_tiny(generate_uid(), generate_uid(), 1)).parent.name]
    good = []
    for i, field in enumerate(FIELDS):
        sop_class = SECONDARY_CAPTURE if i == 0 else "1.2.840.10008.5.1.4.1.1.77.1.2"
        image = smear_image(_rgb(field), f"PAT-{i}", f"ACC-{i}", generate_uid(), generate_uid(), 1, sop_class=sop_class)
        if i == 0:
            del image.Modality
        good.append(spool.accept(image).parent.name)
    audit = stack.runtime.audit
    before = max((e.seq for e in audit.recent(1)), default=0)
    started = time.monotonic()
    with dcmtk.StoreSCP(tmp_path / "archive") as archive, _bridge(stack, tmp_path, archive) as bridge:
        _wait(lambda: set(good) <= set(bridge.reports) and not bridge.spool.unsent(), 60)
        reported_in = time.monotonic() - started
        _wait(lambda: not bridge.spool.pending(), 30)
        time.sleep(2.0)  # more passes of the worker: nothing is run again
        calls, deferred = bridge.service_calls, bridge.deferred
    assert reported_in < 60
    assert sum(m.startswith("SR") for m in archive.modalities()) == 3
    rejected = tmp_path / "spool" / "rejected"
    for key in bad_keys:
        assert len(list((rejected / key).glob("*.dcm"))) == 1 and key not in bridge.reports
    assert "pixel data cannot be decoded" in (rejected / f"{bad_keys[0]}.reason.txt").read_text()
    assert "the service refused it" in (rejected / f"{bad_keys[1]}.reason.txt").read_text()
    assert calls - deferred == 5  # once per study; a retry only where the service said it was busy
    time.sleep(0.5)  # the audit log is written off the request path
    streams = [e for e in audit.recent(200) if e.seq > before and "DiagnoseCaseStream" in e.method]
    assert 3 <= len(streams) <= calls  # the service's own count agrees: no hidden retries
