"""What one hot step of a shipped model costs in Redis at 64x64, packed as the engine packs it
(``worldserve.dynamics.engine.core``: the latent against its frame, the frame as PNG, the resume
data compressed), and that it all comes back bitwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldserve.common.codec import decode_png, encode_rgb, frame_ref, needs_ref, pack_array, unpack_array
from worldserve.common.config import DEFAULT_MODELS, TRANSFORMER_MODEL, Config
from worldserve.dynamics.interface import pack_resume, unpack_resume
from worldserve.dynamics.registry import load_model

BUDGET = 12 * 1024  # bytes per hot step at 64x64 (frame + what the model needs to resume)


@pytest.fixture(scope="module")
def config():
    return Config.load({"models": [*DEFAULT_MODELS, TRANSFORMER_MODEL]}, env={})  # the transformer: tests only


@pytest.fixture(scope="module")
def first_frame(config):
    from worldserve.image.core import ImageCore, load_backend

    return ImageCore(load_backend(config)).generate("a platformer level with grass and coins", seed=1)


def walk(model, rgb: np.ndarray, steps: int):
    """(latent, frame, resume data) of each step of a session walking right, as the runner makes them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        z = model.encode(torch.from_numpy(rgb.copy())[None])
        state = model.prefill(z, model.null_action()[None], 0)
        decode_step = getattr(model, "decode_step", None)
        out = []
        for n in range(1, steps + 1):
            z = model.step([state], model.action_vector(["right"], {})[None], seeds=[0], steps=[n])
            frame = (decode_step([state], z) if decode_step is not None else model.decode(z))[0]
            out.append((z[0].numpy(), frame.numpy(), model.resume_data(state)))
        model.release_state(state)
        return out
    finally:
        torch.set_num_threads(before)


def packed_sizes(log) -> tuple[list[int], list[int], list[int]]:
    zs, fs, ks = [], [], []
    for lat, rgb, res in log:
        png = encode_rgb(rgb).data
        z = pack_array(lat, ref=frame_ref(rgb))
        ref = frame_ref(decode_png(png)) if needs_ref(z) else None  # what a prefill reads back
        assert unpack_array(z, ref=ref).tobytes() == lat.tobytes()
        k = b"" if res is None else pack_resume(res)
        if res is not None:
            back = unpack_resume(k)
            assert all(torch.equal(back[name], t.cpu()) for name, t in res.items())
        zs.append(len(z))
        fs.append(len(png))
        ks.append(len(k))
    return zs, fs, ks


@pytest.mark.parametrize("name", ["platformer", "platformer-fast"])  # both served tiers
def test_a_canvas_step_fits_the_budget(config, first_frame, name):
    model = load_model(config.model_spec(name), config, "cpu")
    log = walk(model, first_frame, 2 * model.snapshot_every + 2)  # two canvas snapshots
    zs, fs, ks = packed_sizes(log)
    per_step = (sum(zs) + sum(fs) + sum(ks)) / len(log)
    assert per_step <= BUDGET, (per_step, sum(zs) / len(log), sum(fs) / len(log), sum(ks) / len(log))
    raw = log[0][0].astype(np.float32).nbytes
    assert raw > 45_000  # the float32 latent alone, as older code stored it, was far over
    assert max(zs) < 2048  # the latent beside its frame: the player's few pixels and the camera


def test_a_transformer_step_latent_and_frame_fit_the_budget(config, first_frame):
    """Its latent and frame fit; its resume data (one KV page per step, float32, kept for the
    context window) is noise to a compressor and stays about a page: a known limit (see the state
    format notes), bounded here so that it does not grow."""
    model = load_model(config.model_spec("platformer-transformer"), config, "cpu")
    log = walk(model, first_frame, 8)
    zs, fs, ks = packed_sizes(log)
    assert (sum(zs) + sum(fs)) / len(log) <= BUDGET
    assert max(ks) <= model.page_nbytes + 1024
