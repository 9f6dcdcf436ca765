"""Physical scale: bring every field to the scale the detector was trained at.

The detector learnt cells at one size in its input pixels (red cells about
``DETECTOR_RED_CELL_PX`` across, measured on its training fields: see
``measure_training_scale`` and docs/any-lab.md). A field from another camera
or objective is resampled to that scale before detection instead of being
squeezed whole into the input. The scale comes from, in order:

1. the request's ``pixel_spacing_um`` (a DICOM image's PixelSpacing, where
   the sender passes it on);
2. an estimate from the image itself: red cells are about 7.5 um across in a
   dried smear and every smear has them. The detector looks at the field's
   centre at a few trial scales (``probe_factors``); its whole red-cell boxes
   at the trial where they come out nearest the size it learnt give the
   red-cell diameter in pixels, hence micrometres per pixel;
3. otherwise nothing: ``ScaleUnknown`` (never a guess).

Plain numpy: the pipeline makes the detector calls and hands the boxes here.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
from PIL import Image

from marrowdx.imaging.decode import ImageError

# Mean diameter of a normal red cell in a dried, Romanowsky-stained smear
# (textbook 7-8 um). Used only to turn a red-cell size in pixels into um/px.
RED_CELL_UM = 7.5
# Median side of a labelled, whole red cell in the detector's 320 px input over
# the txl_pbc train fields (per-size medians 51-75 px, field-weighted median 69;
# docs/any-lab.md, `python -m marrowdx.imaging.scale ../shared/data/txl_pbc`).
DETECTOR_RED_CELL_PX = 69.0
# The detector's working scale: micrometres per input pixel.
WORKING_UM_PER_PX = RED_CELL_UM / DETECTOR_RED_CELL_PX
# Spacings outside this range are not a light-microscope smear image
# (0.02 um/px is beyond any oil objective's resolution, 2 um/px a 5x overview).
MIN_UM_PER_PX, MAX_UM_PER_PX = 0.02, 2.0


class ScaleSource(StrEnum):
    REQUEST = "request"  # the client's pixel_spacing_um (the PACS bridge: DICOM PixelSpacing)
    ESTIMATED = "estimated"  # from the red cells of the image itself


class ScaleUnknown(ImageError):
    """No pixel spacing was given and the image shows too few red cells to measure one."""

    def __init__(self, message: str, field: str = "image.pixel_spacing_um") -> None:
        super().__init__(message, field)


@dataclass(frozen=True)
class Scale:
    um_per_px: float
    source: ScaleSource
    # The red-cell diameter the estimate found, in original pixels (estimates only).
    red_cell_px: float | None = None

    @property
    def factor(self) -> float:
        """Detector-input pixels per original pixel."""
        return self.um_per_px / WORKING_UM_PER_PX


def scale_from_spacing(pixel_spacing_um: float, field: str = "image.pixel_spacing_um") -> Scale:
    if not MIN_UM_PER_PX <= pixel_spacing_um <= MAX_UM_PER_PX:
        raise ImageError(f"pixel spacing {pixel_spacing_um:g} um is outside {MIN_UM_PER_PX}-{MAX_UM_PER_PX} um "
                         "per pixel (a smear photographed through a 10x-100x objective)", field)
    return Scale(float(pixel_spacing_um), ScaleSource.REQUEST)


# --- the estimate ---------------------------------------------------------------------------------

# Red-cell diameters (original pixels) tried by the estimate, a factor 2 apart:
# at the right one the detector sees red cells within a factor sqrt(2) of the
# size it learnt (49-97 px against 69) and still boxes them at their true size.
# 12 px is 0.63 um/px, 384 px 0.02 um/px: the range of MIN/MAX_UM_PER_PX.
PROBE_RED_CELL_PX = (12.0, 24.0, 48.0, 96.0, 192.0, 384.0)
# A probe needs this many measurable red cells (``red_cell_sides``) to measure.
MIN_RED_CELLS = 3
# A probe window narrower than this at its scale shows too few cells to judge.
MIN_PROBE_SIDE = 100


@dataclass(frozen=True)
class Probe:
    """One trial scale: the field's centre window resampled by ``factor``."""

    factor: float  # detector-input pixels per original pixel
    width: int  # the window's size at that scale (the rest of the input is padding)
    height: int

    @property
    def usable(self) -> bool:
        return min(self.width, self.height) >= MIN_PROBE_SIDE


def probe_factors() -> list[float]:
    return [DETECTOR_RED_CELL_PX / d for d in PROBE_RED_CELL_PX]


def red_cell_sides(boxes: np.ndarray, width: float, height: float, margin: float = 2.0) -> np.ndarray:
    """Red-cell diameters from their boxes: a whole cell's box is near square (one that
    is not was cut or squeezed by a neighbour) and measures as the geometric mean of
    its sides; a cell cut by one edge of the window still shows its diameter along
    that edge (the longer side), as long as less than half of it is cut away."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    left, top = boxes[:, 0] <= margin, boxes[:, 1] <= margin
    right, bottom = boxes[:, 2] >= width - margin, boxes[:, 3] >= height - margin
    cut_x, cut_y = left | right, top | bottom
    positive = (bw > 0) & (bh > 0)
    square = np.abs(bw - bh) < 0.2 * np.maximum(bw, bh)
    whole = positive & ~cut_x & ~cut_y & square
    # Cut across x only: the height is the diameter if at least half the width is left.
    cut_in_x = positive & cut_x & ~cut_y & (bw >= 0.5 * bh) & (bw <= bh * 1.05)
    cut_in_y = positive & cut_y & ~cut_x & (bh >= 0.5 * bw) & (bh <= bw * 1.05)
    return np.concatenate([np.sqrt(bw * bh)[whole], bh[cut_in_x], bw[cut_in_y]])


def scale_from_probes(probes: list[Probe], red_cell_boxes: list[np.ndarray], field: str = "image") -> Scale:
    """The scale from the detector's red cells at each probe (boxes in that probe's input
    pixels, score threshold applied). The probe whose red cells come out nearest the
    size the detector learnt is trusted; their median side, back in original pixels,
    is the field's red-cell diameter. Raises ScaleUnknown when no probe found enough."""
    best: tuple[float, float] | None = None
    for probe, boxes in zip(probes, red_cell_boxes, strict=True):
        if not probe.usable:
            continue
        sides = red_cell_sides(boxes, probe.width, probe.height)
        if len(sides) < MIN_RED_CELLS:
            continue
        median = float(np.median(sides))
        distance = abs(np.log(median / DETECTOR_RED_CELL_PX))
        if best is None or distance < best[0]:
            best = (distance, median / probe.factor)
    if best is None:
        raise ScaleUnknown(f"no pixel spacing was given and fewer than {MIN_RED_CELLS} whole red cells were "
                           "found to measure the scale from the image; give pixel_spacing_um (micrometres "
                           "per pixel)", f"{field}.pixel_spacing_um")
    diameter = best[1]
    um_per_px = RED_CELL_UM / diameter
    if not MIN_UM_PER_PX <= um_per_px <= MAX_UM_PER_PX:
        raise ScaleUnknown(f"the red cells measure {diameter:.0f} px, which is no smear scale; give "
                           "pixel_spacing_um (micrometres per pixel)", f"{field}.pixel_spacing_um")
    return Scale(um_per_px, ScaleSource.ESTIMATED, diameter)


# --- measuring the training scale (documentation command) -----------------------------------------

def measure_training_scale(root: Path, split: str = "train", input_size: int = 320) -> dict:
    """Median side of labelled, whole (near-square) red-cell boxes per image size in a
    YOLO field folder (txl_pbc: class 1 = RBC), in original and detector-input pixels."""
    per_size: dict[tuple[int, int], list[float]] = defaultdict(list)
    fields: dict[tuple[int, int], int] = defaultdict(int)
    field_medians: list[float] = []
    for path in sorted((root / "images" / split).iterdir()):
        with Image.open(path) as im:
            w, h = im.size
        fields[(w, h)] += 1
        label = root / "labels" / split / f"{path.stem}.txt"
        sides = []
        for line in label.read_text().splitlines() if label.exists() else []:
            parts = line.split()
            if len(parts) == 5 and parts[0] == "1":
                bw, bh = float(parts[3]) * w, float(parts[4]) * h
                if abs(bw - bh) < 0.15 * max(bw, bh):  # cut by the edge or by another cell: not whole
                    sides.append(float(np.sqrt(bw * bh)))
        per_size[(w, h)] += sides
        if sides:
            field_medians.append(float(np.median(sides)) * input_size / max(w, h))
    out = {"split": split, "input_size": input_size, "sizes": {}}
    for size, sides in sorted(per_size.items()):
        med = float(np.median(sides)) if sides else float("nan")
        out["sizes"][f"{size[0]}x{size[1]}"] = {
            "fields": fields[size], "red_cells": len(sides), "median_px": round(med, 1),
            "at_input_px": round(med * input_size / max(size), 1),
            "um_per_px": round(RED_CELL_UM / med, 4) if sides else None}
    out["field_median_at_input_px"] = round(float(np.median(field_medians)), 1)
    return out


if __name__ == "__main__":
    print(json.dumps(measure_training_scale(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "train"),
                     indent=2))
