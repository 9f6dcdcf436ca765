"""Real bone-marrow fields for the detector, with their partial labels kept honest.

SegPC's marrow fields (Gupta et al. 2021) outline plasma cells only. For the
detector that means:

- a mask blob the size and shape of one cell is a nucleated cell (a positive);
- a larger blob is several touching plasma cells whose borders nobody drew: no
  positive is made of it, and its area is *unknown* (no loss either way);
- every other violet (nuclear-stained) area of the field is an unlabelled
  nucleated cell: also unknown, never background;
- red cells, platelets and smudges are not labelled at all: those heatmap
  channels get no loss on these fields.
What remains, pale background and plain red-cell areas, is trusted background
for the nucleated channel. The masks come from ``ignore_masks``; the training
loss multiplies its negative term by them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from marrowdx.evaluation.splits import split_of
from marrowdx.imaging.letterbox import letterbox
from training.data import CACHE_DIR

# A single plasma cell in SegPC's 512 px fields spans about 50-120 px.
SINGLE_CELL_SIDE = (36, 130)
SINGLE_CELL_ASPECT = 1.45


@dataclass(frozen=True)
class MarrowField:
    image: np.ndarray  # S x S x 3 letterboxed
    boxes: np.ndarray  # K x 4 single-cell plasma blobs, input pixels
    known: np.ndarray  # C x s x s: 1 where a negative is trusted, at the heatmap's resolution
    blob_boxes: np.ndarray  # every blob (single or merged), input pixels, for evaluation
    blob_masks: np.ndarray  # S x S uint16 blob label image, for evaluation (0 = none)


def blobs(mask: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    from scipy import ndimage

    labels, _ = ndimage.label(mask > 0)
    boxes = [(r[1].start, r[0].start, r[1].stop, r[0].stop) for r in ndimage.find_objects(labels)]
    return labels, boxes


def is_single_cell(box: tuple[int, int, int, int], scale: float = 1.0) -> bool:
    w, h = (box[2] - box[0]) / scale, (box[3] - box[1]) / scale
    low, high = SINGLE_CELL_SIDE
    return min(w, h) >= low and max(w, h) <= high and max(w, h) <= SINGLE_CELL_ASPECT * min(w, h)


def violet_mask(rgb: np.ndarray, floor: float = 20.0) -> np.ndarray:
    """Nuclear stain: green absorbed far more than red and blue (see training.lineage_data)."""
    a = rgb.astype(np.float32)
    return ((a[..., 0] + a[..., 2]) / 2 - a[..., 1]) > floor


def ignore_masks(image: np.ndarray, labels: np.ndarray, single: list[int], categories: tuple[str, ...],
                 stride: int) -> np.ndarray:
    """C x s x s trust map for the negative loss (1 trusted, 0 unknown)."""
    from scipy import ndimage

    size = image.shape[0]
    out_size = size // stride
    unknown = violet_mask(image) & ~np.isin(labels, single)
    unknown |= (labels > 0) & ~np.isin(labels, single)
    unknown = ndimage.binary_dilation(unknown, iterations=6)
    pooled = unknown.reshape(out_size, stride, out_size, stride).any(axis=(1, 3))
    known = np.zeros((len(categories), out_size, out_size), np.float32)
    known[categories.index("nucleated")] = ~pooled
    return known


def load_segpc(root: Path, split: str, categories: tuple[str, ...], size: int, stride: int,
               limit: int | None = None) -> list[MarrowField]:
    """SegPC fields of one split (by a hash of the file name), letterboxed to the detector input."""
    images = sorted((root / "images").glob("*.jpg"))
    images = [p for p in images if split_of(f"images/{p.name}") == split][:limit]
    key = hashlib.sha1(("\n".join(map(str, images)) + f"{size}/{stride}/{categories}").encode()).hexdigest()[:12]
    cache = CACHE_DIR / f"segpc-{split}-{key}.npz"
    if cache.exists():
        data = np.load(cache, allow_pickle=True)
        return list(data["fields"])
    fields = []
    for path in images:
        mask_path = root / "masks" / (path.stem + ".png")
        if not mask_path.exists():
            continue
        with Image.open(path) as im:
            array, frame = letterbox(im.convert("RGB"), size)
        with Image.open(mask_path) as m:
            mask_array, _ = letterbox(m.convert("L").point(lambda v: 255 if v else 0).convert("RGB"), size)
        labels, boxes = blobs(mask_array[..., 0] > 127)
        single = [i + 1 for i, b in enumerate(boxes) if is_single_cell(b, frame.scale)]
        single_boxes = np.asarray([boxes[i - 1] for i in single], np.float32).reshape(-1, 4)
        fields.append(MarrowField(array, single_boxes, ignore_masks(array, labels, single, categories, stride),
                                  np.asarray(boxes, np.float32).reshape(-1, 4), labels.astype(np.uint16)))
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    holder = np.empty(len(fields), dtype=object)
    holder[:] = fields
    np.savez(cache, fields=holder)
    return fields


def blob_recall(detections: list[np.ndarray], fields: list[MarrowField]) -> dict:
    """Share of outlined blobs with a detection centred inside them (a merged blob of n
    touching cells needs no more than one, so this is a floor on what is found)."""
    found = total = 0
    for boxes, f in zip(detections, fields, strict=True):
        centres = ((boxes[:, :2] + boxes[:, 2:]) / 2).round().astype(int) if len(boxes) else np.zeros((0, 2), int)
        size = f.blob_masks.shape[0]
        hit = set()
        for x, y in centres:
            if 0 <= x < size and 0 <= y < size and f.blob_masks[y, x]:
                hit.add(int(f.blob_masks[y, x]))
        total += len(f.blob_boxes)
        found += len(hit)
    return {"blobs": total, "found": found, "recall": round(found / total, 4) if total else None}
