"""Decode and validate image bytes. Limits are checked before any pixel is
decoded (decompression bombs); odd modes are converted where that is safe."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

ALLOWED_FORMATS = {"JPEG", "PNG", "TIFF", "MPO"}  # MPO: JPEG from some cameras


class ImageError(ValueError):
    """Bad image bytes; ``field`` names the request field for the error details."""

    def __init__(self, message: str, field: str = "image.data") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_pixels: int
    min_side: int


def decode_rgb(data: bytes, limits: Limits, field: str = "image.data") -> Image.Image:
    """Bytes -> RGB PIL image (loaded). Raises ImageError with a precise message."""
    if not data:
        raise ImageError("image is empty", field)
    if len(data) > limits.max_bytes:
        raise ImageError(f"image is {len(data)} bytes; the limit is {limits.max_bytes}", field)
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel limit below, with a message that names it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ImageError(f"image header declares more than {limits.max_pixels} pixels", field) from None
    except UnidentifiedImageError:
        raise ImageError("not a JPEG, PNG or TIFF image", field) from None
    except Exception as exc:  # Pillow raises many types on hostile headers
        raise ImageError(f"unreadable image header: {exc}", field) from None
    if image.format not in ALLOWED_FORMATS:
        raise ImageError(f"image format {image.format} is not accepted (JPEG, PNG or TIFF)", field)
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageError(f"image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}", field)
    if min(width, height) < limits.min_side:
        raise ImageError(f"image is {width}x{height}; each side must be at least {limits.min_side} pixels", field)
    try:
        image.load()
    except Exception as exc:
        raise ImageError(f"image data is truncated or corrupt: {exc}", field) from None
    return to_rgb(image, field)


def to_rgb(image: Image.Image, field: str) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("L", "P", "RGBA", "LA", "PA", "CMYK", "YCbCr", "1"):
        if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
            # Composite on white, the colour of an empty slide, not black.
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grey: scale the full range to 8 bits.
        array = np.asarray(image, dtype=np.float64)
        top = array.max() or 1.0
        return Image.fromarray((array * (255.0 / top)).clip(0, 255).astype(np.uint8)).convert("RGB")
    raise ImageError(f"image mode {mode} is not supported", field)
