"""Physical scale (issue #25 item 1): spacing from the request, the red-cell estimate's
choice among trial scales, and the training scale measured from the labelled fields."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from marrowdx.imaging.decode import ImageError
from marrowdx.imaging.scale import (
    DETECTOR_RED_CELL_PX,
    RED_CELL_UM,
    WORKING_UM_PER_PX,
    Probe,
    ScaleSource,
    ScaleUnknown,
    measure_training_scale,
    probe_factors,
    red_cell_sides,
    scale_from_probes,
    scale_from_spacing,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "txl_pbc"


def test_given_spacing_is_used_and_named():
    scale = scale_from_spacing(0.05)
    assert scale.source is ScaleSource.REQUEST
    # a field at 0.05 um/px is resampled to the working scale: fewer pixels
    assert scale.factor == pytest.approx(0.05 / WORKING_UM_PER_PX)
    assert scale.factor < 1


@pytest.mark.parametrize("spacing", [0.001, 5.0])
def test_impossible_spacing_is_refused_naming_the_field(spacing):
    with pytest.raises(ImageError, match="outside") as info:
        scale_from_spacing(spacing)
    assert info.value.field == "image.pixel_spacing_um"


def discs(n: int, side: float, width: float, spread: float = 0.0, seed: int = 0) -> np.ndarray:
    """n whole red-cell boxes of about ``side`` px inside a window ``width`` wide."""
    rng = np.random.default_rng(seed)
    sides = side * (1 + spread * rng.standard_normal(n))
    x = rng.uniform(5, width - sides - 5)
    y = rng.uniform(5, width - sides - 5)
    return np.stack([x, y, x + sides, y + sides], 1).astype(np.float32)


def test_estimate_trusts_the_probe_nearest_the_trained_size():
    true_diameter = 130.0  # original pixels (a 0.058 um/px camera)
    probes, boxes = [], []
    for factor in probe_factors():
        probes.append(Probe(factor, 320, 320))
        seen = true_diameter * factor
        # the detector boxes red cells near their true size only when they are near its trained size
        ok = 0.6 < seen / DETECTOR_RED_CELL_PX < 1.6
        boxes.append(discs(8, seen, 320, 0.05) if ok and seen < 200 else discs(8, 30.0, 320))
    scale = scale_from_probes(probes, boxes)
    assert scale.source is ScaleSource.ESTIMATED
    assert scale.red_cell_px == pytest.approx(true_diameter, rel=0.06)
    assert scale.um_per_px == pytest.approx(RED_CELL_UM / true_diameter, rel=0.06)


def test_elongated_and_mostly_cut_red_cells_do_not_measure():
    boxes = np.array([[100, 100, 150, 150],  # whole: 50
                      [10, 10, 60, 30],  # squeezed: no measure
                      [0, 200, 30, 250],  # cut by the left edge, 30 of 50 left: its height, 50
                      [0, 10, 15, 60],  # cut, less than half left: no measure
                      [0, 0, 40, 40]], np.float32)  # cut by two edges: no measure
    assert sorted(red_cell_sides(boxes, 320, 320).tolist()) == [50.0, 50.0]


def test_no_red_cells_refuses_to_guess():
    probes = [Probe(f, 320, 320) for f in probe_factors()]
    with pytest.raises(ScaleUnknown, match="pixel_spacing_um") as info:
        scale_from_probes(probes, [discs(2, 69, 320)] * len(probes))
    assert info.value.field == "image.pixel_spacing_um"


def test_a_window_too_small_to_judge_is_not_trusted():
    probes = [Probe(0.5, 60, 60)]
    with pytest.raises(ScaleUnknown):
        scale_from_probes(probes, [discs(8, 50, 60)])


@pytest.mark.needs_data
def test_training_scale_matches_the_labelled_fields():
    if not DATA.is_dir():
        pytest.skip(f"{DATA} is absent (the shared data folder)")
    measured = measure_training_scale(DATA, "val")
    # The constant the service uses is what the detector's fields show (within 5%).
    assert measured["field_median_at_input_px"] == pytest.approx(DETECTOR_RED_CELL_PX, rel=0.05)
    # PBC's CellaVision fields are about 0.1 um/px, as its authors' camera gives.
    assert measured["sizes"]["360x363"]["um_per_px"] == pytest.approx(0.096, abs=0.01)
