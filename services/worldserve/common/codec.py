"""Frames and tensors on the wire and in Redis. Never pickle.

Tensors: a fixed header (magic, dtype code, ndim, shape as uint32) then raw little-endian bytes.
Frames: PNG / JPEG / raw RGB8, decoded with a size limit.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np
from PIL import Image

from worldserve.common.errors import InvalidArgument

if TYPE_CHECKING:  # protobuf is imported only where a message is built: the engine runs without it
    from worldserve.v1 import common_pb2

_MAGIC = b"WST1"
_DTYPES: dict[int, np.dtype] = {0: np.dtype("<f4"), 1: np.dtype("<f2"), 2: np.dtype("uint8"), 3: np.dtype("<i8")}
_CODES = {v: k for k, v in _DTYPES.items()}

# worldserve.v1.FrameFormat values (tests/common checks they match the generated enum)
PNG = 1  # FRAME_FORMAT_PNG
JPEG = 2  # FRAME_FORMAT_JPEG
RAW = 3  # FRAME_FORMAT_RAW_RGB8


def pack_array(a: np.ndarray) -> bytes:
    """Header (magic, dtype, ndim, shape) + raw bytes."""
    a = np.ascontiguousarray(a)
    dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
    code = _CODES.get(np.dtype(dt))
    if code is None:
        raise ValueError(f"unsupported dtype {a.dtype}")
    header = _MAGIC + struct.pack("<BB", code, a.ndim) + struct.pack(f"<{a.ndim}I", *a.shape)
    return header + a.astype(_DTYPES[code], copy=False).tobytes()


def unpack_array(buf: bytes) -> np.ndarray:
    if buf[:4] != _MAGIC:
        raise ValueError("not a packed array (bad magic)")
    code, ndim = struct.unpack_from("<BB", buf, 4)
    if code not in _DTYPES:
        raise ValueError(f"unknown dtype code {code}")
    shape = struct.unpack_from(f"<{ndim}I", buf, 6)
    off = 6 + 4 * ndim
    dt = _DTYPES[code]
    n = int(np.prod(shape, dtype=np.int64))
    if len(buf) - off != n * dt.itemsize:
        raise ValueError(f"packed array size mismatch: header says {shape} {dt}, got {len(buf) - off} bytes")
    return np.frombuffer(buf, dtype=dt, count=n, offset=off).reshape(shape)


@dataclass(frozen=True)
class EncodedFrame:
    """An encoded frame, protocol-free (the servicers turn it into a ``worldserve.v1.Frame``)."""

    format: int
    data: bytes
    width: int
    height: int

    def to_pb(self) -> common_pb2.Frame:
        from worldserve.v1 import common_pb2

        # protoc's stubs type an enum field as the enum class or its name; the message takes the number
        fmt = cast("common_pb2.FrameFormat", self.format)
        return common_pb2.Frame(format=fmt, data=self.data, width=self.width, height=self.height)


def check_format(fmt: int) -> int:
    """The format code, PNG for 0; INVALID_ARGUMENT for an unknown one."""
    fmt = fmt or PNG
    if fmt not in (PNG, JPEG, RAW):
        raise InvalidArgument(f"unknown frame format {fmt!r}; expected PNG (1), JPEG (2) or RAW_RGB8 (3)")
    return fmt


def encode_rgb(rgb: np.ndarray, fmt: int = PNG) -> EncodedFrame:
    """(H, W, 3) uint8 -> EncodedFrame (PNG, JPEG or raw RGB8)."""
    h, w = rgb.shape[:2]
    fmt = fmt or PNG
    if fmt == RAW:
        data = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    elif fmt in (PNG, JPEG):
        bio = io.BytesIO()
        img = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB")
        if fmt == PNG:
            img.save(bio, format="PNG", compress_level=1)  # speed over size: frames are small
        else:
            img.save(bio, format="JPEG", quality=90)
        data = bio.getvalue()
    else:
        raise InvalidArgument(f"unknown frame format {fmt!r}")
    return EncodedFrame(fmt, data, w, h)


def encode_frame(rgb: np.ndarray, fmt: int = PNG) -> common_pb2.Frame:
    """(H, W, 3) uint8 -> Frame message."""
    return encode_rgb(rgb, fmt).to_pb()


_NAMES = {PNG: "PNG", JPEG: "JPEG", RAW: "RAW_RGB8"}
_SIGNATURES = {PNG: b"\x89PNG\r\n\x1a\n", JPEG: b"\xff\xd8\xff"}
MAX_UPLOAD_PIXELS = 4096 * 4096
"""Largest uploaded image, in pixels (checked from the header, before decoding)."""


def sniff_format(data: bytes) -> int | None:
    """PNG or JPEG by the bytes' signature; None for anything else (BMP, GIF, TIFF, ...)."""
    for fmt, sig in _SIGNATURES.items():
        if data.startswith(sig):
            return fmt
    return None


def decode_png(data: bytes) -> np.ndarray:
    """A PNG the cluster wrote itself (the step log) -> (H, W, 3) uint8."""
    with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
        return np.asarray(img.convert("RGB"))


def decode_frame(frame: common_pb2.Frame, *, max_bytes: int, expect_size: tuple[int, int] | None = None) -> np.ndarray:
    """An uploaded Frame -> (H, W, 3) uint8, with INVALID_ARGUMENT on anything off. Only the
    formats the API names decode (PNG, JPEG, raw RGB8; unspecified means PNG), and the declared
    format must be what the bytes are: nothing else reaches an image decoder."""
    if len(frame.data) == 0:
        raise InvalidArgument("image is empty")
    if len(frame.data) > max_bytes:
        raise InvalidArgument(f"image of {len(frame.data)} bytes exceeds the limit of {max_bytes} bytes")
    fmt = frame.format or PNG
    if fmt not in _NAMES:
        raise InvalidArgument(f"unknown image format {fmt!r}; expected PNG (1), JPEG (2) or RAW_RGB8 (3)")
    if fmt == RAW:
        w, h = frame.width, frame.height
        if w * h * 3 != len(frame.data):
            raise InvalidArgument(f"raw RGB8 image of {len(frame.data)} bytes does not match {w}x{h}x3")
        rgb = np.frombuffer(frame.data, dtype=np.uint8).reshape(h, w, 3)
    else:
        actual = sniff_format(frame.data)
        if actual != fmt:
            what = f"a {_NAMES[actual]}" if actual is not None else "neither PNG nor JPEG"
            raise InvalidArgument(f"cannot decode image: declared {_NAMES[fmt]}, but its bytes are {what}")
        try:
            with Image.open(io.BytesIO(frame.data), formats=[_NAMES[fmt]]) as img:
                if img.width * img.height > MAX_UPLOAD_PIXELS:
                    raise InvalidArgument(f"image of {img.width}x{img.height} pixels is too large")
                rgb = np.asarray(img.convert("RGB"))
        except InvalidArgument:
            raise
        except Exception as e:
            raise InvalidArgument(f"cannot decode image as {_NAMES[fmt]}: {type(e).__name__}") from None
    if expect_size is not None and (rgb.shape[1], rgb.shape[0]) != expect_size:
        raise InvalidArgument(
            f"image is {rgb.shape[1]}x{rgb.shape[0]}, but the model makes {expect_size[0]}x{expect_size[1]} frames"
        )
    return rgb
