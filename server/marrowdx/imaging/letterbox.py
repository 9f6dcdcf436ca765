"""Fit a field into the detector's fixed square input, and map boxes back.

Training and serving both call this, so the detector always sees fields
framed the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

PAD_VALUE = 0


@dataclass(frozen=True)
class Letterbox:
    scale: float  # input pixels per original pixel
    pad_x: int
    pad_y: int
    size: int
    original_width: int
    original_height: int

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """K x 4 boxes in model-input pixels -> original image pixels, clipped to the image."""
        out = boxes.astype(np.float32).copy()
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_x) / self.scale
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_y) / self.scale
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, self.original_width)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, self.original_height)
        return out

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        out = boxes.astype(np.float32).copy()
        out[:, [0, 2]] = out[:, [0, 2]] * self.scale + self.pad_x
        out[:, [1, 3]] = out[:, [1, 3]] * self.scale + self.pad_y
        return out


def letterbox(image: Image.Image, size: int) -> tuple[np.ndarray, Letterbox]:
    """RGB PIL image -> (size x size x 3 uint8, the transform). Aspect kept, centred, zero padded."""
    w, h = image.size
    scale = size / max(w, h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = image.resize((new_w, new_h), Image.BILINEAR, reducing_gap=3.0)
    canvas = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
    canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = np.asarray(resized, dtype=np.uint8)
    return canvas, Letterbox(scale, pad_x, pad_y, size, w, h)
