"""The bridge's spool and when a case is ready, without the network."""

from __future__ import annotations

import time

import numpy as np
import pytest
from pydicom.uid import generate_uid

from clients.pacs.bridge import BridgeConfig, PacsBridge, check_instance
from clients.pacs.spool import Spool, case_key, instance_file_name, is_dicom_uid
from marrowdx.interop.dicom import smear_image


def _image(study: str, n: int, expected: int = 0):
    ds = smear_image(np.full((64, 64, 3), 180, np.uint8), "P", "A", study, generate_uid(), n)
    if expected:
        ds.ImagesInAcquisition = expected
    return ds


def test_a_case_is_ready_when_complete_or_idle(tmp_path):
    bridge = PacsBridge(BridgeConfig(spool_dir=tmp_path, service_address="unused:1", destination=None, idle_s=60))
    study = generate_uid()
    bridge.spool.accept(_image(study, 1, expected=2))
    (case,) = bridge.spool.pending()
    now = time.time()
    assert not bridge._ready(case, now)  # 1 of 2, and not idle
    assert bridge._ready(case, now + 61)  # idle long enough
    bridge.spool.accept(_image(study, 2, expected=2))
    (case,) = bridge.spool.pending()
    assert bridge._ready(case, now)  # complete


def test_spool_groups_by_study_and_keeps_later_arrivals(tmp_path):
    spool = Spool(tmp_path)
    study = generate_uid()
    first = spool.accept(_image(study, 1))
    spool.accept(_image(generate_uid(), 1))
    assert len(spool.pending()) == 2 and first.parent.name == case_key(_image(study, 9))
    late = spool.accept(_image(study, 2))
    spool.finish_inputs(first.parent.name, [first])  # the run only took the first image
    assert late.exists() and not first.exists()
    assert (tmp_path / "done" / first.parent.name / first.name).exists()
    assert not list(tmp_path.rglob("*.part"))  # writes are atomic


def test_rejections_are_kept_with_their_reason(tmp_path):
    spool = Spool(tmp_path)
    path = spool.reject(b"garbage", "PixelData is missing")
    assert path.read_bytes() == b"garbage"
    assert path.with_suffix(".reason.txt").read_text() == "PixelData is missing"


def test_check_instance_names_the_problem():
    good = _image(generate_uid(), 1)
    assert check_instance(good) == ""
    del good.StudyInstanceUID
    assert check_instance(good) == "StudyInstanceUID is missing"
    ct = _image(generate_uid(), 1)
    ct.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    assert "not a smear image" in check_instance(ct)



def _store(port: int, datasets, calling_ae: str = "SCANNER", called_ae: str = "MARROWDX") -> list[int]:
    """C-STORE data sets as they are (no file round trip) over a real association on loopback."""
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    for ds in datasets:
        ae.add_requested_context(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if not assoc.is_established:
        raise ConnectionError("association refused")
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def _listening_bridge(tmp_path, **config):
    # idle_s is long: these tests look at what the C-STORE leaves on disk, not at cases being run.
    return PacsBridge(BridgeConfig(spool_dir=tmp_path / "spool", service_address="unused:1", destination=None,
                                   port=0, idle_s=3600, **config))


def test_a_uid_that_is_a_path_is_refused_and_nothing_lands_outside_the_spool(tmp_path):
    traversal = _image(generate_uid(), 1)
    traversal.SOPInstanceUID = traversal.file_meta.MediaStorageSOPInstanceUID = "../../../x"
    bad_study = _image("1.2.3/../../y", 1)
    good = _image(generate_uid(), 2)
    assert check_instance(traversal) == "SOPInstanceUID is not a valid DICOM UID"
    assert check_instance(bad_study) == "StudyInstanceUID is not a valid DICOM UID"
    with _listening_bridge(tmp_path) as bridge:
        statuses = _store(bridge.port, [traversal, bad_study, good])
    assert statuses[0] != 0 and statuses[1] != 0 and statuses[2] == 0
    assert not list(tmp_path.rglob("x.dcm")) and not list(tmp_path.rglob("y*"))
    (stored,) = (tmp_path / "spool" / "incoming").rglob("*.dcm")
    assert stored.name == instance_file_name(good.SOPInstanceUID) and good.SOPInstanceUID not in stored.name
    assert len(list((tmp_path / "spool" / "rejected").glob("*.reason.txt"))) == 2
    with pytest.raises(ValueError, match="not a valid DICOM UID"):
        Spool(tmp_path / "spool").accept(traversal)  # the spool refuses it even if a caller skipped the check


@pytest.mark.parametrize(("uid", "valid"), [("1.2.840.10008.5.1.4.1.1.7", True), ("2.25." + "9" * 59, True),
                                           ("2.25." + "9" * 60, False), ("1..2", False), ("1.2.", False),
                                           ("", False), ("1.2.3a", False), ("../1.2", False)])
def test_dicom_uid_syntax(uid, valid):
    assert is_dicom_uid(uid) is valid


def test_only_listed_calling_ae_titles_may_associate(tmp_path):
    with _listening_bridge(tmp_path, allowed_calling_aes=("SCANNER",)) as bridge:
        with pytest.raises(ConnectionError):
            _store(bridge.port, [_image(generate_uid(), 1)], calling_ae="INTRUDER")
        assert _store(bridge.port, [_image(generate_uid(), 1)], calling_ae="SCANNER") == [0]
    assert len(list((tmp_path / "spool" / "incoming").rglob("*.dcm"))) == 1


def test_an_unreadable_object_is_rejected_alone_and_a_service_outage_backs_off(tmp_path):
    from marrowdx.inference.launcher import free_port

    # The service address is a closed port on loopback: every call fails UNAVAILABLE, as when the service is down.
    bridge = PacsBridge(BridgeConfig(spool_dir=tmp_path, service_address=f"127.0.0.1:{free_port()}",
                                     destination=None, idle_s=0, retry_s=10, retry_max_s=40,
                                     specimen="bone_marrow_aspirate"))
    poison_folder = tmp_path / "incoming" / ("0" * 24)
    poison_folder.mkdir(parents=True)
    (poison_folder / "f.dcm").write_bytes(b"not DICOM at all")  # sorts first: it used to stop the walk
    good = bridge.spool.accept(_image(generate_uid(), 1))
    now = time.time() + 5
    bridge.step(now)  # must not raise
    assert not poison_folder.exists() and (tmp_path / "rejected" / poison_folder.name / "f.dcm").exists()
    reason = (tmp_path / "rejected" / f"{poison_folder.name}.reason.txt").read_text()
    assert "f.dcm: the stored object cannot be read" in reason
    assert good.exists() and bridge.service_calls == 1  # the good study was tried, and waits
    bridge.step(now + 5)
    assert bridge.service_calls == 1  # backing off, not hammering a service that is down
    bridge.step(now + 11)
    assert bridge.service_calls == 2
    bridge.step(now + 25)  # the second delay is 20 s, not 10
    assert bridge.service_calls == 2
    bridge.step(now + 32)
    assert bridge.service_calls == bridge.deferred == 3 and good.exists() and good.parent.name not in bridge.rejected


def test_the_specimen_comes_from_the_images_or_the_bridge_and_is_never_guessed(tmp_path):
    from pydicom.dataset import Dataset

    from clients.pacs.bridge import specimen_of

    marrow = _image(generate_uid(), 1)
    item = Dataset()
    item.SpecimenShortDescription = "Bone marrow aspirate smear, MGG"
    marrow.SpecimenDescriptionSequence = [item]
    blood = _image(generate_uid(), 1)
    blood.BodyPartExamined = "BLOOD"
    assert (specimen_of(marrow), specimen_of(blood), specimen_of(_image(generate_uid(), 1))) == (
        "bone_marrow_aspirate", "peripheral_blood", "")
    # Neither the images nor the bridge say: the study is rejected with why, and the service is not called.
    bridge = PacsBridge(BridgeConfig(spool_dir=tmp_path, service_address="unused:1", destination=None, idle_s=0))
    unknown = bridge.spool.accept(_image(generate_uid(), 1))
    bridge.step(time.time() + 5)
    assert bridge.service_calls == 0 and not unknown.exists()
    assert "specimen type is unknown" in (tmp_path / "rejected" / f"{unknown.parent.name}.reason.txt").read_text()
