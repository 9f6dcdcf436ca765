"""Find the white cell in a submitted crop and frame it as the classifier expects.

Analysers crop cells differently: the cell filling the crop, or small in a
wide crop. The classifier learnt crops in which the cell spans about half the
width (``imaging.crops.CONTEXT``, ``DATASET_CENTRE_FRACTION``). Here the cell
is found by its nucleus: violet in a Romanowsky stain, (R + B) / 2 - G high
(as ``training.lineage_data.find_white_cells``); nearby nuclear lobes (a
neutrophil's) are one cell. The crop is then re-cut around that nucleus so
that the stain spans ``NUCLEUS_FRACTION`` of the side, as in the training
crops (measured: docs/any-lab.md), padding with the slide's own background
colour where the new frame reaches past the crop. A crop already framed like
the training crops is kept as it is. The pipeline uses it only with the
``frame_crops`` setting: it rescues wide blood crops but costs marrow crops
accuracy (docs/any-lab.md).

A nucleus cut by the crop's edge is a neighbour, not the cell (marrow crops
show parts of their neighbours). No nucleus: ``NO_CELL``. Two or more whole
nuclei of comparable size apart from each other: ``SEVERAL`` (which one the
crop means cannot be told); the most central is framed all the same.

Plain numpy and Pillow.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from PIL import Image, ImageFilter

# Side of the stained cell (violet: the nucleus with its lobes, and a basophilic
# cytoplasm where there is one) against the side of the classifier's training crops
# as framed: median 0.77 on matek (marrow: blue cytoplasm), 0.53 on pbc (blood: pale
# cytoplasm), docs/any-lab.md. A crop in that band is framed as in training and kept
# as it is; another is re-cut so the stain spans NUCLEUS_FRACTION, between the two.
NUCLEUS_FRACTION = 0.64
# Kept as submitted: the stain spans at least this share of the side (not a wide
# crop) and sits near the middle. A tight crop (the cell filling it) is kept too:
# matek's marrow crops of large cells fill theirs, and re-cutting those with a
# margin cost 14 points of accuracy on them (docs/any-lab.md).
MIN_KEEP_FRACTION = 0.33
# Work at this size (longer side): crops come from 64 to 400 px.
WORK_SIDE = 128
# Lobes closer than this (share of the work side) are one cell's nucleus.
LOBE_GAP = 5
# Nuclei smaller than this share of the crop area are specks, platelets or debris.
MIN_NUCLEUS_SHARE = 0.004
# A second whole cell this near the middle (share of the longer side) makes SEVERAL.
SEVERAL_CENTRAL = 0.3
# ... and with the cell's centre within this share of the side from the crop's centre.
KEEP_OFFSET = 0.2


class Finding(StrEnum):
    ONE_CELL = "one_cell"
    NO_CELL = "no_cell"
    SEVERAL = "several_cells"


@dataclass(frozen=True)
class Framing:
    finding: Finding
    # The region of the submitted crop that is the framed crop (x0, y0, x1, y1, its pixels;
    # it may reach past the crop: padding), or None when no cell was found.
    region: tuple[float, float, float, float] | None
    nucleus: tuple[float, float, float, float] | None = None
    # Share of the crop's area the cell's stain covers.
    cover: float = 0.0
    # Why the crop was re-cut ("wide", "off_centre"), or "" when it was kept.
    recut: str = ""


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of a 1-D sample (128 bins): shared by crop framing and training's stain finder."""
    hist, edges = np.histogram(values, bins=128)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m = np.cumsum(hist * centres)
    mu0 = m / np.maximum(w0, 1)
    mu1 = (m[-1] - m) / np.maximum(w1, 1)
    return float(centres[np.argmax(w0 * w1 * (mu0 - mu1) ** 2)])


def label_components(mask: np.ndarray, eight: bool = True) -> tuple[np.ndarray, int]:
    """Connected components (8- or 4-connected) numbered from 1, pure numpy so the service
    needs no scipy; for crops at the work size and single fields (eval blobs)."""
    steps = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy or dx) and (eight or not (dy and dx))]
    labels = np.zeros(mask.shape, np.int32)
    current = 0
    h, w = mask.shape
    for y, x in zip(*np.nonzero(mask), strict=True):
        if labels[y, x]:
            continue
        current += 1
        labels[y, x] = current
        queue = deque([(y, x)])
        while queue:
            cy, cx = queue.popleft()
            for dy, dx in steps:
                ny, nx = cy + dy, cx + dx
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = current
                    queue.append((ny, nx))
    return labels, current


def nucleus_mask(rgb: np.ndarray, floor: float = 25.0) -> np.ndarray:
    """Violet pixels (nuclear stain), specks removed. Red cells are pink (red well above
    blue) and are kept out even when a crop has no nucleus for Otsu's threshold to find."""
    rgb = rgb.astype(np.float32)
    violet = (rgb[..., 0] + rgb[..., 2]) / 2 - rgb[..., 1]
    mask = (violet > max(otsu_threshold(violet), floor)) & (rgb[..., 2] - rgb[..., 0] > -10)
    opened = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MinFilter(3)).filter(ImageFilter.MaxFilter(3))
    return np.asarray(opened) > 0


def find_cell(image: Image.Image) -> Framing:
    """Where the crop's cell is, and the region to cut so that it is framed as in training."""
    width, height = image.size
    shrink = WORK_SIDE / max(width, height)
    small = image.convert("RGB").resize((max(1, round(width * shrink)), max(1, round(height * shrink))),
                                        Image.BILINEAR)
    mask = nucleus_mask(np.asarray(small))
    h, w = mask.shape
    # Lobes of one nucleus join when the mask is grown by LOBE_GAP / 2 on each side.
    grown = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(LOBE_GAP))) > 0
    labels, n = label_components(grown)
    groups = []
    for k in range(1, n + 1):
        ys, xs = np.nonzero((labels == k) & mask)
        if len(xs) < MIN_NUCLEUS_SHARE * h * w:
            continue
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        edge = x0 <= 0 or y0 <= 0 or x1 >= w or y1 >= h
        centre = ((x0 + x1) / 2, (y0 + y1) / 2)
        distance = float(np.hypot(centre[0] - w / 2, centre[1] - h / 2))
        groups.append({"box": (x0, y0, x1, y1), "area": len(xs), "edge": edge, "distance": distance})
    whole = [g for g in groups if not g["edge"]]
    if whole:
        largest = max(g["area"] for g in whole)
        comparable = [g for g in whole if g["area"] >= 0.5 * largest]
        target = min(comparable, key=lambda g: g["distance"])
        side = max(target["box"][2] - target["box"][0], target["box"][3] - target["box"][1])
        tx, ty = (target["box"][0] + target["box"][2]) / 2, (target["box"][1] + target["box"][3]) / 2
        # Another whole cell as large, also near the middle and apart from this one:
        # which one the crop means cannot be told. Neighbours off to the side are normal.
        apart = [g for g in comparable if g is not target and g["distance"] < SEVERAL_CENTRAL * max(h, w)
                 and np.hypot((g["box"][0] + g["box"][2]) / 2 - tx, (g["box"][1] + g["box"][3]) / 2 - ty) > 0.5 * side]
        finding = Finding.SEVERAL if apart else Finding.ONE_CELL
    else:
        # A tight crop: the nucleus may touch its edges. Only a nucleus over the centre is the cell.
        central = [g for g in groups if g["box"][0] <= w / 2 <= g["box"][2] and g["box"][1] <= h / 2 <= g["box"][3]]
        if not central:
            return Framing(Finding.NO_CELL, None)
        target = max(central, key=lambda g: g["area"])
        finding = Finding.ONE_CELL
    x0, y0, x1, y1 = (v / shrink for v in target["box"])
    side = max(x1 - x0, y1 - y0) / NUCLEUS_FRACTION
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    region = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    crop_side = min(width, height)
    fraction = max(x1 - x0, y1 - y0) / crop_side
    cover = target["area"] / (h * w)
    recut = ("wide" if fraction < MIN_KEEP_FRACTION else
             "off_centre" if max(abs(cx - width / 2), abs(cy - height / 2)) >= KEEP_OFFSET * crop_side else "")
    if not recut:
        region = (0.0, 0.0, float(width), float(height))  # already framed so: as submitted
    return Framing(finding, region, (x0, y0, x1, y1), cover, recut)


def background_colour(rgb: np.ndarray) -> tuple[int, int, int]:
    """The slide's colour: the brightest tenth of the crop's pixels, averaged."""
    flat = rgb.reshape(-1, 3).astype(np.float32)
    bright = flat[flat.sum(1) >= np.percentile(flat.sum(1), 90)]
    return tuple(int(v) for v in bright.mean(0))


def cut_region(image: Image.Image, region: tuple[float, float, float, float]) -> Image.Image:
    """The region of the image, padded with the slide's colour where it reaches past it."""
    x0, y0, x1, y1 = (round(v) for v in region)
    if (x0, y0, x1, y1) == (0, 0, image.width, image.height):
        return image
    rgb = image.convert("RGB")
    out = Image.new("RGB", (max(1, x1 - x0), max(1, y1 - y0)), background_colour(np.asarray(rgb)))
    out.paste(rgb.crop((max(0, x0), max(0, y0), min(image.width, x1), min(image.height, y1))),
              (max(0, -x0), max(0, -y0)))
    return out


def frame_cell(image: Image.Image) -> tuple[Image.Image, Framing]:
    """The crop framed as the classifier expects, and what was found (the crop as given
    when no cell was found: the classifier then says it cannot identify it)."""
    framing = find_cell(image)
    if framing.region is None:
        return image, framing
    return cut_region(image, framing.region), framing
