"""The shipped default weights: they load, stay small, respond to actions and replay deterministically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import worldserve
from worldserve.dynamics.model import WorldModel
from worldserve.image.decoder import CaptionDecoder
from worldserve.train.data import action_matrix
from worldserve.train.evaluate import episode, rollout
from worldserve.worlds import parse_caption

WEIGHTS = Path(worldserve.__file__).resolve().parent / "weights"


@pytest.fixture(scope="module")
def dyn() -> WorldModel:
    torch.set_num_threads(1)
    return WorldModel.from_pretrained(WEIGHTS / "dynamics")


@pytest.fixture(scope="module")
def img() -> CaptionDecoder:
    return CaptionDecoder.from_pretrained(WEIGHTS / "image")


@pytest.mark.parametrize("name", ["dynamics", "image"])
def test_folders_hold_config_and_safetensors_under_8mb(name):
    files = sorted(p.name for p in (WEIGHTS / name).iterdir())
    assert files == ["config.json", "model.safetensors"]
    assert (WEIGHTS / name / "model.safetensors").stat().st_size < 8 * 2**20
    assert (WEIGHTS / "MODEL_CARD.md").is_file()


def test_dynamics_config_matches_the_serving_defaults(dyn):
    c = dyn.config
    assert (c.frame_height, c.frame_width, c.dim, c.n_heads, c.n_layers, c.context_frames) == (64, 64, 128, 2, 4, 16)
    assert c.keys == ("left", "right", "up", "down", "jump", "fire") and c.mouse_axes == ("mouse_x", "mouse_y")
    assert dyn.events_supported


def test_shipped_rollout_is_deterministic_and_follows_the_actions(dyn):
    frames, _, _ = episode(0, 1, spec=parse_caption("a red door on the left, a blue box on the right, grass, day"))
    first = np.stack([frames[0], frames[0]])
    right = action_matrix([("right",)] * 6, dyn.config.keys, len(dyn.config.mouse_axes))
    left = action_matrix([("left",)] * 6, dyn.config.keys, len(dyn.config.mouse_axes))
    acts = np.stack([right, left])
    a = rollout(dyn, first, acts, None, seeds=[7, 7])
    b = rollout(dyn, first, acts, None, seeds=[7, 7])
    assert np.array_equal(a, b)
    # same start, same seed: walking right and walking left must give different worlds
    assert np.abs(a[0, -1].astype(int) - a[1, -1].astype(int)).mean() > 3


def test_shipped_image_model_draws_the_caption_and_replays(img):
    from worldserve.worlds import check_objects

    opts = dict(width=64, height=64, steps=img.default_steps, guidance=img.default_guidance)
    caps = ["a red door on the left, a blue box on the right, grass, day", "a yellow box on the left, snow, night",
            "a cyan door on the right, sand, day, rain"]
    out = img.generate_batch(caps, seeds=[1, 2, 3], **opts)
    assert np.array_equal(out, img.generate_batch(caps, seeds=[1, 2, 3], **opts))
    found = [x for cap, frame in zip(caps, out) for x in check_objects(frame, parse_caption(cap))]
    assert all(found), found
    assert out[1].mean() < 0.6 * out[0].mean()  # night
    sky = out[0][:20].reshape(-1, 3).mean(0)
    assert sky[2] > sky[0] + 40  # a blue day sky
