"""Synthetic crowded fields: real cell crops pasted onto real smear fields.

Open data has no bone-marrow whole fields with boxes (see the model card), so
the detector also learns from fields made crowded here: real nucleated-cell
crops (matek_bm, pbc) pasted at the field's own white-cell scale, touching and
overlapping each other and the field edge, plus "smudge" cells made by
smearing, blurring and bleaching real crops (crushed cells in a marrow smear).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

# In a framed crop (see training.data) the cell spans about half the width.
CELL_FRACTION = 0.5


def _disc_alpha(size: int, radius: float, feather: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2
    dist = np.sqrt(xx**2 + yy**2)
    return np.clip((radius - dist) / feather + 0.5, 0, 1).astype(np.float32)


def make_smudge(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A crushed cell: smeared along one direction, blurred, nucleus bleached."""
    image = Image.fromarray(crop)
    stretch = rng.uniform(1.3, 2.0)
    size = crop.shape[0]
    image = image.resize((int(size * stretch), size), Image.BILINEAR).rotate(rng.uniform(0, 360), Image.BILINEAR)
    w, h = image.size
    image = image.crop(((w - size) // 2, (h - size) // 2, (w - size) // 2 + size, (h - size) // 2 + size))
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(1.5, 3.5)))
    arr = np.asarray(image, dtype=np.float32)
    arr = arr + (255 - arr) * rng.uniform(0.2, 0.45)  # washed-out chromatin
    return arr.clip(0, 255).astype(np.uint8)


def compose(
    field: np.ndarray,
    boxes: np.ndarray,
    categories: np.ndarray,
    crops: np.ndarray,
    rng: np.random.Generator,
    nucleated: int,
    smudge: int,
    n_cells: tuple[int, int] = (1, 4),
    p_smudge: float = 0.3,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paste crops into a letterboxed field; return the new field, boxes and categories."""
    out = field.astype(np.float32).copy()
    size = field.shape[0]
    wbc = boxes[categories == nucleated]
    cell_diameter = float(np.median(np.maximum(wbc[:, 2] - wbc[:, 0], wbc[:, 3] - wbc[:, 1]))) if len(wbc) else size * 0.28
    new_boxes, new_categories = [], []
    keep = np.ones(len(boxes), dtype=bool)
    for _ in range(rng.integers(n_cells[0], n_cells[1] + 1)):
        crop = crops[rng.integers(len(crops))]
        category = nucleated
        if rng.random() < p_smudge:
            crop, category = make_smudge(crop, rng), smudge
        diameter = cell_diameter * rng.uniform(0.8, 1.25)
        paste = int(round(diameter / CELL_FRACTION))
        patch = np.asarray(Image.fromarray(crop).resize((paste, paste), Image.BILINEAR), dtype=np.float32)
        patch = np.rot90(patch, rng.integers(4))
        alpha = _disc_alpha(paste, diameter * 0.56, max(2.0, diameter * 0.08))[..., None]
        cx, cy = rng.uniform(0, size, 2)
        x0, y0 = int(cx - paste / 2), int(cy - paste / 2)
        fx0, fy0, fx1, fy1 = max(0, x0), max(0, y0), min(size, x0 + paste), min(size, y0 + paste)
        if fx1 - fx0 < 4 or fy1 - fy0 < 4:
            continue
        px0, py0 = fx0 - x0, fy0 - y0
        a = alpha[py0 : py0 + fy1 - fy0, px0 : px0 + fx1 - fx0]
        region = out[fy0:fy1, fx0:fx1]
        out[fy0:fy1, fx0:fx1] = region * (1 - a) + patch[py0 : py0 + fy1 - fy0, px0 : px0 + fx1 - fx0] * a
        r = diameter / 2
        box = np.array([cx - r, cy - r, cx + r, cy + r], dtype=np.float32).clip(0, size)
        # Objects whose centre the paste now covers are no longer visible.
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        keep &= np.hypot(centres[:, 0] - cx, centres[:, 1] - cy) > r * 0.9
        if new_boxes:
            nb = np.asarray(new_boxes)
            nc = (nb[:, :2] + nb[:, 2:]) / 2
            hidden = np.hypot(nc[:, 0] - cx, nc[:, 1] - cy) <= r * 0.9
            new_boxes = [b for b, h in zip(new_boxes, hidden, strict=True) if not h]
            new_categories = [c for c, h in zip(new_categories, hidden, strict=True) if not h]
        new_boxes.append(box)
        new_categories.append(category)
    all_boxes = np.concatenate([boxes[keep], np.asarray(new_boxes, np.float32).reshape(-1, 4)])
    all_categories = np.concatenate([categories[keep], np.asarray(new_categories, np.int64)])
    return out.clip(0, 255).astype(np.uint8), all_boxes, all_categories
