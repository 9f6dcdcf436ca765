"""Field -> detections -> crops -> classes -> cell calls.

CPU work (decode, letterbox, crop) runs in worker threads so the event loop
keeps serving; model calls go to Triton concurrently, and the dynamic batcher
there merges crops of many fields into one classifier batch.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from PIL import Image

from marrowdx.domain.cells import (
    DETECTOR_EXCLUSIONS,
    CellCall,
    Exclusion,
    Thresholds,
    call_from_probabilities,
    geometric_exclusions,
    kept_detections,
)
from marrowdx.domain.taxonomy import Taxonomy
from marrowdx.imaging.crops import resize_crop, square_crop
from marrowdx.imaging.decode import Limits, decode_rgb
from marrowdx.imaging.framing import Finding, frame_cell
from marrowdx.imaging.letterbox import letterbox
from marrowdx.imaging.scale import Scale
from marrowdx.scanning import ScanConfig, scan_field


class Models(Protocol):
    async def detect(self, images: np.ndarray): ...
    async def classify(self, crops: np.ndarray) -> np.ndarray: ...


@dataclass
class StepTimes:
    decode_ms: float = 0.0
    detect_ms: float = 0.0
    classify_ms: float = 0.0
    crop_ms: float = 0.0

    def add(self, other: StepTimes) -> None:
        self.decode_ms += other.decode_ms
        self.detect_ms += other.detect_ms
        self.classify_ms += other.classify_ms
        self.crop_ms += other.crop_ms


@dataclass
class FieldResult:
    calls: list[CellCall]
    width: int
    height: int
    times: StepTimes = field(default_factory=StepTimes)
    # The detector filled every output slot: the field may hold more cells than were found.
    saturated: bool = False
    # Why the field was left out of the count (imaging.adequacy.FieldProblem), or "".
    left_out: str = ""
    # The scale it was read at (None: the whole field letterboxed, or left out before).
    scale: Scale | None = None


@dataclass(frozen=True)
class ImageInput:
    data: bytes
    image_id: str = ""
    field_name: str = "image.data"
    pixel_spacing_um: float = 0.0  # 0: not given (estimated from the red cells)


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


class Pipeline:
    def __init__(self, models: Models, taxonomy: Taxonomy, thresholds: Thresholds, limits: Limits,
                 detector_input: int, crop_size: int, detector_categories: tuple[str, ...],
                 scan: ScanConfig | None = None, frame_crops: bool = False) -> None:
        self.models = models
        self.taxonomy = taxonomy
        self.thresholds = thresholds
        self.limits = limits
        self.detector_input = detector_input
        self.crop_size = crop_size
        self.categories = detector_categories
        # None: each field letterboxed whole into the detector input (before issue #25).
        self.scan = scan
        self.frame_crops = frame_crops

    async def analyze_field(self, image: ImageInput, source_index: int, top_k: int) -> FieldResult:
        times = StepTimes()
        t = time.perf_counter()
        scale = None
        if self.scan is None:
            rgb, framed, frame = await asyncio.to_thread(self._decode_and_frame, image)
            times.decode_ms = _ms(t)
            t = time.perf_counter()
            det = await self.models.detect(framed[None])
            times.detect_ms = _ms(t)
            saturated = bool(getattr(det, "saturated", None) and det.saturated(0))
            keep = kept_detections(det.boxes[0], det.scores[0], self.thresholds)
            boxes = frame.to_original(det.boxes[0][keep])
            scores, categories = det.scores[0][keep], det.categories[0][keep]
        else:
            # At the models' physical scale, judged for adequacy, tiled (scanning.py).
            rgb = await asyncio.to_thread(decode_rgb, image.data, self.limits, image.field_name)
            times.decode_ms = _ms(t)
            t = time.perf_counter()
            scan = await scan_field(self.models, rgb, image.pixel_spacing_um, self.thresholds, self.categories,
                                    self.detector_input, self.scan, image.field_name.removesuffix(".data"))
            times.detect_ms = _ms(t)
            scale = scan.scale
            if scan.left_out is not None:
                return FieldResult([], rgb.width, rgb.height, times, left_out=scan.left_out.value, scale=scale)
            boxes, scores, categories, saturated = scan.boxes, scan.scores, scan.categories, scan.saturated
        names = [self.categories[int(c)] for c in categories]
        nucleated = np.array([n == "nucleated" for n in names], dtype=bool)
        exclusions = geometric_exclusions(boxes, nucleated, rgb.width, rgb.height, self.thresholds)
        for i, name in enumerate(names):
            if name in DETECTOR_EXCLUSIONS:
                exclusions[i] = DETECTOR_EXCLUSIONS[name]

        to_classify = [i for i in range(len(names)) if nucleated[i] and exclusions[i] is Exclusion.NONE]
        t = time.perf_counter()
        crops = await asyncio.to_thread(self._crops, rgb, boxes[to_classify]) if to_classify else None
        times.crop_ms = _ms(t)
        probs = None
        if crops is not None:
            t = time.perf_counter()
            probs = await self.models.classify(crops)
            times.classify_ms = _ms(t)

        calls = []
        row_of = {i: r for r, i in enumerate(to_classify)}
        for i, name in enumerate(names):
            box = tuple(float(v) for v in boxes[i])
            if i in row_of:
                code, exclusion, ranked = call_from_probabilities(probs[row_of[i]], self.taxonomy, self.thresholds, top_k)
            else:
                code, exclusion, ranked = "", exclusions[i], ()
            calls.append(CellCall(source_index, image.image_id, box, float(scores[i]), name, exclusion, code, ranked))
        return FieldResult(calls, rgb.width, rgb.height, times, saturated, scale=scale)

    async def classify_crops(self, images: list[ImageInput], first_index: int, top_k: int) -> tuple[list[CellCall], StepTimes]:
        times = StepTimes()
        t = time.perf_counter()
        crops, findings = await asyncio.to_thread(self._decode_crops, images)
        times.decode_ms = _ms(t)
        t = time.perf_counter()
        probs = await self.models.classify(crops)
        times.classify_ms = _ms(t)
        calls = []
        for j, image in enumerate(images):
            code, exclusion, ranked = call_from_probabilities(probs[j], self.taxonomy, self.thresholds, top_k)
            if findings[j] is Finding.NO_CELL:
                exclusion = Exclusion.NOT_IDENTIFIABLE  # no nucleus in the crop: nothing to name
            calls.append(CellCall(first_index + j, image.image_id, None, 0.0, "", exclusion, code, ranked))
        return calls, times

    def _decode_and_frame(self, image: ImageInput):
        rgb = decode_rgb(image.data, self.limits, image.field_name)
        framed, frame = letterbox(rgb, self.detector_input)
        return rgb, framed, frame

    def _crops(self, rgb: Image.Image, boxes: np.ndarray) -> np.ndarray:
        return np.stack([square_crop(rgb, b, self.crop_size) for b in boxes])

    def _decode_crops(self, images: list[ImageInput]) -> tuple[np.ndarray, list[Finding | None]]:
        """Crops resized whole as their analyser framed them; with ``frame_crops`` the cell is
        found first and re-framed as the classifier's training crops (imaging/framing.py)."""
        crops, findings = [], []
        for i in images:
            rgb = decode_rgb(i.data, self.limits, i.field_name)
            finding = None
            if self.frame_crops:
                rgb, framing = frame_cell(rgb)
                finding = framing.finding
            crops.append(resize_crop(rgb, self.crop_size))
            findings.append(finding)
        return np.stack(crops), findings
