"""Cut a field, at the detector's working scale, into detector-sized tiles.

A field is first resampled by its scale factor (``imaging.scale``), then cut
into ``size`` x ``size`` tiles that overlap by ``overlap`` pixels: a cell no
wider than the overlap lies whole inside at least one tile, so no cell is
lost at a tile border (``domain.tiles`` merges what several tiles saw). A
field smaller than one tile is centred in it and zero padded, as the
detector's training fields were (``imaging.letterbox``). Every tile keeps
far fewer objects than the detector's 128 outputs at this scale (about 20
red cells fill a tile), so no fixed object budget drops nucleated cells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from marrowdx.imaging.letterbox import PAD_VALUE

# At 0.109 um per working pixel 160 px is 17 um: the largest white cells and
# erythroblasts of a marrow smear fit whole in the overlap (megakaryocytes do
# not: they are cut in every tile and merged from their parts).
DEFAULT_OVERLAP = 160


@dataclass(frozen=True)
class Tile:
    """A tile's place in the resampled field (it may reach past the field: padding)."""

    x0: int
    y0: int
    size: int

    @property
    def x1(self) -> int:
        return self.x0 + self.size

    @property
    def y1(self) -> int:
        return self.y0 + self.size


def tile_starts(length: int, size: int, overlap: int) -> list[int]:
    """Start offsets along one axis: one centred tile when the field fits, else tiles
    spread evenly from edge to edge, neighbours overlapping by at least ``overlap``."""
    if length <= size:
        return [(length - size) // 2]
    if not 0 <= overlap < size:
        raise ValueError(f"overlap {overlap} must be in [0, {size})")
    n = math.ceil((length - overlap) / (size - overlap))
    n = max(n, 2)
    return [round(i * (length - size) / (n - 1)) for i in range(n)]


def tile_grid(width: int, height: int, size: int, overlap: int = DEFAULT_OVERLAP) -> list[Tile]:
    return [Tile(x, y, size) for y in tile_starts(height, size, overlap) for x in tile_starts(width, size, overlap)]


def resample(image: Image.Image, factor: float) -> Image.Image:
    """The field at the working scale (``factor`` working pixels per original pixel)."""
    w, h = image.size
    new = (max(1, round(w * factor)), max(1, round(h * factor)))
    if new == (w, h):
        return image
    return image.resize(new, Image.BILINEAR, reducing_gap=3.0 if factor < 1 else None)


def tile_array(image: np.ndarray, tile: Tile) -> np.ndarray:
    """The tile's pixels (size x size x 3 uint8), padding where it reaches past the field."""
    h, w = image.shape[:2]
    out = np.full((tile.size, tile.size, 3), PAD_VALUE, np.uint8)
    sx0, sy0, sx1, sy1 = max(0, tile.x0), max(0, tile.y0), min(w, tile.x1), min(h, tile.y1)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - tile.y0 : sy1 - tile.y0, sx0 - tile.x0 : sx1 - tile.x0] = image[sy0:sy1, sx0:sx1]
    return out


def interior_edges(tile: Tile, width: int, height: int) -> tuple[bool, bool, bool, bool]:
    """Which of the tile's edges (left, top, right, bottom) cut through the field, so that a
    box touching them may be a part of a cell the next tile sees whole."""
    return tile.x0 > 0, tile.y0 > 0, tile.x1 < width, tile.y1 < height


def cut_by_tile(boxes: np.ndarray, tile: Tile, width: int, height: int, margin: float = 2.0) -> np.ndarray:
    """Boxes (tile pixels) touching an interior edge of the tile."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    left, top, right, bottom = interior_edges(tile, width, height)
    cut = np.zeros(len(boxes), bool)
    if left:
        cut |= boxes[:, 0] <= margin
    if top:
        cut |= boxes[:, 1] <= margin
    if right:
        cut |= boxes[:, 2] >= tile.size - margin
    if bottom:
        cut |= boxes[:, 3] >= tile.size - margin
    return cut


def to_field(boxes: np.ndarray, tile: Tile, factor: float, width: int, height: int) -> np.ndarray:
    """Boxes in tile pixels -> the original image's pixels (``factor`` working px per
    original px), clipped to the original image (``width`` x ``height``)."""
    out = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    out[:, [0, 2]] = (out[:, [0, 2]] + tile.x0) / factor
    out[:, [1, 3]] = (out[:, [1, 3]] + tile.y0) / factor
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out


def probe_window(image: Image.Image, factor: float, size: int) -> tuple[np.ndarray, int, int]:
    """The field's centre, as much as fills ``size`` pixels at ``factor``, resampled and
    placed at the top left of a padded input: (input, width, height) of the window there."""
    w, h = image.size
    side = size / factor
    left, top = max(0.0, (w - side) / 2), max(0.0, (h - side) / 2)
    right, bottom = min(float(w), left + side), min(float(h), top + side)
    region = image.crop((round(left), round(top), round(right), round(bottom)))
    nw = min(size, max(1, round(region.width * factor)))
    nh = min(size, max(1, round(region.height * factor)))
    out = np.full((size, size, 3), PAD_VALUE, np.uint8)
    out[:nh, :nw] = np.asarray(region.resize((nw, nh), Image.BILINEAR, reducing_gap=3.0), np.uint8)
    return out, nw, nh
