"""Evaluation: metric functions on known inputs, and the whole evaluation on tiny random models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from worldserve.dynamics.model import WorldModel, WorldModelConfig
from worldserve.image.model import TinyTextToImage, TinyTextToImageConfig
from worldserve.train.evaluate import adherence, brightness_ratio, delta_psnr, episode, evaluate, psnr, rollout, table
from worldserve.worlds import Game, parse_caption


def test_psnr_known_values():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    assert psnr(a, a).tolist() == [100.0, 100.0]
    b = a + 1  # MSE 1 -> 20 log10(255)
    np.testing.assert_allclose(psnr(a, b), 20 * math.log10(255), rtol=1e-9)
    c = a.copy()
    c[1] = 255  # MSE 255^2 -> 0 dB
    np.testing.assert_allclose(psnr(a, c), [100.0, 0.0], atol=1e-9)
    assert psnr(a[0], b[0]).shape == ()


def test_delta_and_brightness():
    assert delta_psnr(np.array([30.0, 20.0]), np.array([10.0, 20.0])) == pytest.approx(10.0)
    assert brightness_ratio(np.full((3, 3), 50), np.full((3, 3), 100)) == pytest.approx(0.5)


def test_adherence_on_rendered_and_blank_frames():
    specs = [parse_caption("a red door on the left, a blue box on the right"), parse_caption("a pink box on the left, night")]
    frames = [Game(s, 0).reset() for s in specs]
    assert adherence(frames, specs) == (1.0, 1.0)
    blank = [np.zeros((64, 64, 3), np.uint8)] * 2
    assert adherence(blank, specs) == (0.0, 0.0)
    half = [frames[0], blank[1]]
    assert adherence(half, specs) == (pytest.approx(2 / 3), 0.5)


def test_episode_is_reproducible_and_applies_the_event():
    f1, k1, e1 = episode(0, 5)
    f2, k2, e2 = episode(0, 5)
    assert np.array_equal(f1, f2) and k1 == k2 and e1 == e2 == [""] * 5
    day = parse_caption("a red door on the left, grass, day")
    f1, _, _ = episode(0, 5, spec=day)
    f3, _, e3 = episode(0, 5, spec=day, event="night falls", event_step=2)
    assert e3 == ["", "night falls", "night falls", "night falls", "night falls"]
    assert np.array_equal(f3[1], f1[1]) and f3[2].mean() < f1[2].mean()


def test_evaluate_runs_end_to_end_on_tiny_models():
    torch.set_num_threads(1)
    dyn = WorldModel.random(WorldModelConfig(ae_channels=4, dim=32, n_layers=1, n_heads=2, context_frames=4,
                                             event_dim=16, sample_steps=1), seed=0)
    img = TinyTextToImage.random(TinyTextToImageConfig(channels=8, text_dim=16, text_layers=1, text_heads=2,
                                                       cond_dim=16, default_steps=1), seed=0)
    r = evaluate(dyn, img, sessions=2, prompts=2, horizon=8)
    for key in ("ae_psnr", "rollout_psnr_1", "rollout_psnr_8", "control_delta_psnr", "prompt_objects_found",
                "event_night_brightness_model", "event_rain_brightness_game"):
        assert math.isfinite(r[key]), key
    assert "rollout_psnr_32" not in r  # horizon 8
    assert r["deterministic_dynamics"] == 1.0 and r["deterministic_image"] == 1.0
    assert r["prompt_objects_found_game"] == 1.0
    assert r["event_night_brightness_game"] < 0.6
    assert table(r).row_count >= 8


def test_rollout_uses_the_serving_api_shapes():
    dyn = WorldModel.random(WorldModelConfig(ae_channels=4, dim=32, n_layers=1, n_heads=2, context_frames=3,
                                             sample_steps=1), seed=1)
    first = np.stack([episode(i, 1)[0][0] for i in range(2)])
    acts = np.zeros((2, 5, dyn.action_dim), np.float32)
    out = rollout(dyn, first, acts, [["night falls"] * 5, [""] * 5], seeds=[0, 1])
    assert out.shape == (2, 5, 64, 64, 3) and out.dtype == np.uint8  # 5 steps > context: the window slides
