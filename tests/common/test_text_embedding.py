"""A session's text embedding: the safetensors blob the SDK writes and the server reads (no torch
on either side), checked against safetensors' own writer, and the checks CreateSession makes."""

import re

import numpy as np
import pytest
import torch
from safetensors.torch import save

from worldserve.client import text_embedding
from worldserve.common.errors import InvalidArgument
from worldserve.common.text_embedding import check_text_embedding, decode_text_embedding


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batched", [False, True])
def test_reads_what_safetensors_writes(dtype, batched):
    e = torch.randn(5, 12).to(dtype)
    blob = save({"prompt_embeds": e[None] if batched else e}, metadata={"prompt": "a cave"})
    got = decode_text_embedding(blob)
    assert got.dtype == np.float32 and got.shape == (5, 12)
    assert np.array_equal(got, e.float().numpy())


def test_the_sdk_writes_what_safetensors_reads():
    from safetensors.torch import load

    a = np.random.default_rng(0).normal(size=(1, 7, 16)).astype(np.float32)
    blob = text_embedding(a)
    assert torch.equal(load(blob)["prompt_embeds"], torch.from_numpy(a[0]))
    assert np.array_equal(decode_text_embedding(blob), a[0])
    with pytest.raises(ValueError, match="expected"):
        text_embedding(np.zeros((2, 3, 4)))


def test_malformed_blobs_say_what_is_wrong():
    good = save({"prompt_embeds": torch.zeros(2, 4)})
    cases = {
        b"": "not a safetensors blob",
        b"\xff" * 16: "header length",
        save({"prompt_embeds": torch.zeros(2, 4), "x": torch.zeros(1)}): "one tensor named 'prompt_embeds'",
        save({"embeds": torch.zeros(2, 4)}): "one tensor named 'prompt_embeds'",
        save({"prompt_embeds": torch.zeros(2, 4, dtype=torch.int64)}): "dtype 'I64'",
        save({"prompt_embeds": torch.zeros(2, 2, 4)}): "expected (tokens, text_dim)",
        save({"prompt_embeds": torch.zeros(0, 4)}): "expected (tokens, text_dim)",
        save({"prompt_embeds": torch.full((2, 4), float("nan"))}): "non-finite",
        good[:-4]: "past the blob's end",
    }
    for blob, msg in cases.items():
        with pytest.raises(ValueError, match=re.escape(msg)):
            decode_text_embedding(blob)


def test_create_session_checks():
    blob = save({"prompt_embeds": torch.zeros(3, 8)})
    assert check_text_embedding(blob, model="m", text_dim=8, max_bytes=1 << 20) == 3
    with pytest.raises(InvalidArgument, match="model 'm' takes no text embedding"):
        check_text_embedding(blob, model="m", text_dim=0, max_bytes=1 << 20)
    with pytest.raises(InvalidArgument, match="width 8, but model 'm' takes text_dim=16"):
        check_text_embedding(blob, model="m", text_dim=16, max_bytes=1 << 20)
    with pytest.raises(InvalidArgument, match=f"{len(blob)} bytes exceeds the limit of 64"):
        check_text_embedding(blob, model="m", text_dim=8, max_bytes=64)
    with pytest.raises(InvalidArgument, match="3 tokens; model 'm' takes at most 2"):
        check_text_embedding(blob, model="m", text_dim=8, max_bytes=1 << 20, max_tokens=2)
    with pytest.raises(InvalidArgument, match="not a safetensors blob"):
        check_text_embedding(b"junk", model="m", text_dim=8, max_bytes=1 << 20)
