"""Opaque bytes, losslessly compressed (zstd), for what the served models hand the store: free of
the error classes (and so of ray), which model packages may not import. :mod:`worldserve.common.codec`
re-exports these."""

from __future__ import annotations

_BLOB = b"WSZ1"  # opaque bytes, zstd-compressed
ZSTD_LEVEL = 3
MAX_UNPACKED_BYTES = 1 << 30
"""Most bytes a packed array or blob may decompress to (a corrupt or hostile header is refused)."""


def zstd_compress(data: bytes) -> bytes:
    import zstandard

    return bytes(zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data))


def zstd_decompress(data: bytes | memoryview, what: str) -> bytes:
    """``data`` decompressed (at most ``MAX_UNPACKED_BYTES``); ValueError naming ``what``."""
    import zstandard

    try:
        return bytes(zstandard.ZstdDecompressor().decompress(data, max_output_size=MAX_UNPACKED_BYTES))
    except zstandard.ZstdError as e:
        raise ValueError(f"{what}: its zstd payload does not decompress ({e})") from None


def pack_bytes(data: bytes) -> bytes:
    """Opaque bytes (a model's resume data), zstd-compressed behind a magic where that makes them
    smaller; else as they are (:func:`unpack_bytes` takes both)."""
    if len(data) < 64 and not data.startswith(_BLOB):
        return data
    z = _BLOB + zstd_compress(data)
    return z if len(z) < len(data) or data.startswith(_BLOB) else data


def unpack_bytes(data: bytes) -> bytes:
    """The bytes of :func:`pack_bytes`; bytes without its magic as they are (older writers)."""
    if data[:4] != _BLOB:
        return data
    return zstd_decompress(memoryview(data)[4:], "packed bytes")
