"""The served path reaches the kernels: a Step through the engine (scheduler -> state cache ->
runner -> model -> Redis compare-and-set), with ``TRITON_INTERPRET=1`` (this folder's conftest)
and the Triton backend forced, runs the paged decode kernel for every attention call of the step,
and makes the frames the SDPA path makes.

Tolerance: decoded uint8 frames within 1 grey level, latents stored in Redis within 1e-4 (both
backends compute in float32; only the summation order differs).
"""

from __future__ import annotations

import numpy as np
import pytest

from worldserve.common.codec import PNG, decode_frame, encode_frame, unpack_array
from worldserve.common.config import Config
from worldserve.dynamics.attention import backend as A
from worldserve.dynamics.attention.backend import use_backend
from worldserve.dynamics.engine.core import Engine
from worldserve.dynamics.engine.types import StepRequest
from worldserve.dynamics.models.transformer import WorldModel, WorldModelConfig

# small: 32x32 frames (16 tokens per frame), head dim 32, a 3-frame window (slides within the test)
CONFIG = WorldModelConfig(
    frame_height=32,
    frame_width=32,
    latent_channels=4,
    ae_channels=8,
    dim=64,
    n_layers=2,
    n_heads=2,
    context_frames=3,
    sample_steps=1,
)
KEYS = [("right",), ("left", "jump"), (), ("up",)]


@pytest.fixture(scope="module")
def model():
    m = WorldModel.random(CONFIG, seed=0)
    m.configure_state_pool(32 * m.page_nbytes * CONFIG.context_frames)
    return m


async def run(model, store, backend: str, seed: int):
    engine = Engine(model, store, Config.load({}, env={}), model_name="tiny", batch_invariant=True)
    engine.start()
    rgb = np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    rec = await store.create(
        "t", model="tiny", prompt="", seed=seed, width=32, height=32, first_frame=encode_frame(rgb, PNG).data
    )
    frames = []
    try:
        with use_backend(backend):
            before = dict(A.decode_counts())
            for keys in KEYS:  # the first step prefills (a cache miss), the rest hit the cache
                out = await engine.step(StepRequest("t", rec.session_id, keys, guidance=2.0))
                frames.append(decode_frame(out.frame.to_pb(), max_bytes=1 << 20))
            after = dict(A.decode_counts())
            runtime = model.runtime  # what GetModelInfo reports under this backend setting
    finally:
        await engine.close()
    ran = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
    win = await store.window("t", rec.session_id, end_step=len(KEYS), frames=len(KEYS))
    return frames, [unpack_array(e.latent) for e in win[1:]], ran, runtime


async def test_a_served_step_runs_the_paged_decode_kernel_and_matches_sdpa(model, store):
    f_sdpa, z_sdpa, ran_sdpa, _ = await run(model, store, "sdpa", seed=5)
    f_tri, z_tri, ran_tri, runtime = await run(model, store, "triton", seed=5)
    # every decode call of the served steps went to the paged Triton kernel, none to the reference
    assert set(ran_tri) == {("triton", "flash_decode_paged")} and ran_tri[("triton", "flash_decode_paged")] > 0
    assert set(ran_sdpa) == {("sdpa", "sdpa")}
    assert (runtime.attention_backend, runtime.decode_kernel) == ("triton", "flash_decode_paged")
    assert model.last_step_attention == ("triton", "flash_decode_paged")
    for a, b in zip(z_sdpa, z_tri):
        assert np.abs(a - b).max() < 1e-4
    for a, b in zip(f_sdpa, f_tri):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert not np.array_equal(f_tri[0], f_tri[-1])
