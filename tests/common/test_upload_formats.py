"""Uploads decode only the formats the API names (PNG, JPEG, raw RGB8), and only as declared:
no other image decoder ever sees a client's bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from worldserve.common import codec
from worldserve.common.errors import InvalidArgument
from worldserve.v1 import common_pb2

RGB = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)


def _encode(fmt: str) -> bytes:
    b = io.BytesIO()
    Image.fromarray(RGB).save(b, format=fmt)
    return b.getvalue()


def _decode(fmt: int, data: bytes, **kw) -> np.ndarray:
    return codec.decode_frame(common_pb2.Frame(format=fmt, data=data, **kw), max_bytes=1 << 22)


@pytest.mark.parametrize("other", ["BMP", "GIF", "TIFF", "PPM", "ICO", "WEBP"])
@pytest.mark.parametrize("declared", [0, codec.PNG, codec.JPEG])
def test_other_image_formats_are_refused_whatever_is_declared(other, declared):
    data = _encode(other)
    with Image.open(io.BytesIO(data)) as im:  # Pillow itself would decode them all
        assert im.size == (64, 64)
    name = "JPEG" if declared == codec.JPEG else "PNG"
    with pytest.raises(InvalidArgument, match=f"^cannot decode image: declared {name}, but its bytes are neither"):
        _decode(declared, data)


def test_the_declared_format_must_be_what_the_bytes_are():
    with pytest.raises(InvalidArgument, match="^cannot decode image: declared JPEG, but its bytes are a PNG$"):
        _decode(codec.JPEG, _encode("PNG"))
    with pytest.raises(InvalidArgument, match="^cannot decode image: declared PNG, but its bytes are a JPEG$"):
        _decode(codec.PNG, _encode("JPEG"))
    for fmt in (99, 4, -1):
        with pytest.raises(InvalidArgument, match=f"^unknown image format {fmt}; expected PNG"):
            _decode(fmt, _encode("PNG"))
    # a PNG signature in front of another format's bytes reaches only the PNG decoder
    with pytest.raises(InvalidArgument, match="^cannot decode image as PNG: "):
        _decode(codec.PNG, b"\x89PNG\r\n\x1a\n" + _encode("GIF"))


def test_png_jpeg_and_raw_uploads_decode():
    assert np.array_equal(_decode(codec.PNG, _encode("PNG")), RGB)
    assert np.array_equal(_decode(0, _encode("PNG")), RGB)  # unspecified: PNG, the API's default
    jpeg = _decode(codec.JPEG, _encode("JPEG"))
    assert jpeg.shape == (64, 64, 3) and np.abs(jpeg.astype(int) - RGB).mean() < 64
    assert np.array_equal(_decode(codec.RAW, RGB.tobytes(), width=64, height=64), RGB)
    grey = io.BytesIO()
    Image.fromarray(RGB[..., 0]).save(grey, format="PNG")  # any PNG mode becomes RGB8
    assert _decode(codec.PNG, grey.getvalue()).shape == (64, 64, 3)


def test_sniff_format():
    assert codec.sniff_format(_encode("PNG")) == codec.PNG
    assert codec.sniff_format(_encode("JPEG")) == codec.JPEG
    assert {codec.sniff_format(_encode(f)) for f in ("BMP", "GIF", "TIFF", "PPM", "ICO")} == {None}
