"""The detector's COUNT output: a field that fills every detector slot may hold cells that were
never seen; the field result and the case report say so instead of dropping them silently."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from marrowdx.domain.cells import Thresholds
from marrowdx.domain.diagnosis import default_rules
from marrowdx.domain.report import CaseInfo
from marrowdx.domain.taxonomy import default_taxonomy
from marrowdx.imaging.decode import Limits
from marrowdx.inference.triton import Detections
from marrowdx.pipeline import ImageInput, Pipeline
from marrowdx.service import MarrowService

FIELD = sorted((Path(__file__).resolve().parents[2] / "samples" / "fields" / "images").glob("*.jpg"))[0]
SLOTS = 128


class FakeDetector:
    """Returns ``found`` objects (all under the detection threshold: nothing to classify)."""

    def __init__(self, found: int) -> None:
        self.found = found

    async def detect(self, images):
        boxes = np.zeros((1, SLOTS, 4), np.float32)
        return Detections(boxes, np.zeros((1, SLOTS), np.float32), np.zeros((1, SLOTS), np.int32),
                          np.array([[self.found]], np.int32))

    async def classify(self, crops):
        raise AssertionError("nothing to classify")


def service(found: int) -> MarrowService:
    taxonomy = default_taxonomy()
    pipeline = Pipeline(FakeDetector(found), taxonomy, Thresholds(), Limits(40_000_000, 50_000_000, 32), 320, 128,
                        taxonomy.detector_categories)
    return MarrowService(pipeline, None, taxonomy, default_rules(), frozenset(), versions=None, thresholds=Thresholds())


def test_a_full_detector_output_is_flagged_on_the_field_and_noted_for_the_case():
    image = ImageInput(FIELD.read_bytes(), FIELD.name, "fields[0].data")

    async def run(found):
        svc = service(found)
        field = await svc.analyze_field(image, 3)
        session = svc.open_case(CaseInfo(case_id="C"))
        await svc.add_fields(session, [image, ImageInput(FIELD.read_bytes() + b"\0", "b", "fields[1].data")], 3)
        return field.saturated, svc.notes(session)

    saturated, notes = asyncio.run(run(SLOTS))
    assert saturated
    assert len(notes) == 1 and notes[0].startswith("detector_saturated: 2 field(s)") and "fields[1]" in notes[0]
    assert asyncio.run(run(SLOTS - 1)) == (False, [])
