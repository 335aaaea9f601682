"""Steps/s of one dynamics replica on this CPU: the engine's scheduler, state cache and runner in
process (``loadtest.engine_bench_sessions.bench_sessions``: exactly as a replica drives them, minus
Redis), ``sessions`` sessions stepped round after round, batched as a replica batches them."""

from __future__ import annotations

from typing import Any

import numpy as np

from loadtest.capacity.models import state_bytes, window


def measure_cpu(
    model: Any, frames: np.ndarray, *, spec: Any = None, sessions: int, budget_s: float, max_batch: int
) -> dict[str, Any]:
    from loadtest.engine_bench_sessions import bench_sessions, engine_parts
    from worldserve.common.config import Config, batch_invariant

    inv = batch_invariant(Config.load({"device": "cpu"}, env={}), "cpu", spec)
    per_session = state_bytes(model, frames)
    r = bench_sessions(
        model,
        engine_parts(),
        n=sessions,
        batch_invariant=inv,
        max_batch=max_batch,
        budget_s=budget_s,
        window=window(model, frames),
        per_session=per_session,
        mem_avail=float(8 * 1024**3),
        device="cpu",
        max_rounds=200,
    )
    if "error" in r or not r.get("fits", True):
        raise RuntimeError(f"CPU measurement failed: {r.get('error') or r.get('reason')}")
    return dict(
        steps_per_s_cpu=r["frames_per_s"],
        cpu_sessions=sessions,
        cpu_batch_invariant=inv,
        cpu_mean_batch=r["mean_batch_size"],
        cpu_p50_batch_ms=r["p50_batch_ms"],
        cpu_rounds=r["rounds"],
        cpu_first_round_s=r["first_round_s"],
        state_bytes_per_session=per_session,
    )
