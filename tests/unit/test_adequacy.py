"""Field adequacy (issue #25 item 4) on real validation fields: blurred, emptied and
thick (stacked) versions are left out with their reason; the fields themselves are not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from marrowdx.imaging.adequacy import FieldProblem, assess_field
from marrowdx.imaging.scale import DETECTOR_RED_CELL_PX, measure_training_scale
from marrowdx.imaging.tiling import resample

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "txl_pbc"
pytestmark = pytest.mark.needs_data


@pytest.fixture(scope="module")
def val_fields():
    """Every third txl_pbc val field at the detector's working scale (each source's scale
    measured from its own labelled red cells)."""
    if not DATA.is_dir():
        pytest.skip(f"{DATA} is absent (the shared data folder)")
    sizes = measure_training_scale(DATA, "val")["sizes"]
    fields = []
    for path in sorted((DATA / "images" / "val").iterdir())[::3]:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        factor = DETECTOR_RED_CELL_PX / sizes[f"{rgb.width}x{rgb.height}"]["median_px"]
        fields.append((path.name, resample(rgb, factor)))
    return fields


def problems(images) -> list:
    return [assess_field(np.asarray(im)).problem for im in images]


def test_validation_fields_are_adequate(val_fields):
    found = problems(im for _, im in val_fields)
    left_out = [(name, p) for (name, _), p in zip(val_fields, found, strict=True) if p is not None]
    assert not left_out


def test_blurred_fields_are_out_of_focus(val_fields):
    blurred = [im.filter(ImageFilter.GaussianBlur(6)) for _, im in val_fields]
    assert set(problems(blurred)) == {FieldProblem.OUT_OF_FOCUS}


def test_empty_fields_are_too_thin(val_fields):
    rng = np.random.default_rng(0)
    empty = []
    for _, im in val_fields:
        arr = np.asarray(im, np.float32)
        slide = np.percentile(arr.reshape(-1, 3), 95, axis=0)  # the field's own background colour
        empty.append(Image.fromarray((slide + rng.normal(0, 3, arr.shape)).clip(0, 255).astype(np.uint8)))
    assert set(problems(empty)) == {FieldProblem.TOO_THIN}


def test_a_few_cells_on_an_empty_slide_are_too_thin(val_fields):
    _, im = val_fields[0]
    arr = np.asarray(im).copy()
    h, w = arr.shape[:2]
    slide = np.percentile(arr.reshape(-1, 3), 95, axis=0).astype(np.uint8)
    keep = np.zeros((h, w), bool)
    keep[: h // 8, : w // 8] = True  # one small corner of the field left
    arr[~keep] = slide
    assert problems([Image.fromarray(arr)]) == [FieldProblem.TOO_THIN]


def test_stacked_fields_are_too_thick(val_fields):
    """Five layers of cells (each field with four shifted copies of itself, light passing
    through all of them): no open slide left between the cells. Fields where cells cover
    under a third of the slide are left aside: five layers of a few cells still leave
    open slide to count in."""
    thick = []
    for _, im in val_fields:
        if assess_field(np.asarray(im)).coverage < 1 / 3:
            continue
        arr = np.asarray(im, np.float32) / 255
        h, w = arr.shape[:2]
        layers = arr.copy()
        for dy, dx in ((h // 3, w // 4), (h // 2, 2 * w // 3), (h // 5, w // 2), (2 * h // 3, w // 5)):
            layers *= np.roll(arr, (dy, dx), (0, 1))
        thick.append(Image.fromarray((layers * 255).astype(np.uint8)))
    found = problems(thick)
    assert len(found) > len(val_fields) / 2
    assert set(found) == {FieldProblem.TOO_THICK}
