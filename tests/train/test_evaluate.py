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
from worldserve.train.baselines import ConstantDimming, StillFrame
from worldserve.train.evaluate import (
    TARGETS,
    WEIGHTS,
    Job,
    adherence,
    brightness_ratio,
    delta_psnr,
    episode,
    evaluate,
    heldout_prompts,
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
from worldserve.worlds.splits import split_of

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

    def prefill(self, latents, actions, first_step, events=None, resume=None) -> dict:
        self.live += 1
        state = {"first": latents[-1].to(torch.uint8).numpy(), "game": None, "step": first_step + len(latents) - 1}
        last = (resume or [None])[-1]
        if last is not None:  # a resumed session: the game as it was after the window's last step
            state["first"] = last["first"].numpy()
            seed, *play = last["game"].tolist()
            game = state["game"] = Game(spec_of_first_frame(state["first"]), seed)
            (game.x, game.y, game.vy, game.facing, game.t), flags = play[:5], play[5:]
            game.crouch, game.flash, game.night, game.rain = (bool(f) for f in flags)
        return state

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

    def resume_data(self, state) -> dict:
        g = state["game"]
        values = [g.seed, g.x, g.y, g.vy, g.facing, g.t, g.crouch, g.flash, g.night, g.rain]
        return {"first": torch.from_numpy(state["first"]), "game": torch.tensor([int(v) for v in values])}

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
    "split",
    "player_within4_step1",
    "player_within4_step8",
    "player_within4_step24",
    "player_within4_per_step",
    "player_airborne_within4",
    "player_airborne_frames",
    "player_airborne_within4_game",
    "player_exact_game",
    "noop_psnr",
    "noop_hold_psnr",
    "noop_above_hold_db",
    "noop24_psnr",
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
    "memory_worlds",
    "memory_view_moved",
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
    "event_rain_streaks",
    "event_dry_streaks",
    "rain_streaks_game_rain",
    "rain_streaks_game_dry",
    "stars_night_model",
    "stars_night_game",
    "event_night_stars_ratio",
    "resume_bitwise",
    "resume_frames",
    "image_regenerated_identical",
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
            ("player_within4_step", "player_airborne_within4", "objects_in", "prompt_", "event_", "resume_bitwise")
        )
        and not k.endswith(("count", "_model", "_game", "_error", "_ratio"))
    ]
    for k in fractions:
        assert 0.0 <= r[k] <= 1.0, (k, r[k])
    for k in ("noop_psnr", "noop_hold_psnr", "memory_psnr", "ae_psnr", *[f"rollout_psnr_{s}" for s in (1, 8, 32)]):
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
    assert r["rain_streaks_game_dry"] == 0.0
    # every other no-op world rains: holding the first frame is not the game
    assert 25 < r["noop_hold_psnr"] < 60
    assert r["memory_worlds"] == r["sessions"] and r["memory_psnr_game"] > 25 and r["stars_night_game"] > 1
    assert 0.2 < r["event_night_brightness_game"] < 0.6 and 0.8 < r["event_rain_brightness_game"] < 0.9
    assert r["resume_frames"] > 0
    assert set(r["pass"]) == set(TARGETS)
    json.dumps(r)
    assert table(r).row_count >= 25


def test_the_game_itself_meets_every_target():
    m = GameModel()
    r = evaluate(m, GameImage(), sessions=6, prompts=12)
    _check_common(r)
    assert r["split"] == "test"
    assert m.live == 0
    assert all(r["pass"].values()), {k: r[k] for k, ok in r["pass"].items() if not ok}
    assert r["player_within4_per_step"] == [1.0] * 32
    assert r["player_airborne_within4"] == 1.0 and r["player_airborne_frames"] >= 50
    assert r["objects_in_place_step16"] == 1.0 and r["objects_in_place_count"] >= 2
    assert r["noop_psnr"] == 100.0 and r["rollout_psnr"] == [100.0] * 32
    assert r["rollout_above_hold_all_steps"] == 1.0
    assert r["memory_psnr"] == 100.0 and r["memory_view_moved"] == 1.0
    assert r["control_delta_psnr_8"] > 30
    assert r["event_night_brightness_error"] == 0 and r["event_rain_brightness_error"] == 0
    assert r["event_rain_streaks"] == 1.0 and r["event_dry_streaks"] == 0.0 and r["event_night_stars_ratio"] == 1.0
    assert r["prompt_objects_found"] == r["prompt_frames_all_found"] == 1.0
    # resumed after a miss at steps 0, 4, .., 20: every later frame of both worlds compared
    assert r["resume_bitwise"] == 1.0 and r["resume_frames"] == 2 * sum(24 - k for k in range(0, 24, 4))
    # one batched step call per step for every rollout together
    assert r["model_step_calls"] == 32


def _failed(r: dict) -> set[str]:
    return {k for k, ok in r["pass"].items() if not ok}


def test_a_still_frame_fails_every_target_that_needs_the_world_to_move():
    """The first frame forever: it resumes bitwise and passes nothing a world model must do."""
    r = evaluate(StillFrame(), None, sessions=4, horizon=8)
    assert "prompt_objects_found" not in r
    assert r["resume_bitwise"] == 1.0  # trivially exact ...
    assert r["noop_above_hold_db"] == 0.0  # ... and no better than holding its first frame
    assert r["memory_view_moved"] == 0.0  # its frame 16 is frame 0: the view never went anywhere
    assert r["control_delta_psnr_8"] == 0.0 and r["event_rain_streaks"] == 0.0 and r["stars_night_model"] == 0.0
    assert {
        "player_within4_step8",
        "player_airborne_within4",
        "noop_above_hold_db",
        "rollout_above_hold_all_steps",
        "control_delta_psnr_8",
        "memory_view_moved",
        "event_night_brightness_error",
        "event_rain_brightness_error",
        "event_rain_streaks",
        "event_night_stars_ratio",
    } <= _failed(r)
    assert len(r["rollout_psnr"]) == 8 and len(r["player_within4_per_step"]) == 24


def test_a_constant_dimming_per_event_passes_brightness_and_fails_the_rest():
    r = evaluate(ConstantDimming(), None, sessions=4, horizon=8)
    assert r["event_night_brightness_error"] < 0.1 and r["event_rain_brightness_error"] < 0.1
    assert r["resume_bitwise"] == 1.0
    assert {
        "noop_above_hold_db",
        "rollout_above_hold_all_steps",
        "control_delta_psnr_8",
        "memory_view_moved",
        "event_rain_streaks",
        "event_night_stars_ratio",
    } <= _failed(r)


def test_a_model_whose_resume_differs_fails_the_resume_target():
    class Forgetful(GameModel):
        """Its resumed sessions restart the game from the first frame."""

        def prefill(self, latents, actions, first_step, events=None, resume=None):
            state = super().prefill(latents, actions, first_step, events)
            if resume is not None:
                state["first"] = resume[-1]["first"].numpy()
            return state

    r = evaluate(Forgetful(), None, sessions=2, horizon=4)
    assert r["resume_bitwise"] < 0.5 and _failed(r) == {"resume_bitwise"}


def test_the_validation_split_is_other_worlds_and_unknown_splits_fail():
    a, b = heldout_world(0, 4, "test"), heldout_world(0, 4, "val")
    assert a[1] != b[1] and split_of(a[0]) == "test" and split_of(b[0]) == "val"
    assert all(split_of(s) == "val" for s in heldout_prompts(20, "val"))
    with pytest.raises(ValueError, match="'train' is not held out"):
        evaluate(GameModel(), None, sessions=2, split="train")
    with pytest.raises(ValueError, match="unknown split 'holdout'"):
        heldout_world(0, 4, "holdout")


def test_evaluate_the_shipped_weights():
    torch.set_num_threads(1)
    dyn = load_dynamics(WEIGHTS / "dynamics")
    img = load_image(WEIGHTS / "image")
    r = evaluate(dyn, img, sessions=2, prompts=3)
    _check_common(r)
    assert r["resume_bitwise"] == 1.0 and r["image_regenerated_identical"] == 1.0
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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--split", "train"], "error: split 'train' is not held out; expected one of test, val"),
        (["--split", "holdout"], "error: unknown split 'holdout'"),
        (["--model", "nope"], "error: unknown model 'nope'; the serve config serves platformer, platformer-fast"),
        (["--baseline", "x"], "error: unknown baseline 'x'; expected one of still, dimming"),
        (["--dynamics", "/nonexistent/model"], "error: "),
    ],
)
def test_the_command_answers_a_bad_value_with_one_line(args: list[str], message: str):
    import typer
    from typer.testing import CliRunner

    from worldserve.train.evaluate import command

    app = typer.Typer()
    app.command()(command)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), r.output
