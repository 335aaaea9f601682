"""``resume_matches``: a session resumed after a cache miss (its state rebuilt from what Redis keeps,
stepping beside other sessions than its warm twin) gives bitwise its warm twin's frames, for a
small random model of every built-in kind, and the check sees a model that does not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldserve.common.config import DEFAULT_MODELS, TRANSFORMER_MODEL, Config
from worldserve.dynamics.models.canvas.model import CanvasConfig, CanvasNet, CanvasWorldModel
from worldserve.dynamics.models.causal_dit.testing import TINY_TEXT_DIM, tiny_model
from worldserve.dynamics.models.transformer import WorldModel, WorldModelConfig
from worldserve.dynamics.registry import REGISTRY, load_model
from worldserve.train.eval_rollouts import Job, ResumeMatch, resume_matches


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: on a loaded 2-core box two threads spin against each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_transformer() -> WorldModel:
    """3 frames of context (a window of 2 kept steps), events, two sampler passes with guidance."""
    cfg = WorldModelConfig(ae_channels=4, dim=32, n_layers=2, n_heads=2, context_frames=3, sample_steps=2)
    return WorldModel.random(cfg, seed=1)


def small_canvas() -> CanvasWorldModel:
    """A small canvas model whose zero-initialised paths are random, so that its U-Net draws (a
    fresh one only copies: its frames would match whatever happened)."""
    cfg = CanvasConfig(
        channels=(8, 16, 16),
        head_dim=8,
        world_channels=2,
        time_period=8,
        event_dim=8,
        cond_dim=16,
        canvas_width=256,
        canvas_origin=96,
        context_frames=4,  # a canvas snapshot every 3 steps
    )
    torch.manual_seed(0)
    net = CanvasNet(cfg)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.05)
        net.unet.out.bias[3] = 1.0  # the change head lets the delta through
    return CanvasWorldModel(cfg, net)


MODELS = {"world_model": small_transformer, "scroll_canvas": small_canvas, "causal_dit": tiny_model}


def jobs_for(model, n: int, steps: int, seed: int = 0) -> list[Job]:
    """``n`` sessions of ``steps`` steps: random first frames, keys that change, events in force in
    the middle (when the model takes events)."""
    info = model.info
    rng = np.random.default_rng(seed)
    keys = info.action_space.keys
    events = list(info.events) if info.events_supported else []
    jobs = []
    for i in range(n):
        first = rng.integers(0, 256, (info.frame_height, info.frame_width, 3), dtype=np.uint8)
        ks = [(keys[(3 * s + i) % len(keys)],) for s in range(steps)]
        ev = [events[i % len(events)] if events and steps // 3 <= s < 2 * steps // 3 else "" for s in range(steps)]
        jobs.append(Job(first, ks, ev if events else None, seed=5 + i))
    return jobs


def test_every_built_in_kind_has_a_small_model_here():
    assert set(MODELS) <= set(REGISTRY.names())


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_a_resumed_session_is_bitwise_its_warm_twin(kind):
    model = MODELS[kind]()
    steps = 2 * model.info.context_frames + 1  # past the window: resumed from kept resume data
    kw = (
        {"text": torch.randn(5, TINY_TEXT_DIM, generator=torch.Generator().manual_seed(1))}
        if kind == "causal_dit"
        else {}
    )
    # two sessions warm in one batch; resumed each alone, within the first window and past it
    resume_at = [1, model.info.context_frames + 1]
    r = resume_matches(model, jobs_for(model, 2, steps), resume_at, **kw)
    assert r.compared == 2 * sum(steps - k for k in resume_at)
    assert r.identical == r.compared and r.differing == [] and r.exact, r


@pytest.mark.parametrize("name", ["platformer", "platformer-fast", "platformer-transformer"])
def test_the_served_models_resume_bitwise(name):
    """The shipped weights as served (both canvas tiers; the transformer, served in tests only, at
    one sampler pass): two sessions
    warm in one batch, resumed each alone. (A small random canvas hides a batch's rounding in its
    8-bit frames; the shipped one shows it: before each model stepped every session alone on CPU,
    4 of these 34 frames differed for the canvas, 9 of 34 for the transformer.)"""
    config = Config.load({"models": [*DEFAULT_MODELS, TRANSFORMER_MODEL]}, env={})
    model = load_model(config.model_spec(name), config, "cpu")
    r = resume_matches(model, jobs_for(model, 2, 12), [1, 6], guidance=None)  # the served default
    assert r.compared == 2 * (11 + 6) and r.exact, r


def test_resumed_beside_other_sessions_too():
    model = small_transformer()
    r = resume_matches(model, jobs_for(model, 4, 6, seed=3), [0, 3], resumed_batch=3)  # batches of 3, then 1
    assert r.exact and r.compared == 4 * (6 + 3)


class Wrapped:
    def __init__(self, model):
        self._m = model

    def __getattr__(self, name):
        return getattr(self._m, name)


class Forgetful(Wrapped):
    """A model whose resume data is lost: the rebuilt state is recomputed from the latents alone."""

    def resume_data(self, state):
        return None


class BatchDependent(Wrapped):
    """A model whose latents depend on the size of the batch they are stepped in: bitwise only
    while a session keeps its batch."""

    def step(self, states, actions, seeds, steps, guidance=None, events=None):
        return self._m.step(states, actions, seeds, steps, guidance, events) + 1e-2 * len(states)


def test_the_check_sees_sessions_that_do_not_resume_exactly():
    model = small_transformer()
    jobs = jobs_for(model, 2, 8)
    r = resume_matches(Forgetful(model), jobs, [4])
    assert r.compared == 2 * 4 and r.identical < r.compared and not r.exact
    assert all(k == 4 and s > 4 for _, k, s in r.differing)
    assert not resume_matches(BatchDependent(model), jobs, [2]).exact  # warm in a batch of 2, resumed alone
    assert resume_matches(BatchDependent(model), jobs, [2], resumed_batch=2).exact  # the same batch: exact


def test_bad_arguments_are_refused():
    model = small_transformer()
    jobs = jobs_for(model, 2, 4)
    with pytest.raises(ValueError, match="resume point 4"):
        resume_matches(model, jobs, [4])
    with pytest.raises(ValueError, match="same number of steps"):
        resume_matches(model, [jobs[0], jobs_for(model, 1, 3)[0]], [1])
    with pytest.raises(ValueError, match="at least one job"):
        resume_matches(model, [], [0])
    assert ResumeMatch().exact is False  # nothing compared proves nothing
