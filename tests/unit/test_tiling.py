"""Large fields: the tile grid, box mapping and the cross-tile merge (issue #25 item 2).

A perfect detector is simulated per tile (it returns each cell that reaches into
the tile, clipped to the tile): whatever the cells' places, every cell must come
out of the merge exactly once, with its true box, in the original image's pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from marrowdx.domain.cells import iou_matrix
from marrowdx.domain.tiles import merge_tiles
from marrowdx.imaging.tiling import (
    DEFAULT_OVERLAP,
    Tile,
    cut_by_tile,
    probe_window,
    resample,
    tile_array,
    tile_grid,
    tile_starts,
    to_field,
)

SIZE = 320


@pytest.mark.parametrize("length", [100, 320, 321, 500, 640, 1000, 2047])
def test_tiles_cover_the_field_with_the_overlap(length):
    starts = tile_starts(length, SIZE, DEFAULT_OVERLAP)
    if length <= SIZE:
        assert starts == [(length - SIZE) // 2]  # one tile, field centred in it
        return
    assert starts[0] == 0 and starts[-1] + SIZE == length
    gaps = np.diff(starts)
    assert (SIZE - gaps >= DEFAULT_OVERLAP).all()  # neighbours overlap by at least the overlap


def test_tile_array_pads_outside_the_field():
    field = np.full((100, 200, 3), 9, np.uint8)
    (tile,) = tile_grid(200, 100, SIZE)
    arr = tile_array(field, tile)
    assert arr.shape == (SIZE, SIZE, 3)
    assert (arr == 9).sum() == 100 * 200 * 3
    assert arr[0, 0, 0] == 0 and arr[SIZE // 2, SIZE // 2, 0] == 9  # centred, zero padded


def test_boxes_map_back_to_original_pixels():
    tile = Tile(480, 160, SIZE)
    box = np.array([[20.0, 40.0, 60.0, 100.0]])
    # factor 0.5: the working image is half the original's size
    assert to_field(box, tile, 0.5, 4000, 4000).tolist() == [[1000.0, 400.0, 1080.0, 520.0]]


def test_only_interior_tile_edges_cut():
    grid = tile_grid(600, 300, SIZE)
    left, right = grid[0], grid[-1]
    touching_left = np.array([[0.0, 50, 40, 90]])
    touching_right = np.array([[280.0, 50, SIZE, 90]])
    assert not cut_by_tile(touching_left, left, 600, 300)[0]  # the field's own edge
    assert cut_by_tile(touching_right, left, 600, 300)[0]
    assert cut_by_tile(touching_left, right, 600, 300)[0]


def simulate(cells: np.ndarray, width: int, height: int, overlap: int = DEFAULT_OVERLAP):
    """Each tile 'detects' every cell reaching into it, clipped to the tile."""
    boxes, scores, tiles, cut = [], [], [], []
    for t, tile in enumerate(tile_grid(width, height, SIZE, overlap)):
        local = cells - np.array([tile.x0, tile.y0, tile.x0, tile.y0], np.float32)
        clipped = local.copy()
        clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(max(0, -tile.x0), min(SIZE, width - tile.x0))
        clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(max(0, -tile.y0), min(SIZE, height - tile.y0))
        seen = ((clipped[:, 2] - clipped[:, 0]) >= 4) & ((clipped[:, 3] - clipped[:, 1]) >= 4)
        seen_boxes = clipped[seen]
        boxes.append(to_field(seen_boxes, tile, 1.0, width, height))
        scores.append(np.full(len(seen_boxes), 0.9))
        tiles.append(np.full(len(seen_boxes), t))
        cut.append(cut_by_tile(seen_boxes, tile, width, height))
    return np.concatenate(boxes), np.concatenate(scores), np.concatenate(tiles), np.concatenate(cut)


def separate_cells(draw, width, height, max_side, n):
    cells = []
    for _ in range(n):
        side = draw(st.floats(30, max_side))
        x = draw(st.floats(0, width - side))
        y = draw(st.floats(0, height - side))
        box = np.array([x, y, x + side, y + side], np.float32)
        # cells do not overlap each other (overlapping cells are another rule's business)
        if all(iou_matrix(box[None], c[None])[0, 0] == 0 for c in cells):
            cells.append(box)
    return np.array(cells, np.float32).reshape(-1, 4)


@st.composite
def fields(draw, max_side=float(DEFAULT_OVERLAP)):
    width = draw(st.integers(300, 1400))
    height = draw(st.integers(300, 1400))
    return width, height, separate_cells(draw, width, height, max_side, draw(st.integers(0, 40)))


def check_each_cell_once(cells, merged):
    assert len(merged.boxes) == len(cells)  # never twice, never lost
    if len(cells):
        iou = iou_matrix(cells, merged.boxes)
        assert (iou.max(1) > 0.95).all()  # its true box, in original pixels
        assert (iou.max(0) > 0.95).all()


@settings(max_examples=60, deadline=None)
@given(fields())
def test_every_cell_found_once_across_tiles(field):
    width, height, cells = field
    check_each_cell_once(cells, merge_tiles(*simulate(cells, width, height)))


@settings(max_examples=40, deadline=None)
@given(fields(max_side=1.6 * DEFAULT_OVERLAP))
def test_cells_wider_than_the_overlap_merge_from_their_parts(field):
    width, height, cells = field
    check_each_cell_once(cells, merge_tiles(*simulate(cells, width, height)))


def test_a_cell_on_a_tile_border_is_found_once():
    width, height = 640, 320
    starts = tile_starts(width, SIZE, DEFAULT_OVERLAP)
    border = starts[1]  # the second tile's left edge cuts this cell
    cells = np.array([[border - 40, 100, border + 60, 200]], np.float32)
    boxes, scores, tiles, cut = simulate(cells, width, height)
    assert len(boxes) >= 2 and cut.any()  # seen by two tiles, cut in one
    check_each_cell_once(cells, merge_tiles(boxes, scores, tiles, cut))


def test_two_touching_cells_in_one_tile_stay_two():
    boxes = np.array([[10, 10, 60, 60], [12, 12, 62, 62]], np.float32)  # IoU > 0.5, same tile
    merged = merge_tiles(boxes, np.array([0.9, 0.8]), np.array([0, 0]), np.array([False, False]))
    assert len(merged.index) == 2


def test_resample_and_probe_window_keep_scale():
    image = Image.new("RGB", (1000, 600), (200, 100, 50))
    assert resample(image, 0.5).size == (500, 300)
    arr, w, h = probe_window(image, 0.25, SIZE)
    assert (w, h) == (250, 150)  # the whole field fits at this scale
    assert arr[149, 249].tolist() == [200, 100, 50] and arr[150, 250].tolist() == [0, 0, 0]
    arr, w, h = probe_window(image, 2.0, SIZE)
    assert (w, h) == (SIZE, SIZE)  # the centre 160 px, doubled
