"""The optional text embedding of a session's prompt: a precomputed file, since the text encoder
(Wan's UMT5-XXL) is not served here.

The file is safetensors holding one tensor ``"prompt_embeds"``: what diffusers' Wan pipelines pass
the transformer as ``encoder_hidden_states``, ``(L, text_dim)`` or ``(1, L, text_dim)`` with
``L <= 512`` (Wan's ``text_len``) in float32, bfloat16 or float16. Never pickle.
"""

from __future__ import annotations

import torch

TEXT_KEY = "prompt_embeds"
MAX_TEXT_TOKENS = 512  # Wan's text_len: its pipelines pad or cut prompts to 512 tokens
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def read_text_embedding(data: bytes, text_dim: int, model: str = "") -> torch.Tensor:
    """The ``(L, text_dim)`` float32 CPU embedding in the safetensors blob ``data``. ValueError with
    one line when it is not safetensors, holds anything but one tensor ``"prompt_embeds"`` of a
    float dtype, has the wrong shape or width (naming ``model``), more than 512 tokens, or values
    that are not finite."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"text embedding must be safetensors bytes, got {type(data).__name__}")
    try:
        tensors = load(bytes(data))
    except (SafetensorError, ValueError, OSError) as e:
        raise ValueError(f"text embedding is not a safetensors file: {_one_line(e)}") from None
    if list(tensors) != [TEXT_KEY]:
        raise ValueError(f"text embedding must hold one tensor {TEXT_KEY!r}; it holds {sorted(tensors)}")
    t = tensors[TEXT_KEY]
    if t.dtype not in DTYPES:
        raise ValueError(f"text embedding has dtype {t.dtype}; expected float32, bfloat16 or float16")
    if t.dim() == 3 and t.shape[0] == 1:
        t = t[0]  # (1, L, D) -> (L, D)
    if t.dim() != 2:
        raise ValueError(f"text embedding has shape {tuple(tensors[TEXT_KEY].shape)}; expected (L, D) or (1, L, D)")
    L, D = t.shape
    if D != text_dim:
        who = f"model {model!r}" if model else "the model"
        raise ValueError(f"text embedding has width {D}; {who} takes {text_dim}")
    if not 1 <= L <= MAX_TEXT_TOKENS:
        raise ValueError(f"text embedding has {L} tokens; expected 1 to {MAX_TEXT_TOKENS}")
    t = t.float().contiguous()  # (L, D)
    if not bool(torch.isfinite(t).all()):
        raise ValueError("text embedding has NaN or infinite values")
    return t


def write_text_embedding(embedding: torch.Tensor) -> bytes:
    """A ``(L, D)`` or ``(1, L, D)`` embedding as the safetensors bytes :func:`read_text_embedding` reads
    (its dtype kept)."""
    from safetensors.torch import save

    if not isinstance(embedding, torch.Tensor) or embedding.dim() not in (2, 3):
        raise ValueError("text embedding must be a tensor (L, D) or (1, L, D)")
    return save({TEXT_KEY: embedding.detach().cpu().contiguous()})


def _one_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:300] if s else type(e).__name__
