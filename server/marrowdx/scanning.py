"""One field -> its objects at the detector's working scale, whatever the camera.

The steps (issue #25), in the order the pipeline needs them:

1. the field's scale (``imaging.scale``): the given pixel spacing, or the
   red cells the detector boxes at a few trial scales of the field's centre;
2. the field resampled to the detector's working scale, and its adequacy
   judged there (``imaging.adequacy``): an inadequate field stops here, with
   its reason, and no cell of it is counted;
3. overlapping detector-sized tiles (``imaging.tiling``), detected in
   batches; each tile's detections thresholded and de-duplicated as before
   (``domain.cells.kept_detections``), mapped back to the original pixels;
4. one object per cell across tiles (``domain.tiles.merge_tiles``).

Model calls go through the pipeline's ``Models``; CPU work runs in threads.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
from PIL import Image

from marrowdx.domain.cells import Thresholds, kept_detections
from marrowdx.domain.tiles import merge_tiles
from marrowdx.imaging.adequacy import Adequacy, FieldProblem, assess_field
from marrowdx.imaging.scale import (
    Probe,
    Scale,
    ScaleUnknown,
    probe_factors,
    scale_from_probes,
    scale_from_spacing,
)
from marrowdx.imaging.tiling import (
    DEFAULT_OVERLAP,
    cut_by_tile,
    probe_window,
    resample,
    tile_array,
    tile_grid,
    to_field,
)

# A field up to this much larger than one tile at the working scale is fitted into one.
FIT_TOLERANCE = 1.15


@dataclass(frozen=True)
class ScanConfig:
    overlap: int = DEFAULT_OVERLAP
    # Inputs per detector request (the detector's max_batch_size).
    batch: int = 16
    # Judge each field's adequacy and leave inadequate ones out.
    adequacy: bool = True


@dataclass
class FieldScan:
    boxes: np.ndarray  # K x 4, original pixels
    scores: np.ndarray  # K
    categories: np.ndarray  # K, index into the detector's categories
    scale: Scale | None  # None: a field left out before its scale was known
    adequacy: Adequacy | None
    tiles: int = 0
    saturated: bool = False  # some tile filled every detector output slot

    @property
    def left_out(self) -> FieldProblem | None:
        return self.adequacy.problem if self.adequacy is not None else None


async def _detect(models, inputs: list[np.ndarray], batch: int):
    """Detections for each input, in order (requests of at most ``batch``, sent together)."""
    chunks = [np.stack(inputs[i : i + batch]) for i in range(0, len(inputs), batch)]
    results = await asyncio.gather(*(models.detect(c) for c in chunks))
    out = []
    for det in results:
        for j in range(det.boxes.shape[0]):
            saturated = bool(getattr(det, "saturated", None) and det.saturated(j))
            out.append((det.boxes[j], det.scores[j], det.categories[j], saturated))
    return out


async def field_scale(models, image: Image.Image, pixel_spacing_um: float, thresholds: Thresholds,
                      categories: tuple[str, ...], size: int, batch: int, field: str) -> Scale:
    if pixel_spacing_um > 0:
        return scale_from_spacing(pixel_spacing_um, f"{field}.pixel_spacing_um")
    factors = probe_factors()
    windows = await asyncio.to_thread(lambda: [probe_window(image, f, size) for f in factors])
    probes = [Probe(f, w, h) for f, (_, w, h) in zip(factors, windows, strict=True)]
    usable = [i for i, p in enumerate(probes) if p.usable]
    detections = await _detect(models, [windows[i][0] for i in usable], batch) if usable else []
    red = categories.index("red_cell")
    red_boxes = [np.zeros((0, 4), np.float32)] * len(probes)
    for i, (boxes, scores, cats, _) in zip(usable, detections, strict=True):
        keep = kept_detections(boxes, scores, thresholds)
        red_boxes[i] = boxes[keep][cats[keep] == red]
    return scale_from_probes(probes, red_boxes, field)


async def scan_field(models, image: Image.Image, pixel_spacing_um: float, thresholds: Thresholds,
                     categories: tuple[str, ...], size: int, config: ScanConfig = ScanConfig(),
                     field: str = "image") -> FieldScan:
    """Raises ``imaging.scale.ScaleUnknown`` (an ImageError) when no scale can be had and
    the field, judged at its own pixels, is not plainly inadequate (a blank or blurred
    field shows no red cells to measure: it is left out for what it is)."""
    empty = np.zeros((0, 4), np.float32)
    try:
        scale = await field_scale(models, image, pixel_spacing_um, thresholds, categories, size, config.batch,
                                  field)
    except ScaleUnknown:
        if config.adequacy:
            adequacy = await asyncio.to_thread(assess_field, np.asarray(image.convert("RGB"), np.uint8))
            if adequacy.problem is not None:
                return FieldScan(empty, np.zeros(0, np.float32), np.zeros(0, np.int64), None, adequacy)
        raise
    factor = scale.factor
    if size < max(image.size) * factor <= size * FIT_TOLERANCE:
        # A field just larger than one tile is shrunk into it rather than cut into four
        # mostly overlapping tiles: the detector learnt red cells from 51 to 75 px.
        factor = size / max(image.size)
    working = await asyncio.to_thread(lambda: np.asarray(resample(image, factor), np.uint8))
    adequacy = None
    if config.adequacy:
        adequacy = await asyncio.to_thread(assess_field, working)
        if adequacy.problem is not None:
            return FieldScan(empty, np.zeros(0, np.float32), np.zeros(0, np.int64), scale, adequacy)
    height, width = working.shape[:2]
    tiles = tile_grid(width, height, size, config.overlap)
    arrays = await asyncio.to_thread(lambda: [tile_array(working, t) for t in tiles])
    detections = await _detect(models, arrays, config.batch)
    boxes, scores, cats, tile_ids, cut = [], [], [], [], []
    saturated = False
    for t, (tile, (b, s, c, full)) in enumerate(zip(tiles, detections, strict=True)):
        saturated |= full
        keep = kept_detections(b, s, thresholds)
        boxes.append(to_field(b[keep], tile, factor, image.width, image.height))
        scores.append(s[keep])
        cats.append(c[keep])
        tile_ids.append(np.full(len(keep), t))
        cut.append(cut_by_tile(b[keep], tile, width, height))
    boxes_all = np.concatenate(boxes) if boxes else empty
    merged = merge_tiles(boxes_all, np.concatenate(scores), np.concatenate(tile_ids), np.concatenate(cut))
    return FieldScan(merged.boxes, np.concatenate(scores)[merged.index], np.concatenate(cats)[merged.index],
                     scale, adequacy, len(tiles), saturated)
