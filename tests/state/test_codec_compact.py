"""The compact state format (worldserve.common.codec): every packed array comes back bitwise, by
whichever encoding it took; what older code wrote still reads."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from worldserve.common.codec import (
    ENC_F16,
    ENC_RAW,
    ENC_U8_255,
    frame_ref,
    needs_ref,
    pack_array,
    pack_bytes,
    unpack_array,
    unpack_bytes,
)

RNG = np.random.default_rng(7)


def encoding(buf: bytes) -> tuple[int, int]:
    """(encoding, flags) of a version-2 packed array."""
    assert buf[:4] == b"WST2"
    off = 6 + 4 * buf[5]
    return buf[off], buf[off + 1]


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def canvas_latent(frame: np.ndarray) -> np.ndarray:
    """A latent as the canvas model makes it: the frame channels first in [0, 1], then the camera
    and the sprite (integers, some negative)."""
    x = frame.transpose(2, 0, 1).reshape(-1).astype(np.float32) / np.float32(255.0)
    return np.concatenate([x, np.array([37.0, -1.0, 12.0, 3.0, 1.0], np.float32)])


def test_a_frame_latent_packs_as_u8_codes_with_its_exceptions_exactly():
    frame = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    z = canvas_latent(frame)
    buf = pack_array(z)
    assert encoding(buf)[0] == ENC_U8_255
    assert same(unpack_array(buf), z)
    assert len(buf) < z.nbytes / 3.5  # 49 KB of float32 -> about 12 KB of codes
    # against its frame (what the engine does: the served frame is beside it in Redis) it costs little
    bg = z.copy()
    bg[:100] = 0.0  # the player painted out of the background: a few codes differ from the frame
    ref = frame_ref(frame)
    packed = pack_array(bg, ref=ref)
    assert needs_ref(packed) and not needs_ref(buf)
    assert len(packed) < 1024
    assert same(unpack_array(packed, ref=ref), bg)
    with pytest.raises(ValueError, match="reference"):
        unpack_array(packed)
    with pytest.raises(ValueError, match="reference of"):
        unpack_array(packed, ref=ref[:-1])


def test_values_that_are_not_codes_stay_exact():
    z = (RNG.integers(0, 256, 4096).astype(np.float32) / np.float32(255.0)).astype(np.float32)
    z[[3, 9, 11, 17]] = [np.float32(-0.0), np.nan, np.float32(1e30), np.float32(0.5)]  # 0.5 is no k/255
    buf = pack_array(z)
    assert encoding(buf)[0] == ENC_U8_255
    assert same(unpack_array(buf), z)  # -0.0 and NaN bit patterns included


def test_float16_exact_values_pack_as_float16():
    z = RNG.standard_normal((8, 8, 8)).astype(np.float16).astype(np.float32)
    buf = pack_array(z)
    assert encoding(buf)[0] == ENC_F16
    assert same(unpack_array(buf), z)
    assert len(buf) <= z.nbytes // 2 + 64


def test_other_floats_and_dtypes_pack_raw_and_exact():
    z = RNG.standard_normal((8, 8, 8)).astype(np.float32)  # the transformer's latents: no exact shortcut
    buf = pack_array(z)
    assert encoding(buf)[0] == ENC_RAW
    assert same(unpack_array(buf), z)
    for a in (
        RNG.integers(0, 255, (3, 5), dtype=np.uint8),
        RNG.integers(-(2**40), 2**40, (7,), dtype=np.int64),
        RNG.standard_normal((4, 4)).astype(np.float16),
        np.zeros((0, 3), np.float32),
        np.float32(3.5).reshape(()),
    ):
        assert same(unpack_array(pack_array(a)), a)


def test_compressible_payloads_are_compressed():
    z = np.zeros((64, 64, 3), np.float32).reshape(-1)
    z[::7] = np.float32(0.25)  # not a k/255: raw float32, but very compressible
    buf = pack_array(z)
    enc, flags = encoding(buf)
    assert enc in (ENC_RAW, ENC_F16) and flags & 1
    assert len(buf) < z.nbytes // 20
    assert same(unpack_array(buf), z)


def test_the_old_format_still_reads():
    z = RNG.standard_normal((2, 3)).astype(np.float32)
    old = b"WST1" + struct.pack("<BB", 0, 2) + struct.pack("<2I", 2, 3) + z.astype("<f4").tobytes()
    assert same(unpack_array(old), z)
    assert pack_array(z, compact=False) == old  # what older code wrote, byte for byte
    assert not needs_ref(old)
    with pytest.raises(ValueError, match="size mismatch"):
        unpack_array(old[:-1])
    with pytest.raises(ValueError, match="bad magic"):
        unpack_array(b"WST9" + old[4:])


def test_corrupt_packed_arrays_are_refused():
    buf = pack_array(canvas_latent(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)))
    with pytest.raises(ValueError):
        unpack_array(buf[:-3])


def test_opaque_bytes_round_trip_and_old_bytes_pass_through():
    from safetensors.numpy import load, save

    canvas = {"canvas": np.zeros((3, 64, 1024), np.uint8), "valid": np.zeros(1024, np.bool_)}
    canvas["canvas"][:, :, 300:400] = RNG.integers(0, 256, (3, 64, 100), dtype=np.uint8)
    raw = save(canvas)
    packed = pack_bytes(raw)
    assert len(packed) < len(raw) / 4
    assert unpack_bytes(packed) == raw
    assert unpack_bytes(raw) == raw  # written by older code: plain safetensors
    got = load(unpack_bytes(packed))
    assert all(np.array_equal(got[k], canvas[k]) for k in canvas)
    noise = RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert pack_bytes(noise) == noise  # not worth it: kept as is
    tricky = b"WSZ1" + noise  # bytes that happen to start with the magic still round-trip
    assert unpack_bytes(pack_bytes(tricky)) == tricky
    assert pack_bytes(b"") == b"" and unpack_bytes(b"") == b""
