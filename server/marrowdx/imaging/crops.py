"""Cut square cell crops framed like the classifier's training crops."""

from __future__ import annotations

import numpy as np
from PIL import Image

# Side of the square crop as a multiple of the box's longer side: the cell
# then spans about half the crop, as in the training crops (training/data.py).
CONTEXT = 2.0


def square_crop(image: Image.Image, box: np.ndarray, size: int) -> np.ndarray:
    """A size x size uint8 crop centred on the box, shifted to stay inside the image."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(8.0, CONTEXT * max(x1 - x0, y1 - y0))
    w, h = image.size
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = min(max(0.0, cx - side / 2), max(0.0, w - side))
    top = min(max(0.0, cy - side / 2), max(0.0, h - side))
    region = image.crop((round(left), round(top), round(left + side), round(top + side)))
    return np.asarray(region.resize((size, size), Image.BILINEAR), dtype=np.uint8)


def resize_crop(image: Image.Image, size: int) -> np.ndarray:
    """A submitted single-cell crop, resized whole (it is already framed by its analyser)."""
    return np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.uint8)


# How much of a dataset's crop to keep so the cell spans about half the width,
# as in a detection crop: Matek crops already are framed so; PBC (CellaVision)
# crops show the cell at about a third of the width.
DATASET_CENTRE_FRACTION = {"matek": 1.0, "pbc": 0.66}


def frame_dataset_crop(image: Image.Image, dataset: str) -> Image.Image:
    frac = DATASET_CENTRE_FRACTION.get(dataset, 1.0)
    if frac >= 1.0:
        return image
    w, h = image.size
    side = int(min(w, h) * frac)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))
