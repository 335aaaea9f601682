"""`worldserve eval` end to end on a real local cluster: 8 worlds, a user's policy that fails on
one of them, the report, the plots, and the Minari dataset read back."""

from __future__ import annotations

import json

import numpy as np
import pytest


def flaky_policy(obs, info, space):
    """Walks right; raises on world 3 at its second step (the harness must carry on)."""
    if info["world"] == 3 and info["t"] == 1:
        raise RuntimeError("agent crashed")
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    return {"keys": np.array([0, 1, 0, 0, 0, 0], np.int8), "mouse": np.zeros(2, np.float32)}


@pytest.mark.e2e
def test_eval_runs_eight_worlds_and_its_dataset_loads(cluster, tmp_path, monkeypatch):
    import minari
    from typer.testing import CliRunner

    from worldserve.cli import app

    monkeypatch.setenv("WORLDSERVE_API_KEY", cluster["key_a"])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red door on the left, grass, day\n\na blue box on the right, snow, night\n")
    out = tmp_path / "eval"
    r = CliRunner().invoke(
        app,
        [
            "eval",
            "--worlds",
            "8",
            "--steps",
            "4",
            "--k",
            "2",
            "--policy",
            "test_eval:flaky_policy",
            "--prompts",
            str(prompts),
            "--out",
            str(out),
            "--dataset",
            "worldserve/e2e-v0",
            "--target",
            cluster["target"],
        ],
    )
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert report["worlds"] == 8 and report["failed_worlds"] == 1
    bad = report["world_records"][3]
    assert "agent crashed" in bad["error"] and bad["steps"] == 1
    good = [w for w in report["world_records"] if not w["error"]]
    assert all(w["steps"] == 4 for w in good)
    assert [w["prompt"] for w in report["world_records"][:3]] == [
        "a red door on the left, grass, day",
        "a blue box on the right, snow, night",
        "a red door on the left, grass, day",
    ]
    # the policy walks right in every world: worlds of one prompt see the same first frame and take
    # the same actions, so they are one world, counted once (2 distinct: one per prompt)
    assert report["distinct_worlds"] == 2 and report["duplicate_worlds"] == [2, 4, 5, 6, 7]
    for name in ("turn_around_psnr_db", "moved_psnr_db", "control_psnr_db"):
        assert report[name]["n"] == 2 and report[name]["mean"] is not None
        assert report["game"][name]["n"] == 2  # the game's own figures, beside the model's
    assert report["control_psnr_db"]["mean"] < 99.0  # left and right branches differ: the controls matter
    # the game comes back to its start (only the player faces the other way) and its view moved
    game = report["game"]
    assert game["turn_around_psnr_db"]["mean"] > game["moved_psnr_db"]["mean"] + 10.0
    said = " ".join(r.output.split())  # rich wraps lines at the terminal's width
    assert "(the game: " in said and "2 distinct, 5 duplicates not counted" in said, said
    assert report["latency_ms"]["batches"] == 4 + 4 * 2 and report["latency_ms"]["p50"] > 0
    for p in report["plots"]:
        assert open(p, "rb").read(4) == b"\x89PNG"
    ds = minari.load_dataset("worldserve/e2e-v0")  # the harness pointed MINARI_DATASETS_PATH at out/minari
    assert ds.total_episodes == 7 and ds.total_steps == 28
    ep = next(ds.iterate_episodes())
    assert ep.observations.shape == (5, 64, 64, 3) and ep.actions["keys"].shape == (4, 6)
    # no prompt set: one different caption per world, so every world is distinct
    r = CliRunner().invoke(
        app,
        [
            "eval",
            "--worlds",
            "3",
            "--steps",
            "2",
            "--k",
            "1",
            "--dataset",
            "",
            "--out",
            str(tmp_path / "e2"),
            "--target",
            cluster["target"],
        ],
    )
    assert r.exit_code == 0, r.output
    again = json.loads((tmp_path / "e2" / "report.json").read_text())
    assert again["distinct_worlds"] == 3 and not again["duplicate_worlds"]
    assert len({w["prompt"] for w in again["world_records"]}) == 3
    # the worlds and their check forks were deleted
    from worldserve.client import WorldClient

    with WorldClient(cluster["target"], cluster["key_a"]) as c:
        left = {s.session_id for s in c.list_sessions()}
    assert not left & {w["session_id"] for w in report["world_records"]}
