"""Evaluation: metric functions on known inputs; the whole evaluation on a perfect model (the game
itself behind the DynamicsModelProtocol interface), which must meet every target; on the shipped weights;
and through the registries by config.json's "kind"."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from worldserve.dynamics.interface import ActionSpace, DynamicsModelProtocol, ModelInfo, Runtime
from worldserve.dynamics.models.transformer import WorldModel, WorldModelConfig
from worldserve.train.evaluate import (
    TARGETS,
    WEIGHTS,
    Job,
    adherence,
    brightness_ratio,
    delta_psnr,
    episode,
    evaluate,
    heldout_world,
    load_dynamics,
    load_image,
    play,
    psnr,
    rollout,
    run,
    serve,
    table,
)
from worldserve.worlds import COLORS, GROUNDS, Game, ObjectSpec, WorldSpec, parse_caption
from worldserve.worlds.platformer import _SLOT_X, GROUND_Y, KEYS, NIGHT_SCALE, RAIN_DIM

# --------------------------------------------------------------------------------------------------
# a perfect model: the game itself behind the DynamicsModelProtocol interface (test-only)


def _lit(rgb, night: bool, rain: bool) -> np.ndarray:
    """A level colour as the game draws it (night: rounded half; rain: floored 0.85)."""
    c = np.asarray(rgb, np.float32)
    if night:
        c = (c * NIGHT_SCALE).round()
    if rain:
        c = (c * RAIN_DIM).astype(np.uint8).astype(np.float32)
    return c


def spec_of_first_frame(frame: np.ndarray) -> WorldSpec:
    """Read a caption's spec back from the game's first frame (exact; raises if it is not one)."""
    f = frame.astype(np.float32)
    best = None
    for ground, (top, _) in GROUNDS.items():
        for night in (False, True):
            for rain in (False, True):
                d = np.abs(f[GROUND_Y + 1, 20] - _lit(top, night, rain)).max()
                if best is None or d < best[0]:
                    best = (d, ground, night, rain)
    _, ground, night, rain = best
    objects = []
    for side, x in _SLOT_X.items():
        col = min(COLORS, key=lambda c: np.abs(f[GROUND_Y - 3, x + 4] - _lit(COLORS[c], night, rain)).max())
        if np.abs(f[GROUND_Y - 3, x + 4] - _lit(COLORS[col], night, rain)).max() <= 2:
            door = np.abs(f[GROUND_Y - 13, x + 4] - _lit(COLORS[col], night, rain)).max() <= 2
            objects.append(ObjectSpec(col, "door" if door else "box", side))
    spec = WorldSpec(tuple(objects), ground, night, rain)
    if not np.array_equal(Game(spec, 0).reset(), frame):
        raise ValueError("not a first frame of the game")
    return spec


class GameModel:
    """Replays the game: a state holds a Game, built at the first step from the first frame (its
    caption) and the session seed (the world's seed, as the evaluation passes it)."""

    def __init__(self):
        self.live = 0
        self.step_calls = 0

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(
            frame_width=64,
            frame_height=64,
            action_space=ActionSpace(keys=KEYS, discrete_actions=64),
            context_frames=16,
            sample_steps=1,
            default_guidance=1.0,
            events_supported=True,
            event_max_bytes=64,
        )

    @property
    def runtime(self) -> Runtime:
        return Runtime(device="cpu", dtype="float32", attention_backend="none")

    def action_vector(self, keys, mouse=None) -> torch.Tensor:
        v = torch.zeros(len(KEYS))
        for k in keys:
            v[KEYS.index(k)] = 1.0
        return v

    def null_action(self) -> torch.Tensor:
        return torch.zeros(len(KEYS))

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return frames.float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.round().clamp(0, 255).to(torch.uint8)

    def prefill(self, latents, actions, first_step, events=None) -> dict:
        self.live += 1
        return {"first": latents[-1].to(torch.uint8).numpy(), "game": None, "step": first_step + len(latents) - 1}

    def step(self, states, actions, seeds, steps, guidance=None, events=None) -> torch.Tensor:
        self.step_calls += 1
        out = []
        for i, (st, a, seed, s) in enumerate(zip(states, actions, seeds, steps)):
            assert s == st["step"] + 1 and not st.get("released")
            if st["game"] is None:
                st["game"] = Game(spec_of_first_frame(st["first"]), seed)
            keys = [k for k, v in zip(KEYS, a.tolist()) if v > 0.5]
            ev = events[i] if events is not None else ""
            out.append(torch.from_numpy(st["game"].step(keys, ev or None).astype(np.float32)))
            st["step"] = s
        return torch.stack(out)

    def resume_data(self, state) -> None:
        return None

    def state_nbytes(self, state) -> int:
        return 64 * 64 * 3

    def release_state(self, state) -> None:
        if not state.get("released"):
            state["released"] = True
            self.live -= 1

    def state_step(self, state) -> int:
        return state["step"]


class GameImage:
    """A perfect prompt -> image model: the game's first frame of the caption."""

    name = "game"
    supported_sizes = ((64, 64),)
    default_steps = 1
    default_guidance = 1.0

    def generate_batch(self, prompts, *, seeds, width, height, steps, guidance) -> np.ndarray:
        return np.stack([Game(parse_caption(p), 0).reset() for p in prompts])


# --------------------------------------------------------------------------------------------------
# metric functions


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


def test_adherence_reads_colour_kind_and_side():
    specs = [
        parse_caption("a red door on the left, a blue box on the right"),
        parse_caption("a pink box on the left, night"),
    ]
    frames = [Game(s, 0).reset() for s in specs]
    assert adherence(frames, specs) == (1.0, 1.0)
    blank = [np.zeros((64, 64, 3), np.uint8)] * 2
    assert adherence(blank, specs) == (0.0, 0.0)
    assert adherence([frames[0], blank[1]], specs) == (pytest.approx(2 / 3), 0.5)
    wrong_kind = Game(parse_caption("a red box on the left, a blue box on the right"), 0).reset()
    assert adherence([wrong_kind], specs[:1]) == (0.5, 0.0)


def test_episode_is_reproducible_and_applies_the_event():
    f1, k1, e1 = episode(0, 5)
    f2, k2, e2 = episode(0, 5)
    assert np.array_equal(f1, f2) and k1 == k2 and e1 == e2 == [""] * 5
    spec, seed, keys = heldout_world(0, 5)
    assert keys == k1 and np.array_equal(play(spec, seed, keys).frames, f1)
    day = parse_caption("a red door on the left, grass, day")
    f1, _, _ = episode(0, 5, spec=day)
    f3, _, e3 = episode(0, 5, spec=day, event="night falls", event_step=2)
    assert e3 == ["", "night falls", "night falls", "night falls", "night falls"]
    assert np.array_equal(f3[1], f1[1]) and f3[2].mean() < f1[2].mean()


def test_the_game_model_reads_first_frames_back():
    for seed in range(40):
        spec, _, _ = heldout_world(seed, 1)
        assert spec_of_first_frame(Game(spec, 7).reset()) == spec
    with pytest.raises(ValueError):
        spec_of_first_frame(np.zeros((64, 64, 3), np.uint8))


def test_serve_batches_sessions_and_releases_states():
    m = GameModel()
    assert isinstance(m, DynamicsModelProtocol)
    jobs = []
    for i, n in enumerate((5, 2, 7)):
        spec, seed, keys = heldout_world(i, n)
        jobs.append(Job(Game(spec, seed).reset(), keys, None, seed))
    out = serve(m, jobs, batch=2)
    assert [o.shape for o in out] == [(5, 64, 64, 3), (2, 64, 64, 3), (7, 64, 64, 3)]
    for i, (j, o) in enumerate(zip(jobs, out)):
        spec, seed, keys = heldout_world(i, len(j.keys))
        assert np.array_equal(o, play(spec, seed, keys).frames[1:])
    assert m.live == 0 and m.step_calls == 7 + 2  # batches of 2 (the two longest), then 1


def test_rollout_uses_the_serving_api_shapes():
    dyn = WorldModel.random(
        WorldModelConfig(ae_channels=4, dim=32, n_layers=1, n_heads=2, context_frames=3, sample_steps=1), seed=1
    )
    first = np.stack([episode(i, 1)[0][0] for i in range(2)])
    acts = np.zeros((2, 5, dyn.action_dim), np.float32)
    out = rollout(dyn, first, acts, [["night falls"] * 5, [""] * 5], seeds=[0, 1])
    assert out.shape == (2, 5, 64, 64, 3) and out.dtype == np.uint8  # 5 steps > context: the window slides


# --------------------------------------------------------------------------------------------------
# whole evaluations

KEYS_OUT = [
    "player_within4_step1",
    "player_within4_step8",
    "player_within4_step24",
    "player_within4_per_step",
    "player_airborne_within4",
    "player_airborne_frames",
    "player_airborne_within4_game",
    "player_exact_game",
    "noop24_psnr",
    "noop24_psnr_game",
    "objects_in_place_step16",
    "objects_in_place_step16_game",
    "objects_in_place_count",
    "rollout_psnr",
    "hold_first_psnr",
    "rollout_above_hold_all_steps",
    *[f"rollout_psnr_{s}" for s in (1, 2, 4, 8, 16, 24, 32)],
    *[f"hold_first_psnr_{s}" for s in (1, 2, 4, 8, 16, 24, 32)],
    "control_psnr_true_8",
    "control_psnr_shuffled_8",
    "control_delta_psnr_8",
    "control_delta_psnr_mean_1_8",
    "memory_psnr",
    "memory_psnr_game",
    "prompt_objects_found",
    "prompt_frames_all_found",
    "prompt_objects_found_game",
    "prompt_frames_all_found_game",
    "event_night_brightness_model",
    "event_night_brightness_game",
    "event_night_brightness_error",
    "event_rain_brightness_model",
    "event_rain_brightness_game",
    "event_rain_brightness_error",
    "rain_streaks_model",
    "rain_streaks_game_rain",
    "rain_streaks_game_dry",
    "stars_night_model",
    "stars_night_game",
    "deterministic_dynamics",
    "deterministic_image",
    "ae_psnr",
    "model_step_calls",
    "model_frames",
    "pass",
]


def _check_common(r: dict) -> None:
    for key in KEYS_OUT:
        assert key in r, key
    fractions = [
        k
        for k in KEYS_OUT
        if k.startswith(
            ("player_within4_step", "player_airborne_within4", "objects_in", "prompt_", "rain_streaks", "deterministic")
        )
        and not k.endswith("count")
    ]
    for k in fractions:
        assert 0.0 <= r[k] <= 1.0, (k, r[k])
    for k in ("noop24_psnr", "memory_psnr", "ae_psnr", *[f"rollout_psnr_{s}" for s in (1, 8, 32)]):
        assert 0.0 < r[k] <= 100.0, (k, r[k])
    assert len(r["rollout_psnr"]) == len(r["hold_first_psnr"]) == r["horizon"]
    assert len(r["player_within4_per_step"]) >= 24
    assert r["player_airborne_frames"] > 0
    # the detectors read the game's own frames right
    for k in (
        "player_exact_game",
        "player_airborne_within4_game",
        "objects_in_place_step16_game",
        "prompt_objects_found_game",
        "prompt_frames_all_found_game",
        "rain_streaks_game_rain",
    ):
        assert r[k] == 1.0, k
    assert r["rain_streaks_game_dry"] == 0.0 and r["noop24_psnr_game"] == 100.0
    assert r["memory_psnr_game"] > 30 and r["stars_night_game"] > 1
    assert 0.2 < r["event_night_brightness_game"] < 0.6 and 0.8 < r["event_rain_brightness_game"] < 0.9
    assert set(r["pass"]) == set(TARGETS)
    json.dumps(r)
    assert table(r).row_count >= 25


def test_the_game_itself_meets_every_target():
    m = GameModel()
    r = evaluate(m, GameImage(), sessions=6, prompts=12)
    _check_common(r)
    assert m.live == 0
    assert all(r["pass"].values()), {k: r[k] for k, ok in r["pass"].items() if not ok}
    assert r["player_within4_per_step"] == [1.0] * 32
    assert r["player_airborne_within4"] == 1.0 and r["player_airborne_frames"] >= 50
    assert r["objects_in_place_step16"] == 1.0 and r["objects_in_place_count"] >= 2
    assert r["noop24_psnr"] == 100.0 and r["rollout_psnr"] == [100.0] * 32
    assert r["rollout_above_hold_all_steps"] == 1.0
    assert r["memory_psnr"] == r["memory_psnr_game"]
    assert r["control_delta_psnr_8"] > 30
    assert r["event_night_brightness_error"] == 0 and r["event_rain_brightness_error"] == 0
    assert r["rain_streaks_model"] == 1.0 and r["stars_night_model"] == r["stars_night_game"]
    assert r["prompt_objects_found"] == r["prompt_frames_all_found"] == 1.0
    # one batched step call per step: 32 for every rollout together, 2 x 8 for the replay
    assert r["model_step_calls"] == 32 + 16


def test_a_frozen_model_fails_the_targets():
    """A model that only ever shows the first frame: tracks nothing that moves, controls nothing."""

    class Frozen(GameModel):
        def step(self, states, actions, seeds, steps, guidance=None, events=None):
            for st, s in zip(states, steps):
                st["step"] = s
            return torch.stack([torch.from_numpy(st["first"].astype(np.float32)) for st in states])

    r = evaluate(Frozen(), None, sessions=4, horizon=8)
    assert "prompt_objects_found" not in r and "deterministic_image" not in r
    assert r["noop24_psnr"] == 100.0  # no-ops on dry worlds: the first frame is right
    assert r["pass"]["control_delta_psnr_8"] is False and r["control_delta_psnr_8"] == 0.0
    assert r["pass"]["rollout_above_hold_all_steps"] is False
    assert r["player_airborne_within4"] < 0.2
    assert r["pass"]["event_night_brightness_error"] is False
    assert r["rain_streaks_model"] == 0.0
    assert len(r["rollout_psnr"]) == 8 and len(r["player_within4_per_step"]) == 24


def test_evaluate_the_shipped_weights():
    torch.set_num_threads(1)
    dyn = load_dynamics(WEIGHTS / "dynamics")
    img = load_image(WEIGHTS / "image")
    r = evaluate(dyn, img, sessions=2, prompts=3)
    _check_common(r)
    assert r["deterministic_dynamics"] == 1.0 and r["deterministic_image"] == 1.0
    assert r["sample_steps"] == dyn.info.sample_steps


def test_run_loads_models_by_their_config_kind(tmp_path: Path):
    from worldserve.dynamics.registry import REGISTRY as DYN
    from worldserve.image.core import REGISTRY as IMG

    seen = {}

    def load_game(path, *, device, dtype, spec):
        seen["dynamics"] = (path, spec.kind, spec.sample_steps)
        return GameModel()

    def load_game_image(path, *, device):
        seen["image"] = path
        return GameImage()

    for name in ("dyn", "img"):
        (tmp_path / name).mkdir()
    (tmp_path / "dyn" / "config.json").write_text(json.dumps({"kind": "test_game_oracle"}))
    (tmp_path / "img" / "config.json").write_text(json.dumps({"kind": "test_game_image"}))
    DYN.register("test_game_oracle", load_game)
    IMG.register("test_game_image", load_game_image)
    try:
        out = tmp_path / "r.json"
        r = run(tmp_path / "dyn", tmp_path / "img", sessions=2, prompts=2, horizon=4, json_out=out, sample_steps=3)
    finally:
        DYN.unregister("test_game_oracle")
        IMG.unregister("test_game_image")
    assert seen == {"dynamics": (str(tmp_path / "dyn"), "test_game_oracle", 3), "image": str(tmp_path / "img")}
    saved = json.loads(out.read_text())
    assert saved["rollout_psnr"] == [100.0] * 4 and saved["pass"] == r["pass"] and "eval_seconds" in saved
