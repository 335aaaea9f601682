"""The fleet simulation: curve validation, analytically known cases, the served Scheduler / policy
objects in use, the live room's clock against a real LiveRoom, and the commands' one-line errors."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import numpy as np
import pytest

from loadtest.fleet.autoscale import Autoscaler
from loadtest.fleet.curve import LoadCurve, load_curve, parse_curve
from loadtest.fleet.day import Fleet, FleetParams
from loadtest.fleet.service import FleetError, ServiceModel, capacity_ratio
from loadtest.fleet.sim import Clock, Cohort, Replica, simulate_replica
from loadtest.fleet.validate import load_measured, service_from_run
from worldserve.dynamics.autoscale import DeadlineAwarePolicy
from worldserve.dynamics.engine.core import Engine
from worldserve.dynamics.engine.scheduler import Scheduler

ROOT = Path(__file__).resolve().parents[2]


# -- the load curve ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data, words",
    [
        ({"pts": []}, "expected a list"),
        ([[0, 0.5]], "1 point(s): expected at least 2"),
        ([[0, 0.5], [3, 1.5]], "points[1].fraction=1.5: expected a fraction in [0, 1]"),
        ([[0, 0.5], [25, 1.0]], "points[1].hour=25: expected an hour in [0, 24]"),
        ([[5, 0.5], [3, 1.0]], "points[1].hour=3: hours must increase"),
        ([[0, 0.5], ["noon", 1.0]], "points[1].hour='noon': expected a number"),
        ([[0, True], [3, 1.0]], "points[0].fraction=True: expected a number"),
        ([[0, 0.5], [3, float("nan")]], "expected a finite number"),
        ([[0, 0.5], [3]], "points[1]=[3]: expected [hour, fraction]"),
        ({"points": [{"hour": 0, "frac": 1}, [2, 1]]}, "expected keys hour and fraction"),
        ([[0, 0], [12, 0]], "every fraction is 0"),
    ],
)
def test_a_malformed_curve_is_one_error_naming_the_value(data, words):
    with pytest.raises(FleetError) as e:
        parse_curve(data, "c")
    assert words in str(e.value) and "\n" not in str(e.value)


def test_the_curve_is_linear_between_points_and_wraps_at_midnight(tmp_path):
    c = parse_curve({"points": [{"hour": 6, "fraction": 0.2}, {"hour": 18, "fraction": 1.0}]})
    assert c.at(12) == pytest.approx(0.6)
    assert c.at(0) == pytest.approx(0.6)  # 18 h -> 30 h (6 h next day): halfway at midnight
    assert c.at(30) == pytest.approx(0.2)
    f = tmp_path / "day.yaml"
    f.write_text("- [0, 0.1]\n- [12, 1]\n")
    assert load_curve(f).points == ((0.0, 0.1), (12.0, 1.0))
    f.write_text("- [0, 0.1\n")
    with pytest.raises(FleetError, match="not YAML"):
        load_curve(f)
    assert load_curve(None).peak == 1.0


# -- analytically known cases ---------------------------------------------------------------------
def test_a_step_shorter_than_the_period_never_misses_and_the_utilisation_is_the_offered_load():
    sm = ServiceModel("m", {1: 0.02})  # batch-invariant: b steps take b x 20 ms
    r = simulate_replica(sm, sessions=4, fps=10, duration_s=20, warmup_s=1)
    assert r.miss_ratio == 0.0 and r.misses == 0
    assert r.frames == pytest.approx(4 * 10 * 20, abs=4)
    assert r.utilisation == pytest.approx(4 * 10 * 0.02, rel=0.02)  # rho = n * fps * s = 0.8


@pytest.mark.parametrize("step_s, per_frame_misses", [(0.075, 1), (0.12, 2), (0.03, 0)])
def test_a_deterministic_overrun_skips_ceil_overrun_over_period_ticks(step_s, per_frame_misses):
    sm = ServiceModel("m", {1: step_s})
    r = simulate_replica(sm, sessions=1, fps=20, duration_s=10, warmup_s=0)
    assert r.misses == per_frame_misses * r.frames or abs(r.misses - per_frame_misses * r.frames) <= per_frame_misses
    assert r.miss_ratio == pytest.approx(per_frame_misses / (1 + per_frame_misses), abs=0.01)
    # one frame per (1 + misses) periods
    assert r.frames == pytest.approx(10 * 20 / (1 + per_frame_misses), abs=1)


def test_key_to_frame_of_one_fast_session_is_the_wait_for_the_next_tick_plus_the_step():
    sm = ServiceModel("m", {1: 0.01})
    r = simulate_replica(sm, sessions=1, fps=2, duration_s=600, warmup_s=0, pre_s=0.002, post_s=0.003)
    # an action lands uniformly within a 0.5 s tick: k2f = U(0, 0.5) + 15 ms
    assert min(r.k2f_s) >= 0.015 - 1e-9 and max(r.k2f_s) <= 0.515 + 1e-9
    assert float(np.mean(r.k2f_s)) == pytest.approx(0.25 + 0.015, abs=0.02)


def test_bulk_evaluation_gets_what_the_live_sessions_leave():
    sm = ServiceModel("m", {1: 0.001, 32: 0.032})
    alone = simulate_replica(sm, sessions=0, fps=10, duration_s=5, eval_envs=64, eval_batch=32)
    assert alone.eval_steps_per_s == pytest.approx(1000, rel=0.03)  # the model is never idle
    shared = simulate_replica(sm, sessions=20, fps=10, duration_s=5, eval_envs=64, eval_batch=32)
    assert shared.miss_ratio == 0.0
    assert shared.eval_steps_per_s == pytest.approx(1000 - 200, rel=0.05)  # 200 live steps/s go first


# -- the served objects are the ones used -------------------------------------------------------
def test_the_replica_uses_the_served_scheduler_and_batch_cut(monkeypatch):
    calls = {"take": 0, "limit": 0}
    take, limit = Scheduler.take_batch, Engine._batch_limit

    def spy_take(self, lim=None):
        calls["take"] += 1
        return take(self, lim)

    def spy_limit(self, waiting):
        calls["limit"] += 1
        return limit(self, waiting)

    monkeypatch.setattr(Scheduler, "take_batch", spy_take)
    monkeypatch.setattr(Engine, "_batch_limit", spy_limit)
    clock = Clock()
    rep = Replica(clock, ServiceModel("m", {1: 0.05}), max_batch_size=32, interactive_batch_s=0.1)
    assert type(rep.scheduler) is Scheduler
    Cohort(
        clock, rep, size=8, fps=2, phase=0.0, pre_s=0, post_s=0, deliver_s=0, rng=__import__("random").Random(0),
        record_from=0,
    )  # fmt: skip
    clock.run(3.0)
    assert calls["take"] >= 6 and calls["limit"] == calls["take"]
    # the engine's cut: 0.1 s of model time at 50 ms a step -> batches of 2 while players wait
    assert max(rep.batch_sizes) == 2


def test_the_autoscaler_calls_the_served_policy_inside_serves_delay_logic(monkeypatch):
    seen = []
    real = DeadlineAwarePolicy.__call__

    def spy(self, ctx):
        seen.append(ctx.current_num_replicas)
        return real(self, ctx)

    monkeypatch.setattr(DeadlineAwarePolicy, "__call__", spy)
    a = Autoscaler(min_replicas=1, max_replicas=4, initial_replicas=1, upscale_delay_s=10, downscale_delay_s=30)
    assert isinstance(a.policy, DeadlineAwarePolicy)
    # 50% misses: the policy asks for one more; Serve's delay holds it for 10 simulated seconds
    assert a.decide(0.0, 1, [0.5], [20.0], 1.0) == 1
    assert a.decide(5.0, 1, [0.5], [20.0], 1.0) == 1
    assert a.decide(10.0, 1, [0.5], [20.0], 1.0) == 2
    assert seen == [1, 1, 1]
    # no misses and few requests: down after 30 s, not before
    assert a.decide(11.0, 2, [0.0, 0.0], [20.0, 20.0], 1.0) == 2
    assert a.decide(40.0, 2, [0.0, 0.0], [20.0, 20.0], 1.0) == 2
    assert a.decide(41.5, 2, [0.0, 0.0], [20.0, 20.0], 1.0) == 1


# -- the live room's clock against the real LiveRoom ----------------------------------------------
@pytest.mark.parametrize("delay_s", [0.05, 0.15, 0.25])  # 0, 1, 2 ticks overrun; 50 ms from each edge
def test_the_simulated_room_clock_matches_a_real_live_room(delay_s):
    from worldserve.common.metrics import ServiceMetrics
    from worldserve.dynamics.interface import ActionSpace
    from worldserve.web.live import LiveRoom
    from worldserve.web.live_metrics import LiveMetrics
    from worldserve.web.live_protocol import CONTROLLER, RAW, RateLimit

    fps, play_s = 10.0, 1.5

    async def step(keys, mouse, event, deadline, tick):
        await asyncio.sleep(delay_s)
        return tick, np.zeros((8, 8, 3), np.uint8), ""

    async def play() -> tuple[int, int]:
        room = LiveRoom(
            session_id="s_fleet",
            model="m",
            fps=fps,
            max_controllers=1,
            space=ActionSpace(keys=("left",), mouse_axes=()),
            event_max_bytes=0,
            step=step,
            metrics=LiveMetrics(ServiceMetrics("fleettest")),
        )

        async def nothing(*a):
            return None

        room.join(CONTROLLER, RAW, nothing, nothing, nothing, RateLimit(100, 100))
        await asyncio.sleep(play_s)
        room.stop()
        return room.frames, room.misses

    frames, misses = asyncio.run(play())
    sim = simulate_replica(ServiceModel("m", {1: delay_s}), sessions=1, fps=fps, duration_s=play_s, warmup_s=0)
    real_ratio = misses / (misses + frames)
    assert abs(real_ratio - sim.miss_ratio) <= 0.1, (frames, misses, sim.frames, sim.misses)
    assert abs(frames - sim.frames) <= 2


# -- the fleet day, the GPU search ----------------------------------------------------------------
def test_more_gpus_miss_less_and_the_search_finds_the_fewest_that_hold_the_slo():
    p = FleetParams(
        sessions=400, fps=10, eval_envs=0, micro_s=2.0, step_s=600.0, decide_s=600.0, startup_s=0.0, autoscale=False
    )
    fleet = Fleet(ServiceModel("m", {1: 0.004, 32: 0.032}), LoadCurve(((0.0, 1.0), (24.0, 1.0))), p)
    few, many = fleet.day(2), fleet.day(12)
    assert few.day_miss_ratio > 0.2 and many.day_miss_ratio <= 0.01
    best, runs = fleet.search(0.01, 1, 12)
    assert best is not None and runs[best].day_miss_ratio <= 0.01
    assert best == 1 or runs.get(best - 1) is None or runs[best - 1].day_miss_ratio > 0.01
    # 400 sessions x 10 fps x 1 ms a step (batched) need at least 4000 steps/s of model: > 4 GPUs here
    assert best >= math.ceil(400 * 10 * 0.001)


def test_the_capacity_table_gives_the_ratio_or_names_the_unknown_model(tmp_path):
    f = tmp_path / "capacity.json"
    f.write_text(
        json.dumps({"platformer@64x64": {"model": "platformer", "steps_per_s_cpu": 20, "steps_per_s_h200": 900}})
    )
    ratio, entry, estimated = capacity_ratio(f, "platformer", (64, 64))
    assert ratio == 45 and not estimated
    rows = [  # loadtest.capacity's layout
        {"model": "platformer", "size": "256p", "height": 256, "width": 256, "steps_per_s_cpu": 2, "steps_per_s_h200": 400,
         "steps_per_s_h200_estimate": True},
        {"model": "platformer", "size": "64", "height": 64, "width": 64, "steps_per_s_cpu": 20, "steps_per_s_h200": 1000,
         "steps_per_s_h200_estimate": True, "redis_ops_per_step": 7.0},
        {"model": "platformer", "size": "4k", "height": 2160, "width": 3840, "cannot_run": "too big"},
    ]  # fmt: skip
    f.write_text(json.dumps({"rows": rows, "meta": {}}))
    ratio, entry, estimated = capacity_ratio(f, "platformer", None)
    assert (ratio, entry["redis_ops_per_step"], estimated) == (50, 7.0, True)
    assert capacity_ratio(f, "platformer", (256, 256))[0] == 200
    with pytest.raises(FleetError, match=r"frame 2160x3840: model 'platformer' cannot run at that size \(too big\)"):
        capacity_ratio(f, "platformer", (2160, 3840))
    with pytest.raises(FleetError, match="frame 480x832: model 'platformer' is not in"):
        capacity_ratio(f, "platformer", (480, 832))
    with pytest.raises(FleetError, match="model 'nope' is not in"):
        capacity_ratio(f, "nope", None)
    with pytest.raises(FleetError, match="not in"):
        capacity_ratio(f, "platformer", (480, 832))


def test_a_live_report_gives_the_service_times_and_a_report_without_them_is_refused(tmp_path):
    server = {
        "worldserve_web_live_frames_total": 100.0,
        "worldserve_dynamics_model_step_duration_seconds_sum[]": 4.0,
        "worldserve_dynamics_model_step_duration_seconds_count[]": 100.0,
        "worldserve_dynamics_model_step_duration_seconds_bucket[le=0.025]": 20.0,
        "worldserve_dynamics_model_step_duration_seconds_bucket[le=0.05]": 90.0,
        "worldserve_dynamics_model_step_duration_seconds_bucket[le=+Inf]": 100.0,
        "worldserve_dynamics_batch_size_sum[]": 62.5,  # Ray's sum: bucket midpoints
        "worldserve_dynamics_batch_size_count[]": 100.0,
        "worldserve_dynamics_batch_size_bucket[le=1]": 75.0,
        "worldserve_dynamics_batch_size_bucket[le=2]": 100.0,
        "worldserve_dynamics_batch_size_bucket[le=+Inf]": 100.0,
    }
    rep = {
        "players": 2,
        "per_session": 1,
        "target_fps": 2.0,
        "duration_s": 10.0,
        "deadline_miss_ratio": 0.0,
        "key_to_frame_ms": {"p50": 300.0, "p99": 520.0},
        "server": server,
    }
    f = tmp_path / "report.json"
    f.write_text(json.dumps(rep))
    sm, facts = service_from_run(load_measured(f))
    assert facts["per_step_s"] == pytest.approx(4.0 / 125.0)
    assert facts["mean_batch_size"] == pytest.approx(1.25)
    assert np.mean(sm.per_step_samples) == pytest.approx(4.0 / 125.0)
    f.write_text(json.dumps({**rep, "server": {}}))
    with pytest.raises(FleetError, match="no replica timings"):
        service_from_run(load_measured(f))
    f.write_text(json.dumps({"players": 2}))
    with pytest.raises(FleetError, match="not a live scenario report"):
        load_measured(f)


def test_the_command_exits_2_with_one_line_and_writes_nothing(tmp_path):
    from typer.testing import CliRunner

    from loadtest.fleet.cli import app

    bad = tmp_path / "curve.json"
    bad.write_text("[[0, 0.5], [3, 1.5]]")
    report, out = tmp_path / "fleet.md", tmp_path / "f.json"
    for args, words in [
        (["--curve", str(bad), "--gpu-speedup", "10"], "points[1].fraction=1.5"),
        (["--model", "nope", "--gpu-speedup", "10"], "--model 'nope': not a served model"),
        (["--frame", "3x5000", "--gpu-speedup", "10"], "--frame '3x5000'"),
        (["--capacity", str(tmp_path / "none.json")], "--capacity"),
    ]:
        r = CliRunner().invoke(app, ["run", *args, "--report", str(report), "--out", str(out)])
        assert r.exit_code == 2, r.output
        assert words in r.output and len(r.output.strip().splitlines()) == 1, r.output
    r = CliRunner().invoke(app, ["validate", "--measured", str(bad)])
    assert r.exit_code == 2 and "not a live scenario report" in r.output, r.output
    assert sorted(x.name for x in tmp_path.iterdir()) == ["curve.json"]


def test_the_served_policy_at_a_10_percent_threshold_does_not_hold_1_percent_where_all_gpus_would():
    """DeadlineAwarePolicy adds replicas only above its miss_ratio; below it Serve's queue-length
    policy takes them away again: the autoscaled fleet misses far more than 1% where the same
    GPUs serving all day miss none."""
    curve = LoadCurve(((0.0, 1.0), (24.0, 1.0)))
    sm = ServiceModel("m", {1: 0.004, 32: 0.032})
    kw = dict(
        sessions=400, fps=10, eval_envs=0, micro_s=2.0, step_s=60.0, decide_s=5.0, startup_s=0.0, miss_ratio_policy=0.1
    )
    auto = Fleet(sm, curve, FleetParams(**kw)).day(40)  # type: ignore[arg-type]
    fixed = Fleet(sm, curve, FleetParams(**kw, autoscale=False)).day(40)  # type: ignore[arg-type]
    assert fixed.day_miss_ratio <= 0.01
    assert auto.day_miss_ratio > 0.05
    assert min(auto.replicas) < 20  # it gave GPUs back, and misses came with that


def test_a_fleet_run_writes_its_report_and_plots_and_report_renders_them_again(tmp_path):
    from typer.testing import CliRunner

    from loadtest.fleet.cli import app

    svc = tmp_path / "service.json"
    svc.write_text(json.dumps(ServiceModel("platformer", {1: 0.5, 8: 4.0}, (64, 64)).to_json()))
    out, report = tmp_path / "fleet.json", tmp_path / "docs" / "fleet.md"
    args = ["run", "--service", str(svc), "--gpu-speedup", "500", "--sessions", "200", "--eval-envs", "0"]
    r = CliRunner().invoke(app, [*args, "--gpus", "3", "--no-autoscale", "--out", str(out), "--report", str(report)])
    assert r.exit_code == 0, r.output
    figures = json.loads(out.read_text())
    # 200 sessions x 24 fps x 1 ms a step = 4.8 GPU-seconds a second at the peak: 3 GPUs miss a lot then
    assert figures["searched"]["3"]["worst_5min_miss_ratio"] > 0.2
    assert sorted(x.name for x in (tmp_path / "docs" / "fleet").iterdir()) == [
        "key_to_frame.png",
        "miss_replicas.png",
        "redis_ops.png",
    ]
    text = report.read_text()
    assert "| 3 |" in text and "--gpu-speedup 500" in text
    again = tmp_path / "again.md"
    r = CliRunner().invoke(app, ["report", "--fleet", str(out), "--report", str(again)])
    assert r.exit_code == 0, r.output
    assert again.read_text().split("## Fleet")[1].replace("again/", "fleet/") == text.split("## Fleet")[1]
    assert (tmp_path / "again" / "miss_replicas.png").stat().st_size > 10_000
