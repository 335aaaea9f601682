"""A session's optional text embedding on the wire and in Redis: a precomputed prompt embedding
(the text encoder is not served here) for a model that cross-attends to text.

The format is what diffusers' Wan pipelines compute and a user saves with
``safetensors.torch.save({"prompt_embeds": embeds})``: a safetensors blob holding one tensor
named ``prompt_embeds``, float32, float16 or bfloat16, of shape ``(tokens, text_dim)`` or
``(1, tokens, text_dim)``. Parsed here without torch (the sessions service checks it at
CreateSession; the dynamics engine hands it to the model at prefill). Never pickle.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from worldserve.common.errors import InvalidArgument

TENSOR_NAME = "prompt_embeds"
MAX_TOKENS = 512  # Wan's text_len: its pipelines pad or cut a prompt to 512 tokens
_DTYPES: dict[str, np.dtype[Any]] = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}
"""safetensors dtype -> how its bytes are read (BF16: its raw bits, widened to float32 below)."""
MAX_HEADER_BYTES = 1 << 16


def decode_text_embedding(data: bytes) -> np.ndarray[Any, np.dtype[np.float32]]:
    """(tokens, text_dim) float32 of a text-embedding blob (see the module docstring);
    ``ValueError`` saying what is wrong with it."""
    if len(data) < 8:
        raise ValueError(f"text_embedding of {len(data)} bytes is not a safetensors blob")
    (n,) = struct.unpack_from("<Q", data, 0)
    if not 2 <= n <= min(MAX_HEADER_BYTES, len(data) - 8):
        raise ValueError(f"text_embedding is not a safetensors blob (header length {n})")
    try:
        header = json.loads(data[8 : 8 + n])
    except ValueError:
        raise ValueError("text_embedding is not a safetensors blob (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise ValueError("text_embedding is not a safetensors blob (its header is not a JSON object)")
    names = sorted(k for k in header if k != "__metadata__")
    if names != [TENSOR_NAME]:
        raise ValueError(f"text_embedding must hold one tensor named {TENSOR_NAME!r}, got {names[:8]}")
    t = header[TENSOR_NAME]
    dtype, shape, offsets = t.get("dtype"), t.get("shape"), t.get("data_offsets")
    if dtype not in _DTYPES:
        raise ValueError(f"text_embedding {TENSOR_NAME!r} has dtype {dtype!r}; expected F32, F16 or BF16")
    ok_shape = isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
    if not ok_shape or not (len(shape) == 2 or (len(shape) == 3 and shape[0] == 1)) or 0 in shape:
        raise ValueError(
            f"text_embedding {TENSOR_NAME!r} has shape {shape}; expected (tokens, text_dim) or (1, tokens, text_dim)"
        )
    tokens, width = shape[-2], shape[-1]
    size = tokens * width * _DTYPES[dtype].itemsize
    if not (isinstance(offsets, list) and len(offsets) == 2 and offsets[1] - offsets[0] == size):
        raise ValueError(f"text_embedding {TENSOR_NAME!r}: data_offsets {offsets} do not match shape {shape} {dtype}")
    start = 8 + n + offsets[0]
    if offsets[0] < 0 or start + size > len(data):
        raise ValueError(f"text_embedding {TENSOR_NAME!r}: data_offsets {offsets} run past the blob's end")
    raw = np.frombuffer(data, dtype=_DTYPES[dtype], count=tokens * width, offset=start)
    if dtype == "BF16":  # the high half of a float32
        out = (raw.astype(np.uint32) << 16).view(np.float32).reshape(tokens, width)
    else:
        out = raw.astype(np.float32).reshape(tokens, width)
    if not np.isfinite(out).all():
        raise ValueError(f"text_embedding {TENSOR_NAME!r} holds non-finite values")
    return out


def check_text_embedding(
    data: bytes, *, model: str, text_dim: int, max_bytes: int, max_tokens: int = MAX_TOKENS
) -> int:
    """The token count of a CreateSession's text embedding for ``model`` (``text_dim``: the width it
    takes, 0: none); INVALID_ARGUMENT for a model that takes none, a blob over ``max_bytes``, a
    malformed blob, a width other than ``text_dim`` or more than ``max_tokens`` tokens."""
    if not text_dim:
        raise InvalidArgument(f"model {model!r} takes no text embedding")
    if len(data) > max_bytes:
        raise InvalidArgument(
            f"text_embedding of {len(data)} bytes exceeds the limit of {max_bytes} (max_text_embedding_bytes)"
        )
    try:
        emb = decode_text_embedding(data)
    except ValueError as e:
        raise InvalidArgument(str(e)) from None
    if emb.shape[1] != text_dim:
        raise InvalidArgument(f"text_embedding has width {emb.shape[1]}, but model {model!r} takes text_dim={text_dim}")
    if emb.shape[0] > max_tokens:
        raise InvalidArgument(f"text_embedding has {emb.shape[0]} tokens; model {model!r} takes at most {max_tokens}")
    return int(emb.shape[0])
