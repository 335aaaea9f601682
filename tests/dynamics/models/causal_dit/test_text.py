"""The optional text embedding file (causal_dit/text.py): safetensors with one tensor "prompt_embeds"."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save

from worldserve.dynamics.models.causal_dit.text import MAX_TEXT_TOKENS, read_text_embedding, write_text_embedding

D = 32


def _emb(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("batched", [False, True])
def test_round_trip_any_float_dtype_returns_float32(dtype, batched):
    e = _emb(1, 7, D, dtype=dtype) if batched else _emb(7, D, dtype=dtype)
    got = read_text_embedding(write_text_embedding(e), D)
    assert got.shape == (7, D) and got.dtype == torch.float32 and got.device.type == "cpu"
    assert torch.equal(got, e.reshape(7, D).float())  # bf16/fp16 -> float32 is exact


def test_wrong_width_names_the_widths_and_the_model():
    data = write_text_embedding(_emb(5, 4096))
    with pytest.raises(ValueError, match=r"^text embedding has width 4096; model 'wan-tiny' takes 32$"):
        read_text_embedding(data, D, model="wan-tiny")
    with pytest.raises(ValueError, match=r"^text embedding has width 4096; the model takes 32$"):
        read_text_embedding(data, D)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"not safetensors at all", "not a safetensors file"),
        (b"", "not a safetensors file"),
        (save({"prompt_embeds": _emb(3, D), "negative": _emb(3, D)}), r"one tensor 'prompt_embeds'.*negative"),
        (save({"embeds": _emb(3, D)}), "one tensor 'prompt_embeds'"),
        (save({"prompt_embeds": torch.zeros(3, D, dtype=torch.int32)}), "dtype torch.int32"),
        (save({"prompt_embeds": _emb(2, 3, D)}), r"shape \(2, 3, 32\)"),
        (save({"prompt_embeds": _emb(D)}), r"shape \(32,\)"),
        (save({"prompt_embeds": _emb(MAX_TEXT_TOKENS + 1, D)}), "513 tokens"),
        (save({"prompt_embeds": _emb(0, D)}), "0 tokens"),
        (save({"prompt_embeds": torch.full((3, D), float("nan"))}), "NaN"),
        (save({"prompt_embeds": _emb(3, D).index_fill(0, torch.tensor([1]), float("inf"))}), "infinite"),
    ],
)
def test_bad_files_give_one_line(data, match):
    with pytest.raises(ValueError, match=match) as info:
        read_text_embedding(data, D)
    assert "\n" not in str(info.value)


def test_full_length_and_bytes_like_inputs():
    e = _emb(MAX_TEXT_TOKENS, D, dtype=torch.bfloat16)  # what Wan's pipelines pass: padded to 512 tokens
    data = write_text_embedding(e)
    assert read_text_embedding(memoryview(data), D).shape == (MAX_TEXT_TOKENS, D)
    assert read_text_embedding(bytearray(data), D).shape == (MAX_TEXT_TOKENS, D)
    with pytest.raises(ValueError, match="bytes"):
        read_text_embedding("prompt_embeds", D)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(L, D\)"):
        write_text_embedding(_emb(D))
