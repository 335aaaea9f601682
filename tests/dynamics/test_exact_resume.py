"""The registry's test kit on every model kind we have: a session resumed from what Redis keeps
before every step (64+ steps, past the context window, walking away and back) gives bitwise the
frames of its warm twin (``worldserve.dynamics.testkit.check_exact_resume``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldserve.common.config import DEFAULT_MODELS, TRANSFORMER_MODEL, Config
from worldserve.dynamics.registry import load_model
from worldserve.dynamics.testkit import away_and_back, check_exact_resume
from worldserve.worlds import Game, parse_caption

from .toy_model import ToyModel


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: on a loaded 2-core box two threads spin against each other (a 10x
    slower run); warm and resumed sessions run alike either way."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shipped():
    # the served models and the transformer (served in tests only): shipped weights, float32 on CPU
    config = Config.load({"models": [*DEFAULT_MODELS, TRANSFORMER_MODEL]}, env={})
    return {m.name: load_model(m, config, "cpu") for m in config.models}


def first_frame(seed: int, size: int = 64) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


def test_the_toy_model_resumes_exactly():
    model = ToyModel(context_frames=4)
    report = check_exact_resume(model, first_frame(1, 16), away_and_back(model.info.action_space, 64), seed=5)
    assert report.differing == [] and report.frames_changed == 64
    assert report.resume_bytes == 0  # its window is its whole state
    assert not model.live  # every state the kit made was released


@pytest.mark.parametrize("name", ["platformer", "platformer-fast"])  # both served tiers are canvases
def test_the_canvas_model_resumes_exactly_after_walking_back(shipped, name):
    model = shipped[name]
    c = model.config
    steps = 72  # 36 right, 36 left: past its 32-frame window and back
    actions = away_and_back(model.info.action_space, steps)
    events = [""] * 20 + ["night falls"] * 30 + [""] * 22  # the event in force is part of what resumes
    # a level's first frame (a served session starts from one; on noise the narrow fast tier barely scrolls)
    level = torch.from_numpy(
        Game(parse_caption("a red door on the left, a blue box on the right, grass, day"), 2).reset()
    )
    report = check_exact_resume(model, level, actions, seed=9, events=events)
    assert report.differing == [], report
    assert report.frames_changed >= steps - 2
    # it did walk away and back: the view left the first frame's place and returned to it more
    # than a context window later (so the canvas, not the window, had to remember it)
    cams = [round(float(z[3 * c.frame_height * c.frame_width])) for z in report.latents]
    far = max(range(len(cams)), key=lambda i: cams[i])
    assert cams[far] - cams[0] >= c.frame_width, cams
    back = next(i for i in range(far, len(cams)) if cams[i] - cams[0] < c.frame_width // 2)
    assert back - max(i for i in range(far) if cams[i] - cams[0] < c.frame_width // 2) > c.context_frames, cams
    # bounded: at most two canvas snapshots in a window
    assert 0 < report.resume_bytes <= 2 * (3 * c.frame_height * c.canvas_width + c.canvas_width) + 2048


def test_the_transformer_resumes_exactly(shipped):
    model = shipped["platformer-transformer"]
    report = check_exact_resume(model, first_frame(3), away_and_back(model.info.action_space, 64), seed=11)
    assert report.differing == [], report
    assert report.frames_changed == 64
    # bounded: one KV page per frame of the window (zstd takes a little off: float32 keys and
    # values are close to noise to a compressor)
    page = model.page_nbytes
    frames = model.info.context_frames - 1
    assert frames * page // 2 <= report.resume_bytes <= frames * (page + 1024)


class Forgetful:
    """A shipped model whose resume data is lost (what the engine had before models declared it)."""

    def __init__(self, model):
        self._m = model

    def __getattr__(self, name):
        return getattr(self._m, name)

    def resume_data(self, state):
        return None


def test_the_check_fails_models_that_cannot_resume_exactly(shipped):
    fast = shipped["platformer-transformer"]
    report = check_exact_resume(Forgetful(fast), first_frame(3), away_and_back(fast.info.action_space, 6), seed=11)
    assert report.differing, "re-prefilling the latent window is not bitwise the streamed KV cache"
    canvas = shipped["platformer"]
    report = check_exact_resume(Forgetful(canvas), first_frame(2), away_and_back(canvas.info.action_space, 72), seed=9)
    # the last frames alone resume it until the walk comes back to what only its canvas remembered
    assert report.differing and report.differing[0] > canvas.config.context_frames, report


def test_resume_data_that_does_not_fit_is_refused_or_ignored(shipped):
    fast, canvas = shipped["platformer-transformer"], shipped["platformer"]
    z = fast.encode(first_frame(3)[None])
    a = fast.action_vector(["right"])[None]
    warm = fast.prefill(z, fast.null_action()[None], 0)
    zs = torch.cat([z, fast.step([warm], a, seeds=[1], steps=[1])])
    page = fast.resume_data(warm)["kv"]
    acts = torch.cat([fast.null_action()[None], a])
    with pytest.raises(ValueError, match="must match"):
        fast.prefill(zs, acts, 0, resume=[None])
    # another dtype's page (a bfloat16 replica's) is not this model's: the window is recomputed instead
    st = fast.prefill(zs, acts, 0, resume=[None, {"kv": page.to(torch.bfloat16)}])
    assert fast.state_step(st) == 1
    for s in (warm, st):
        fast.release_state(s)
    lat = canvas.encode(first_frame(2)[None])
    with pytest.raises(ValueError, match="does not fit"):
        canvas.prefill(
            lat, canvas.null_action()[None], 0, resume=[{"canvas": torch.zeros(3, 8, 8), "valid": torch.zeros(8)}]
        )
