"""Frames and tensors on the wire and in Redis. Never pickle.

Tensors (:func:`pack_array`): a fixed header then the values, lossless. Version 2 (``WST2``, what
:func:`pack_array` writes): magic, the array's dtype code, ndim, shape (uint32), an encoding code,
a flags byte, then the payload. The encoding is the most compact one that gives back the array
*bitwise*, checked on every array as it is packed (else the next one is tried):

- ``u8/255`` (float32 only): ``k / 255`` for uint8 codes ``k`` (a frame in [0, 1], as the canvas
  model's latents are), with up to 1/64 of the values kept as exceptions (index, exact value);
- ``f16`` (float32 only): every value exactly a float16;
- ``raw``: the values as they are.

With flag 1 the payload is zstd-compressed (done when it makes it smaller). With flag 2 (``u8/255``
only) the first codes are XORed with a reference the caller holds anyway (the step's served
frame, channels first: a latent that *is* its frame, as the canvas model's, then costs little
beside it); the reader passes the same reference back (:func:`needs_ref` tells). The reference is
used only when it makes the payload smaller. Version 1 (``WST1``:
magic, dtype code, ndim, shape, raw bytes; written before) is still read. :func:`pack_bytes` /
:func:`unpack_bytes` do the same for opaque bytes (a model's resume data): ``WSZ1`` + zstd, and
bytes without that magic are returned as they are (written before, or not worth compressing).

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
from worldserve.common.packing import pack_bytes as pack_bytes  # re-exported
from worldserve.common.packing import unpack_bytes as unpack_bytes
from worldserve.common.packing import zstd_compress, zstd_decompress

if TYPE_CHECKING:  # protobuf is imported only where a message is built: the engine runs without it
    from worldserve.v1 import common_pb2

_MAGIC = b"WST1"  # version 1: raw values (still read)
_MAGIC2 = b"WST2"  # version 2: an exact compact encoding, maybe zstd-compressed
ENC_RAW, ENC_F16, ENC_U8_255 = 0, 1, 2
_ZSTD = 1  # flags: the payload is zstd-compressed
_REF = 2  # flags: the u8 codes are XORed with a reference (uint8, its length in the payload)
_F255 = np.float32(255.0)
_DTYPES: dict[int, np.dtype] = {0: np.dtype("<f4"), 1: np.dtype("<f2"), 2: np.dtype("uint8"), 3: np.dtype("<i8")}
_CODES = {v: k for k, v in _DTYPES.items()}

# worldserve.v1.FrameFormat values (tests/common checks they match the generated enum)
PNG = 1  # FRAME_FORMAT_PNG
JPEG = 2  # FRAME_FORMAT_JPEG
RAW = 3  # FRAME_FORMAT_RAW_RGB8


def frame_ref(rgb: np.ndarray | None) -> np.ndarray | None:
    """An (H, W, 3) uint8 frame as a reference for :func:`pack_array`: its bytes channels first."""
    if rgb is None:
        return None
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)).reshape(-1)


def pack_array(a: np.ndarray, *, compact: bool = True, ref: np.ndarray | None = None) -> bytes:
    """Header + values, lossless: version 2 (the most compact exact encoding, zstd where it
    helps); ``compact=False``: version 1 (raw bytes, what older code wrote). ``ref``: uint8 bytes
    the reader will hold too (:func:`frame_ref` of the step's frame), used when that is smaller."""
    a = np.asarray(a)
    a = a if a.flags.c_contiguous else a.copy(order="C")  # (not ascontiguousarray: it makes a 0-d array 1-d)
    dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
    code = _CODES.get(np.dtype(dt))
    if code is None:
        raise ValueError(f"unsupported dtype {a.dtype}")
    a = a.astype(_DTYPES[code], copy=False)
    shape = struct.pack("<BB", code, a.ndim) + struct.pack(f"<{a.ndim}I", *a.shape)
    if not compact:
        return _MAGIC + shape + a.tobytes()
    enc, payload = _encode_values(a)
    best, flags = payload, 0
    if len(payload) >= 64:
        z = zstd_compress(payload)
        if len(z) < len(best):
            best, flags = z, _ZSTD
    if enc == ENC_U8_255 and ref is not None:
        r = np.asarray(ref, dtype=np.uint8).reshape(-1)
        (k,) = struct.unpack_from("<I", payload, 0)
        start = 4 + 8 * k  # the codes
        if r.size <= len(payload) - start:
            codes = np.frombuffer(payload, dtype=np.uint8, offset=start).copy()
            codes[: r.size] ^= r
            xored = struct.pack("<I", r.size) + payload[:start] + codes.tobytes()
            z = zstd_compress(xored)
            if len(z) < len(best):
                best, flags = z, _ZSTD | _REF
    return _MAGIC2 + shape + struct.pack("<BB", enc, flags) + best


def needs_ref(buf: bytes) -> bool:
    """Whether a packed array was packed against a reference (its reader must pass it)."""
    if buf[:4] != _MAGIC2 or len(buf) < 6:
        return False
    ndim = buf[5]
    off = 6 + 4 * ndim
    return len(buf) > off + 1 and bool(buf[off + 1] & _REF)


def _same_bits(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Elementwise bitwise equality of two float32 arrays (-0.0 is not 0.0; a NaN equals its bits)."""
    return np.asarray(x.view(np.uint32) == y.view(np.uint32))


def _encode_values(a: np.ndarray) -> tuple[int, bytes]:
    """(encoding, payload) of ``a``'s values: the most compact encoding that is exact."""
    if a.dtype != np.float32 or a.size == 0:
        return ENC_RAW, a.tobytes()
    flat = a.reshape(-1)
    with np.errstate(invalid="ignore", over="ignore"):
        codes = np.clip(np.rint(flat * _F255), 0, 255)
        codes = np.where(np.isfinite(codes), codes, 0).astype(np.uint8)
    exact = _same_bits(codes.astype(np.float32) / _F255, flat)
    n_exc = int(flat.size - np.count_nonzero(exact))
    if n_exc <= flat.size // 64:
        idx = np.flatnonzero(~exact).astype("<u4")
        return ENC_U8_255, (
            struct.pack("<I", n_exc) + idx.tobytes() + flat[idx].astype("<f4").tobytes() + codes.tobytes()
        )
    half = flat.astype(np.float16)
    if bool(_same_bits(half.astype(np.float32), flat).all()):
        return ENC_F16, half.astype("<f2").tobytes()
    return ENC_RAW, a.tobytes()


def unpack_array(buf: bytes, ref: np.ndarray | None = None) -> np.ndarray:
    """The array of :func:`pack_array` (version 1 or 2); ``ref``: the reference it was packed
    against, if any (:func:`needs_ref`); ValueError for anything malformed."""
    magic = buf[:4]
    if magic not in (_MAGIC, _MAGIC2):
        raise ValueError("not a packed array (bad magic)")
    code, ndim = struct.unpack_from("<BB", buf, 4)
    if code not in _DTYPES:
        raise ValueError(f"unknown dtype code {code}")
    shape = struct.unpack_from(f"<{ndim}I", buf, 6)
    off = 6 + 4 * ndim
    dt = _DTYPES[code]
    n = int(np.prod(shape, dtype=np.int64))
    if magic == _MAGIC:
        if len(buf) - off != n * dt.itemsize:
            raise ValueError(f"packed array size mismatch: header says {shape} {dt}, got {len(buf) - off} bytes")
        return np.frombuffer(buf, dtype=dt, count=n, offset=off).reshape(shape)
    enc, flags = struct.unpack_from("<BB", buf, off)
    payload: bytes | memoryview = memoryview(buf)[off + 2 :]
    if flags & _ZSTD:
        payload = zstd_decompress(payload, "packed array")
    ref_n = 0
    if flags & _REF:
        if ref is None:
            raise ValueError("packed array: packed against a reference (the step's frame), none given")
        (ref_n,) = struct.unpack_from("<I", payload, 0)
        payload = memoryview(payload)[4:]
        if np.asarray(ref).size != ref_n:
            raise ValueError(f"packed array: packed against a reference of {ref_n} bytes, got {np.asarray(ref).size}")
    if enc == ENC_RAW:
        if len(payload) != n * dt.itemsize:
            raise ValueError(f"packed array size mismatch: header says {shape} {dt}, got {len(payload)} bytes")
        return np.frombuffer(payload, dtype=dt, count=n).reshape(shape)
    if dt != np.float32:
        raise ValueError(f"packed array: encoding {enc} is for float32, the header says {dt}")
    if enc == ENC_F16:
        if len(payload) != 2 * n:
            raise ValueError(f"packed array size mismatch: header says {shape} float16, got {len(payload)} bytes")
        return np.frombuffer(payload, dtype="<f2", count=n).astype(np.float32).reshape(shape)
    if enc == ENC_U8_255:
        (k,) = struct.unpack_from("<I", payload, 0)
        if len(payload) != 4 + 8 * k + n or k > n:
            raise ValueError(f"packed array size mismatch: header says {shape} u8/255 with {k} exceptions")
        idx = np.frombuffer(payload, dtype="<u4", count=k, offset=4)
        vals = np.frombuffer(payload, dtype="<f4", count=k, offset=4 + 4 * k)
        codes = np.frombuffer(payload, dtype=np.uint8, count=n, offset=4 + 8 * k)
        if ref_n:
            if ref_n > n:
                raise ValueError(f"packed array: a reference of {ref_n} bytes for {n} codes")
            codes = codes.copy()
            codes[:ref_n] ^= np.asarray(ref, dtype=np.uint8).reshape(-1)
        out = codes.astype(np.float32) / _F255
        if k:
            if int(idx.max()) >= n:
                raise ValueError("packed array: an exception's index is out of range")
            out[idx] = vals
        return out.reshape(shape)
    raise ValueError(f"packed array: unknown encoding {enc}")


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
