"""Exact replay through the public API, for every served model: a session whose state is evicted
from its replica before every step gives bitwise the frames of its warm twin (same model, prompt,
seed and actions), over 72 steps walking right then back left, past every model's context window.

The eviction is ModelServer.evict, reached from this process (connected to the cluster's Ray)
through the model's deployment handle routed by the session id, so it lands on the replica that
serves the session: it must report a state dropped before every step after the first.
"""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from worldserve.client import action

pytestmark = pytest.mark.e2e

STEPS = 72  # 36 right, 36 left: past the 32 frames of the default model's window, and back
TENANT = "tenant-a"


def rgb(frame) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(frame.data)).convert("RGB"))


@pytest.mark.parametrize("model", ["platformer", "platformer-fast"])
def test_a_session_evicted_before_every_step_replays_its_warm_twin_bitwise(cluster, client, model):
    from ray import serve

    t0 = time.monotonic()
    handle = serve.get_deployment_handle(f"DynamicsModel-{model}", app_name="dynamics")
    prompt = "a red door on the left, grass, day"
    warm = client.create_session(prompt=prompt, seed=17, model=model)
    cold = client.create_session(prompt=prompt, seed=17, model=model)
    keys = [["right"]] * (STEPS // 2) + [["left"]] * (STEPS - STEPS // 2)
    warm_frames = [rgb(r.frame) for r in client.rollout(warm.session_id, [action(k) for k in keys])]
    assert len(warm_frames) == STEPS
    evicted = 0
    for i, k in enumerate(keys):
        dropped = handle.options(session_id=cold.session_id).evict.remote(TENANT, cold.session_id).result()
        evicted += bool(dropped)
        frame = rgb(client.step(cold.session_id, k).frame)
        assert np.array_equal(frame, warm_frames[i]), f"{model}: step {i + 1} differs after a forced miss"
    assert evicted == STEPS - 1, "every step after the first found the state cached and had it evicted"
    changed = sum(not np.array_equal(a, b) for a, b in zip(warm_frames, warm_frames[1:]))
    assert changed >= STEPS - 8, "the world moved"
    print(f"\n{model}: {STEPS} steps bitwise equal after forced misses in {time.monotonic() - t0:.1f} s")
