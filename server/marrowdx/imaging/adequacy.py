"""Field adequacy: is this field fit to count, as a morphologist would judge it?

A smear has good and bad areas. A field that is out of focus, empty (or
nearly: too thin) or too thick (cells piled on each other, no background
between them) is left out of the count with its reason instead of lowering
the count silently. The measures are taken at the detector's working scale
(``imaging.scale``), so one threshold holds for every camera:

- contrast, coverage and open slide on the green channel (absorbed by eosin
  and the nuclear stain alike): the slide between cells is the bright end; a
  field with no bright slide anywhere, or almost no open slide, is too thick;
- focus: the blur effect of Crete-Roffet et al. (2007, "The blur effect:
  perception and estimation with a new no-reference perceptual blur metric",
  SPIE 6492): how much of the image's neighbour differences a further blur
  removes (1: nothing left to remove), over two widths, and the Laplacian's
  variance against the squared contrast.

Thresholds are set on the txl_pbc validation fields (docs/any-lab.md): none
of them is left out, and every one of them blurred by a Gaussian of 6 working
pixels (0.65 um), emptied, or stacked five deep (those where cells cover a
third of the slide) is.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np


class FieldProblem(StrEnum):
    TOO_THIN = "too_thin"  # empty or almost: nothing stained to count
    OUT_OF_FOCUS = "out_of_focus"
    TOO_THICK = "too_thick"  # cells piled on each other: no monolayer to count in


# Green-channel levels between the slide background and the darkest stained pixels.
MIN_CONTRAST = 25.0
# The brightest part of a field (its 99th percentile of green) is the slide between
# cells; below this no light passes anywhere (validation fields: 160 at least).
MIN_BACKGROUND = 110.0
# Share of the field covered by stained objects.
MIN_COVERAGE = 0.04  # validation fields: 0.12 at least
MAX_COVERAGE = 0.75  # validation fields: 0.62 at most
# Blur effect over 9 and 25 working pixels, and the Laplacian variance / contrast^2:
# validation fields at most 0.753 and 0.502, at least 0.00034.
# Open slide: background with no stained pixel within 8 working pixels (0.9 um);
# validation fields show at least 9.1% of it, a smear piled up almost none.
FREE_SIDE = 17
MIN_FREE = 0.08
MAX_BLUR_9 = 0.76
MAX_BLUR_25 = 0.52
MIN_SHARPNESS = 0.0003


@dataclass(frozen=True)
class Adequacy:
    problem: FieldProblem | None
    contrast: float
    coverage: float
    blur_9: float
    blur_25: float
    sharpness: float
    free: float = 0.0

    @property
    def adequate(self) -> bool:
        return self.problem is None


def _box_mean(g: np.ndarray, k: int, axis: int) -> np.ndarray:
    """Mean over a window of k pixels along ``axis`` (edges repeated)."""
    pad = [(0, 0), (0, 0)]
    pad[axis] = (k // 2 + 1, k // 2)
    c = np.cumsum(np.pad(g, pad, mode="edge"), axis=axis, dtype=np.float64)
    hi = np.take(c, np.arange(k, c.shape[axis]), axis=axis)
    lo = np.take(c, np.arange(0, c.shape[axis] - k), axis=axis)
    return (hi - lo) / k


def free_space(background: np.ndarray, side: int) -> float:
    """Share of the field in open slide: background pixels whose whole side x side
    neighbourhood is background (a binary erosion, by box sums)."""
    m = background.astype(np.float32)
    if min(m.shape) <= side:
        return 0.0
    open_rows = _box_mean(m, side, 0) > 0.999
    open_both = _box_mean(open_rows.astype(np.float32), side, 1) > 0.999
    return float(open_both.mean())


def blur_effect(g: np.ndarray, k: int) -> float:
    """Crete-Roffet blur: 0 sharp, towards 1 blurred (the worse of the two directions)."""
    worst = 0.0
    for axis in (0, 1):
        if g.shape[axis] <= 2 * k + 2:
            continue
        blurred = _box_mean(g, k, axis)
        d_f = np.abs(np.diff(g, axis=axis))
        d_b = np.abs(np.diff(blurred, axis=axis))
        inner = (slice(k, -k), slice(k, -k))
        d_f, d_b = d_f[inner], d_b[inner]
        total = float(d_f.sum())
        if total <= 0:
            return 1.0
        worst = max(worst, (total - float(np.maximum(0.0, d_f - d_b).sum())) / total)
    return worst


def assess_field(rgb: np.ndarray) -> Adequacy:
    """H x W x 3 uint8 field at the detector's working scale -> its adequacy."""
    g = np.asarray(rgb, np.float32)[..., 1]
    background, darkest = np.percentile(g, 99), np.percentile(g, 5)
    contrast = float(background - darkest)
    stained = g < background - max(20.0, 0.35 * contrast)
    coverage = float(stained.mean())
    free = free_space(~stained, FREE_SIDE)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    sharpness = float(lap.var()) / max(contrast, 1.0) ** 2
    b9, b25 = blur_effect(g, 9), blur_effect(g, 25)
    problem = None
    if background < MIN_BACKGROUND:
        problem = FieldProblem.TOO_THICK  # no open slide anywhere: cells piled up (or an underexposed image)
    elif contrast < MIN_CONTRAST or coverage < MIN_COVERAGE:
        problem = FieldProblem.TOO_THIN
    elif b9 > MAX_BLUR_9 or b25 > MAX_BLUR_25 or sharpness < MIN_SHARPNESS:
        problem = FieldProblem.OUT_OF_FOCUS
    elif coverage > MAX_COVERAGE or free < MIN_FREE:
        problem = FieldProblem.TOO_THICK
    return Adequacy(problem, contrast, coverage, b9, b25, sharpness, free)
