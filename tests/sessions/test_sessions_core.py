"""SessionsCore's checks of a new session's text embedding against the served model's catalog
entry (``text_dim``), before anything is created."""

import re

import numpy as np
import pytest

from worldserve.client import text_embedding
from worldserve.common.codec import PNG, encode_frame
from worldserve.common.config import Config
from worldserve.common.errors import InvalidArgument
from worldserve.sessions.core import SessionsCore

CATALOG = {
    "default": "plain",
    "models": {
        "plain": {"width": 8, "height": 8, "text_dim": 0},
        "texty": {"width": 8, "height": 8, "text_dim": 16},
    },
}


@pytest.fixture
def core(store):
    async def generate(*a):
        return encode_frame(np.zeros((8, 8, 3), np.uint8), PNG).data

    async def info():
        return {"width": 8, "height": 8}

    async def catalog():
        return CATALOG

    cfg = Config.load({"max_text_embedding_bytes": 4096}, env={})
    return SessionsCore(store, cfg, generate=generate, frame_info=info, catalog=catalog)


async def test_a_session_keeps_its_text_embedding(core, store):
    blob = text_embedding(np.ones((5, 16), np.float32))
    rec, _ = await core.create_from_prompt(
        "t", "a red door on the left, grass, day", seed=1, model="texty", text_embedding=blob
    )
    assert rec.text_tokens == 5
    assert (await store.prefill_window("t", rec.session_id, end_step=0, frames=1, text=True))[1] == blob
    frame = encode_frame(np.zeros((8, 8, 3), np.uint8), PNG)
    rec2, _ = await core.create_from_image("t", frame, seed=1, model="texty", text_embedding=blob)
    assert rec2.text_tokens == 5
    rec3, _ = await core.create_from_prompt(
        "t", "a red door on the left, grass, day", seed=1, model="texty"
    )  # optional
    assert rec3.text_tokens == 0


async def test_a_bad_text_embedding_creates_nothing(core, store):
    frame = encode_frame(np.zeros((8, 8, 3), np.uint8), PNG)
    cases = [
        ("plain", text_embedding(np.ones((5, 16))), "model 'plain' takes no text embedding"),
        ("texty", text_embedding(np.ones((5, 32))), "width 32, but model 'texty' takes text_dim=16"),
        ("texty", text_embedding(np.ones((100, 16))), "exceeds the limit of 4096 (max_text_embedding_bytes)"),
        ("texty", b"not safetensors", "not a safetensors blob"),
    ]
    for model, blob, msg in cases:
        with pytest.raises(InvalidArgument, match=re.escape(msg)):
            await core.create_from_prompt(
                "t", "a red door on the left, grass, day", seed=1, model=model, text_embedding=blob
            )
        with pytest.raises(InvalidArgument, match=re.escape(msg)):
            await core.create_from_image("t", frame, seed=1, model=model, text_embedding=blob)
    assert await store.r.zcard(store._index("t")) == 0
