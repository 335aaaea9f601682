"""The evaluation harness's parts that need no cluster: policies, PSNR, the Minari dataset it
writes (read back with minari.load_dataset), the plots. End to end: tests/e2e/test_eval.py."""

import types

import numpy as np
import pytest
from gymnasium import spaces

from worldserve.common.caption import parse_caption
from worldserve.gym.harness import (
    WorldRecord,
    default_prompts,
    game_checks,
    is_platformer,
    load_policy,
    mark_duplicates,
    plot,
    psnr,
    write_minari,
)


def fake_world(discrete=False):
    keys = ("left", "right", "up", "down", "jump", "fire")
    act = (
        spaces.Discrete(64)
        if discrete
        else spaces.Dict({"keys": spaces.MultiBinary(6), "mouse": spaces.Box(-1.0, 1.0, (2,), np.float32)})
    )
    return types.SimpleNamespace(
        keys=keys,
        mouse_axes=("mouse_x", "mouse_y"),
        discrete=discrete,
        act_space=act,
        obs_space=spaces.Box(0, 255, (8, 8, 3), np.uint8),
        model_name="toy",
    )


def record(i, steps, world, error=""):
    rng = np.random.default_rng(i)
    rec = WorldRecord(i, "a prompt", session_id=f"s_{i}", seed=i, error=error)
    rec.observations = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(steps + 1)]
    rec.actions = [world.act_space.sample() for _ in range(steps)]
    rec.rewards = [0.0] * steps
    rec.steps = steps
    return rec


def test_policies():
    w = fake_world()
    obs = np.zeros((8, 8, 3), np.uint8)
    a = load_policy("random", w, 0)(obs, {"t": 0}, w.act_space)
    assert w.act_space.contains(a)
    s = load_policy("scripted", w, 0)
    assert list(s(obs, {"t": 0}, w.act_space)["keys"]) == [0, 1, 0, 0, 0, 0]  # right
    assert list(s(obs, {"t": 3}, w.act_space)["keys"]) == [0, 0, 0, 0, 1, 0]  # jump
    assert load_policy("numpy:zeros", w, 0) is np.zeros
    for bad in ("nope", "numpy:", "numpy:pi", "no_such_module_xyz:f"):
        with pytest.raises((ValueError, ImportError)):
            load_policy(bad, w, 0)


def test_psnr():
    a = np.zeros((4, 4, 3), np.uint8)
    assert psnr(a, a) == 99.0
    assert abs(psnr(a, a + 255) - 0.0) < 1e-9


@pytest.mark.parametrize("discrete", [False, True])
def test_the_dataset_loads_back_with_every_step(tmp_path, discrete):
    import minari

    w = fake_world(discrete)
    recs = [record(0, 5, w), record(1, 3, w, error="policy raised"), record(2, 4, w)]
    info = write_minari(recs, w, "worldserve/test-v0", tmp_path / "minari", "random")
    assert info["episodes"] == 2  # the failed world is left out
    ds = minari.load_dataset("worldserve/test-v0")
    assert ds.total_episodes == 2 and ds.total_steps == 9
    eps = list(ds.iterate_episodes())
    assert np.array_equal(eps[0].observations, np.stack(recs[0].observations))
    assert eps[0].truncations[-1] and not eps[0].truncations[:-1].any() and not eps[0].terminations.any()
    if discrete:
        assert list(eps[1].actions) == [int(a) for a in recs[2].actions]
    else:
        assert np.array_equal(eps[1].actions["keys"], np.stack([a["keys"] for a in recs[2].actions]))
    write_minari(recs[:1], w, "worldserve/test-v0", tmp_path / "minari", "random")  # a rerun replaces it
    assert minari.load_dataset("worldserve/test-v0").total_episodes == 1


def test_plots_are_written(tmp_path):
    w = fake_world()
    recs = [record(0, 2, w), record(1, 2, w)]
    recs[0].turn_around_psnr_db, recs[0].moved_psnr_db, recs[0].control_psnr_db = 30.0, 15.0, 12.0
    paths = plot(recs, [0.05, 0.06, 0.07], tmp_path)
    for p in paths:
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_default_prompts_are_distinct_captions():
    ps = default_prompts(12, seed=3)
    assert len(set(ps)) == 12 and ps[0] == "a red door on the left, a blue box on the right, grass, day"
    for p in ps:
        parse_caption(p)  # every one is a caption the platformer's models understand
    assert default_prompts(12, seed=3) == ps and default_prompts(2) == ps[:2]


def test_a_world_that_repeats_an_earlier_one_is_a_duplicate():
    world = fake_world()
    recs = [record(i, 2, world) for i in range(4)]
    recs[2].observations[0] = recs[0].observations[0].copy()
    for r in recs:
        r.keys = [["right"], ["right"]]
    recs[3].observations[0] = recs[1].observations[0].copy()
    recs[3].keys = [["left"], ["right"]]  # the same first frame, other actions: another sample
    assert mark_duplicates(recs) == 3
    assert [r.duplicate_of for r in recs] == [None, None, 0, None]


def test_the_game_s_own_figures():
    keys = ("left", "right", "up", "down", "jump", "fire")
    assert is_platformer(keys, (64, 64, 3)) and not is_platformer(keys, (32, 32, 3))
    assert not is_platformer(("w", "a", "s", "d"), (64, 64, 3))
    g = game_checks("a red door on the left, grass, day", 5, [["right"]] * 6, k=4)
    assert g is not None
    # back where it was (only the player faces the other way): far closer to the start than the
    # view after walking away; the two branches differ
    assert g["turn_around_psnr_db"] > g["moved_psnr_db"] + 10.0
    assert g["moved_psnr_db"] < 25.0 and g["control_psnr_db"] < 25.0
    assert game_checks("a red door on the left, grass, day", 5, [["right"]] * 6, k=4) == g  # deterministic
    assert game_checks("a snowy night with a pink door", 5, [], k=4) is None  # not a caption: no ground truth
