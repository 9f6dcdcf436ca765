"""A field of any size and scale through scale -> tiles -> merge (issue #25 items 1-2),
with a stand-in detector that finds painted discs by colour in whatever it is given.

The field is a large camera frame: red cells 130 px across (0.058 um/px) and
white cells placed anywhere, on tile borders too. Every white cell must come back
once, in the original image's pixels, whether the scale is given or estimated."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from marrowdx.domain.cells import Thresholds, iou_matrix
from marrowdx.imaging.scale import RED_CELL_UM, ScaleSource, ScaleUnknown
from marrowdx.inference.triton import Detections
from marrowdx.scanning import ScanConfig, scan_field

CATEGORIES = ("nucleated", "red_cell", "platelet", "smudge")
SLOTS = 128
RED, VIOLET, SLIDE = (220, 120, 120), (110, 40, 160), (235, 230, 225)


class DiscDetector:
    """Boxes every red or violet blob of its input: a detector that works at any scale."""

    def __init__(self, slots: int = SLOTS) -> None:
        self.slots = slots
        self.inputs = 0

    async def detect(self, images: np.ndarray) -> Detections:
        n = len(images)
        self.inputs += n
        boxes = np.zeros((n, self.slots, 4), np.float32)
        scores = np.zeros((n, self.slots), np.float32)
        cats = np.zeros((n, self.slots), np.int32)
        count = np.zeros((n, 1), np.int32)
        r, b = images[..., 0].astype(np.int16), images[..., 2].astype(np.int16)
        violet, red = b - r > 25, r - b > 50  # the two paints; slide and padding are neither
        for i in range(n):
            k = 0
            for mask, category in ((violet[i], 0), (red[i], 1)):
                labels, _ = ndimage.label(mask)
                for sl in ndimage.find_objects(labels)[: self.slots - k]:
                    boxes[i, k] = [sl[1].start, sl[0].start, sl[1].stop, sl[0].stop]
                    scores[i, k], cats[i, k] = 0.9, category
                    k += 1
            count[i, 0] = k
        return Detections(boxes, scores, cats, count)

    async def classify(self, crops):
        raise AssertionError("scanning never classifies")


def camera_field(width=2000, height=1500, red=130, white=190, seed=0):
    """A field with separate red and white cells; returns it and the white cells' boxes."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), SLIDE)
    draw = ImageDraw.Draw(image)
    placed: list[np.ndarray] = []
    whites = []
    for kind, diameter, n in (("white", white, 14), ("red", red, 60)):
        for _ in range(n * 20):
            if sum(1 for p in placed if p[4] == (kind == "white")) >= n:
                break
            x, y = rng.uniform(5, width - diameter - 5), rng.uniform(5, height - diameter - 5)
            box = np.array([x, y, x + diameter, y + diameter, kind == "white"], np.float32)
            if placed and (iou_matrix(np.array(placed)[:, :4] + [-8, -8, 8, 8], box[None, :4]) > 0).any():
                continue
            placed.append(box)
            draw.ellipse(box[:4].tolist(), fill=VIOLET if kind == "white" else RED)
            if kind == "white":
                whites.append(box[:4])
    return image, np.array(whites, np.float32)


def scan(image, spacing=0.0, detector=None, adequacy=False):
    detector = detector or DiscDetector()
    result = asyncio.run(scan_field(detector, image, spacing, Thresholds(), CATEGORIES, 320,
                                    ScanConfig(adequacy=adequacy)))
    return result, detector


def white_boxes(result) -> np.ndarray:
    return result.boxes[result.categories == 0]


@pytest.mark.parametrize("spacing", [0.0, RED_CELL_UM / 130])
def test_every_white_cell_of_a_large_field_comes_back_once_in_original_pixels(spacing):
    image, whites = camera_field()
    result, _ = scan(image, spacing)
    assert result.scale.source is (ScaleSource.ESTIMATED if spacing == 0 else ScaleSource.REQUEST)
    assert result.scale.um_per_px == pytest.approx(RED_CELL_UM / 130, rel=0.05)
    assert result.tiles > 4  # a 2000 px frame at the working scale is many tiles
    found = white_boxes(result)
    assert len(found) == len(whites)  # never twice, never lost
    iou = iou_matrix(whites, found)
    assert (iou.max(1) > 0.85).all()


def test_the_same_cells_at_half_the_size_with_the_spacing_given():
    image, whites = camera_field()
    half = image.resize((image.width // 2, image.height // 2), Image.BILINEAR)
    result, _ = scan(half, 2 * RED_CELL_UM / 130)
    found = white_boxes(result) * 2
    assert len(found) == len(whites)
    assert (iou_matrix(whites, found).max(1) > 0.8).all()


def test_a_field_without_red_cells_and_no_spacing_is_refused():
    image = Image.new("RGB", (800, 600), SLIDE)
    ImageDraw.Draw(image).ellipse((300, 200, 450, 350), fill=VIOLET)
    with pytest.raises(ScaleUnknown, match="pixel_spacing_um"):
        scan(image)


def test_a_full_tile_is_reported_as_saturated():
    image, _ = camera_field()
    result, _ = scan(image, RED_CELL_UM / 130, detector=DiscDetector(slots=3))
    assert result.saturated


def test_an_inadequate_field_is_left_out_before_any_tile_is_detected():
    image, _ = camera_field()
    detector = DiscDetector()
    blank = Image.new("RGB", image.size, SLIDE)
    result, detector = scan(blank, RED_CELL_UM / 130, detector, adequacy=True)
    assert result.left_out is not None and result.left_out.value == "too_thin"
    assert len(result.boxes) == 0 and detector.inputs == 0


def test_a_blank_field_without_spacing_is_left_out_as_too_thin_not_refused():
    blank = Image.new("RGB", (900, 700), SLIDE)
    result, _ = scan(blank, 0.0, adequacy=True)
    assert result.scale is None and result.left_out.value == "too_thin"
