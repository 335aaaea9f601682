"""Validation: simulate the `live` load scenario a real run played here and compare.

Inputs from the real run's report (``out/loadtest/live/report.json`` of ``python -m loadtest.run
live``): the players, fps and seconds of play, and the model replicas' own timings scraped from
the cluster's Prometheus at the end of the run (loadtest/live.py ``TIMINGS``): model seconds of a
batch (histogram) and batch sizes, which give the service time of one step and its spread; the
time a step spends in its replica (Serve's processing latency) less its queue wait and model time,
which gives the step's time outside the model (Redis round trips, frame encoding). The outcome
figures (deadline misses, key-to-frame) are NOT inputs: they are what the simulation predicts.

The simulated cluster is :func:`loadtest.fleet.sim.simulate_live_cluster` with the scenario's own
autoscaling configuration (loadtest/live.py: min 1, max 3 replicas, upscale delay 10 s, the
DeadlineAwarePolicy at a 10% miss ratio).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

from loadtest.fleet.autoscale import Autoscaler
from loadtest.fleet.service import FleetError, ServiceModel, read_json
from loadtest.fleet.sim import percentile, simulate_live_cluster

MODEL_DEPLOYMENT = "DynamicsModel-platformer"
LIVE_AUTOSCALING = dict(  # loadtest/live.py's overrides of the scaled deployment
    min_replicas=1,
    max_replicas=3,
    initial_replicas=1,
    target_ongoing_requests=32,
    upscale_delay_s=10,
    downscale_delay_s=30,
    miss_ratio=0.1,
    min_deadline_steps_per_s=1.0,
)


@dataclass
class Measured:
    path: str
    players: int
    fps: float
    duration_s: float
    miss_ratio: float
    k2f_p99_ms: float
    k2f_p50_ms: float
    replicas_peak: int
    server: dict[str, float]
    replicas_at: list[tuple[float, int]]  # the run's own samples of running model replicas


def load_measured(path: Path) -> Measured:
    d = read_json(path, "--measured")
    if not isinstance(d, dict):
        raise FleetError(f"--measured {path}: not a live scenario report (a JSON {type(d).__name__})")
    try:
        if int(d.get("per_session", 1)) != 1:
            raise FleetError(
                f"--measured {path}: per_session={d['per_session']}: only one player per session is simulated"
            )
        return Measured(
            str(path),
            int(d["players"]),
            float(d["target_fps"]),
            float(d["duration_s"]),
            float(d["deadline_miss_ratio"]),
            float(d["key_to_frame_ms"]["p99"]),
            float(d["key_to_frame_ms"]["p50"]),
            int(d.get("replicas_peak", 0)),
            {k: float(v) for k, v in d.get("server", {}).items()},
            [
                (float(x["t"]), int(x[f"dynamics/{MODEL_DEPLOYMENT}"]))
                for x in d.get("replica_samples", [])
                if x.get(f"dynamics/{MODEL_DEPLOYMENT}")
            ],
        )
    except (KeyError, TypeError, ValueError) as e:
        raise FleetError(f"--measured {path}: not a live scenario report (missing or bad {e})") from None


def _hist(server: dict[str, float], name: str, label: str = "") -> tuple[float, float, list[tuple[float, float]]]:
    """(sum, count, [(le, cumulative count)]) of a histogram the live scrape kept (labels other
    than ``le`` must contain ``label``)."""
    total = count = 0.0
    buckets: dict[float, float] = {}
    for key, v in server.items():
        base, _, lab = key.partition("[")
        lab = lab.rstrip("]")
        if not base.startswith(name) or (label and label not in lab):
            continue
        if base == name + "_sum":
            total += v
        elif base == name + "_count":
            count += v
        elif base == name + "_bucket":
            le = dict(p.split("=", 1) for p in lab.split(",") if "=" in p).get("le", "+Inf")
            b = float("inf") if le in ("+Inf", "inf") else float(le)
            buckets[b] = buckets.get(b, 0.0) + v
    return total, count, sorted(buckets.items())


def _upper_mean(buckets: list[tuple[float, float]]) -> float:
    """The mean of a whole-number histogram, each observation at its bucket's upper bound."""
    total = n = prev = 0.0
    last = 0.0
    for le, c in buckets:
        k = c - prev
        if k > 0:
            total += k * (le if le != float("inf") else 2 * last)
            n += k
        prev, last = c, (le if le != float("inf") else last)
    return total / n if n else 0.0


def service_from_run(m: Measured, seed: int = 0) -> tuple[ServiceModel, dict]:
    """The step's service time and its time outside the model, from the run's own replica timings."""
    s = m.server
    msum, mcount, mb = _hist(s, "worldserve_dynamics_model_step_duration_seconds")
    _, bcount, bb = _hist(s, "worldserve_dynamics_batch_size")
    if not (mcount > 0 and bcount > 0):
        raise FleetError(
            f"--measured {m.path}: no replica timings (worldserve_dynamics_model_step_duration_seconds): "
            "run the live scenario with this checkout's loadtest/live.py"
        )
    # Ray exports a histogram's sum from bucket midpoints: a batch of 1 (bucket le=1) counts 0.5.
    # Batch sizes are whole numbers: a bucket's upper bound is the size (exact for 1 and 2).
    mean_batch = _upper_mean(bb) or 1.0
    per_step = (msum / mcount) / mean_batch
    # per-step draws from the batch-duration histogram (uniform within a bucket) over the mean batch
    rng = random.Random(seed)
    draws: list[float] = []
    prev_le, prev_c = 0.0, 0.0
    cells = []
    for le, c in mb:
        n = c - prev_c
        hi = le if le != float("inf") else max(prev_le * 1.5, prev_le + per_step)
        if n > 0:
            cells.append((prev_le, hi, n))
        prev_le, prev_c = (le if le != float("inf") else prev_le), c
    total = sum(n for _, _, n in cells)
    for lo, hi, n in cells:
        draws += [rng.uniform(lo, hi) / mean_batch for _ in range(max(1, round(2000 * n / total)))]
    if draws:  # keep the measured mean exactly
        k = per_step / (sum(draws) / len(draws))
        draws = [x * k for x in draws]
    psum, pcount, _ = _hist(s, "serve_deployment_processing_latency_ms", f"deployment={MODEL_DEPLOYMENT}")
    qsum, qcount, _ = _hist(s, "worldserve_dynamics_queue_wait_seconds", "priority=interactive")
    in_replica = psum / pcount / 1000.0 if pcount else 0.0
    qwait = qsum / qcount if qcount else 0.0
    batch_mean = msum / mcount
    outside = max(0.0, in_replica - qwait - batch_mean)
    facts = {
        "model_batch_mean_s": batch_mean,
        "mean_batch_size": mean_batch,
        "per_step_s": per_step,
        "in_replica_mean_s": in_replica,
        "queue_wait_interactive_mean_s": qwait,
        "outside_model_s": outside,
        "batches": mcount,
    }
    sm = ServiceModel(
        "platformer",
        {1: per_step},
        source=f"replica timings of {m.path}",
        per_step_samples=draws or None,
        seed=seed,
    )
    return sm, facts


def simulate(
    m: Measured, *, hop_s: float, deliver_s: float, startup_s: float, seeds: int, follow_replicas: bool = False
) -> tuple[dict, dict]:
    """Simulated figures (pooled over ``seeds``) and the service facts used. ``follow_replicas``:
    the model replicas follow the run's own samples instead of the simulated policy."""
    if follow_replicas and not m.replicas_at:
        raise FleetError(f"--measured {m.path}: no replica samples to follow")
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    _, facts = service_from_run(m)
    misses = frames = 0
    k2f: list[float] = []
    peaks = []
    timelines = []
    for seed in range(seeds):
        sm, _ = service_from_run(m, seed)
        auto = Autoscaler(**LIVE_AUTOSCALING)  # type: ignore[arg-type]
        r = simulate_live_cluster(
            sm,
            auto,
            sessions=m.players,
            fps=m.fps,
            duration_s=m.duration_s,
            pre_s=hop_s + facts["outside_model_s"] / 2,
            post_s=hop_s + facts["outside_model_s"] / 2,
            deliver_s=deliver_s,
            startup_s=startup_s,
            seed=seed,
            replicas_at=m.replicas_at if follow_replicas else None,
        )
        misses += r.misses
        frames += r.frames
        k2f += r.k2f_s
        peaks.append(max(n for _, n in r.replicas))
        timelines.append(r.replicas)
    sim = {
        "miss_ratio": misses / max(1, misses + frames),
        "k2f_p99_ms": 1000 * percentile(k2f, 99),
        "k2f_p50_ms": 1000 * percentile(k2f, 50),
        "replicas_peak": max(peaks),
        "replicas_timeline_seed0": timelines[0],
        "seeds": seeds,
        "replicas": "the run's own samples" if follow_replicas else "DeadlineAwarePolicy (simulated)",
    }
    return sim, facts


def compare(m: Measured, sim: dict) -> list[dict]:
    rows = []
    for name, got, want in (
        ("deadline-miss ratio", sim["miss_ratio"], m.miss_ratio),
        ("key-to-frame p99 (ms)", sim["k2f_p99_ms"], m.k2f_p99_ms),
        ("key-to-frame p50 (ms)", sim["k2f_p50_ms"], m.k2f_p50_ms),
        ("replicas (peak)", float(sim["replicas_peak"]), float(m.replicas_peak)),
    ):
        rel = abs(got - want) / abs(want) if want else float("inf") if got else 0.0
        rows.append({"figure": name, "measured": want, "simulated": got, "abs_diff": got - want, "rel_error": rel})
    return rows
