"""Decoding and validation of untrusted image bytes; letterbox and crops."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from marrowdx.imaging.crops import square_crop
from marrowdx.imaging.decode import ImageError, Limits, decode_rgb
from marrowdx.imaging.letterbox import letterbox

LIMITS = Limits(max_bytes=5_000_000, max_pixels=4_000_000, min_side=16)


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def rgb_image(w=64, h=48) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF"])
def test_accepts_jpeg_png_tiff(fmt):
    out = decode_rgb(encode(rgb_image(), fmt), LIMITS)
    assert out.mode == "RGB" and out.size == (64, 48)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA", "1"])
def test_converts_other_modes_to_rgb(mode):
    image = rgb_image().convert(mode)
    fmt = "TIFF" if mode == "CMYK" else "PNG"
    assert decode_rgb(encode(image, fmt), LIMITS).mode == "RGB"


def test_transparent_pixels_become_white_slide_background():
    image = Image.new("RGBA", (32, 32), (10, 20, 30, 0))
    out = decode_rgb(encode(image, "PNG"), LIMITS)
    assert out.getpixel((5, 5)) == (255, 255, 255)


def test_sixteen_bit_grey_is_scaled():
    array = (np.arange(64 * 64).reshape(64, 64) * 15).astype(np.uint16)
    out = decode_rgb(encode(Image.fromarray(array), "PNG"), LIMITS)
    assert out.mode == "RGB"
    assert np.asarray(out).max() == 255


@pytest.mark.parametrize(("data", "message"), [
    (b"", "empty"),
    (b"hello, not an image", "not a JPEG, PNG or TIFF"),
    (b"GIF89a" + b"\0" * 100, "not"),
])
def test_refuses_non_images(data, message):
    with pytest.raises(ImageError, match=message):
        decode_rgb(data, LIMITS)


def test_refuses_truncated_jpeg():
    data = encode(rgb_image(256, 256), "JPEG")
    with pytest.raises(ImageError, match="truncated or corrupt|unreadable"):
        decode_rgb(data[: len(data) // 2], LIMITS)


def test_refuses_decompression_bomb_before_decoding():
    # A 3000x3000 PNG of zeros compresses to a few KB but is over the pixel limit.
    bomb = encode(Image.new("L", (3000, 3000)), "PNG")
    assert len(bomb) < 100_000
    with pytest.raises(ImageError, match="pixels; the limit"):
        decode_rgb(bomb, Limits(5_000_000, 4_000_000, 16))


def test_refuses_tiny_and_oversized_bytes():
    with pytest.raises(ImageError, match="at least 16"):
        decode_rgb(encode(rgb_image(8, 8), "PNG"), LIMITS)
    with pytest.raises(ImageError, match="bytes; the limit"):
        decode_rgb(b"\xff" * 100, Limits(50, 10**6, 1))


def test_error_names_the_field():
    with pytest.raises(ImageError) as info:
        decode_rgb(b"junk", LIMITS, field="fields[3].data")
    assert info.value.field == "fields[3].data"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_fuzz_arbitrary_bytes_only_raise_image_error(data):
    with contextlib.suppress(ImageError):
        assert decode_rgb(data, LIMITS).mode == "RGB"


@settings(max_examples=100, deadline=None)
@given(cut=st.integers(0, 2000), flip=st.integers(0, 255), at=st.integers(0, 1999))
def test_fuzz_damaged_png_only_raises_image_error(cut, flip, at):
    png = encode(rgb_image(40, 40), "PNG")
    data = bytearray(png[: max(1, len(png) - cut)])
    if at < len(data):
        data[at] ^= flip
    try:
        out = decode_rgb(bytes(data), LIMITS)
        assert out.mode == "RGB"
    except ImageError:
        pass


@given(w=st.integers(16, 900), h=st.integers(16, 900))
def test_letterbox_round_trips_boxes(w, h):
    image = Image.new("RGB", (w, h))
    framed, frame = letterbox(image, 320)
    assert framed.shape == (320, 320, 3)
    boxes = np.array([[0, 0, w, h], [w * 0.25, h * 0.5, w * 0.5, h * 0.75]], np.float32)
    back = frame.to_original(frame.to_input(boxes))
    np.testing.assert_allclose(back, boxes, atol=1e-3)


def test_square_crop_stays_inside_and_has_the_model_size():
    image = rgb_image(200, 100)
    crop = square_crop(image, np.array([180, 80, 199, 99]), 96)
    assert crop.shape == (96, 96, 3)
