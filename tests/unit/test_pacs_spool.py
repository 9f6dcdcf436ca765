"""The bridge's spool and when a case is ready, without the network."""

from __future__ import annotations

import time

import numpy as np
from pydicom.uid import generate_uid

from clients.pacs.bridge import BridgeConfig, PacsBridge, check_instance
from clients.pacs.spool import Spool, case_key
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

