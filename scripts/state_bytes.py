"""What a session holds in Redis over its archive cycle, and what a fork costs, per shipped model:
the real engine (shipped weights, CPU, one thread) stepping a session on a real Redis with a
local-folder archive and the archiver, as a service runs them.

    python scripts/state-bytes.py [MODEL ...] [--steps 714] [--forks 5] [--json out.json]

For each model (default: every shipped one) it steps one session to ``--steps`` (the archiver
runs after every step, so each full chunk is archived as soon as it is due), and prints Redis
``MEMORY USAGE`` of the session's keys (record + log) at steps 300, 330, 700 and 714 and the most
over the whole run, the mean bytes a hot step adds (packed latent + frame + action + the model's
resume data, per step), then forks the session at 330 and 714 (``--forks`` times each: the median
time) and prints each child's bytes in Redis. The first frame is the shipped image model's.

Importable (the capacity table uses it): :func:`measure_session_bytes`.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch

POINTS = (300, 330, 700, 714)
FORK_AT = (330, 714)


def _first_frame(config: Any) -> np.ndarray:
    """The shipped image model's first frame for a platformer prompt (a real frame, not noise)."""
    from worldserve.image.core import ImageCore, load_backend

    return ImageCore(load_backend(config)).generate("a platformer level with grass and coins", seed=1)


def _actions(n: int) -> list[tuple[str, ...]]:
    """Walk right, then left, with jumps now and then: the view scrolls and comes back."""
    out: list[tuple[str, ...]] = []
    for i in range(n):
        key = "right" if (i // 120) % 2 == 0 else "left"
        out.append((key, "jump") if i % 17 == 0 else (key,))
    return out


async def _session_bytes(store: Any, tenant: str, sid: str) -> int:
    total = 0
    for key in (store._rec(tenant, sid), store._log(tenant, sid)):
        total += int(await store.r.memory_usage(key, samples=0) or 0)
    return total


async def _measure(model_name: str, steps: int, forks: int, points: tuple[int, ...]) -> dict[str, Any]:
    from worldserve.common.codec import PNG, encode_frame
    from worldserve.common.config import Config
    from worldserve.common.redis_server import EmbeddedRedis
    from worldserve.dynamics.engine.core import Engine
    from worldserve.dynamics.engine.types import StepRequest
    from worldserve.dynamics.registry import load_model
    from worldserve.state.archive import Archive
    from worldserve.state.archiver import ArchivePolicy, Archiver
    from worldserve.state.store import SessionStore

    tmp = tempfile.mkdtemp(prefix="state-bytes-")
    srv = EmbeddedRedis(os.path.join(tmp, "redis")).start()
    config = Config.load({"archive_url": f"file://{tmp}/archive"}, env={})
    kw: dict[str, Any] = {}
    if "hot_window" in inspect.signature(SessionStore.from_url).parameters:  # older code has no such bound
        kw = {"hot_window": config.hot_window_steps, "rid_keep": config.archive_rid_keep_steps}
    archive = Archive.from_url(config.archive_url)
    store = SessionStore.from_url(
        srv.url, default_ttl_s=3600, archive=archive, max_tail=config.archive_max_tail_steps, **kw
    )
    policy = ArchivePolicy(
        chunk_steps=config.archive_chunk_steps,
        hot_window=config.hot_window_steps,
        rid_keep=config.archive_rid_keep_steps,
    )
    archiver = Archiver(store, archive, policy)
    engine = Engine(load_model(config.model_spec(model_name), config, "cpu"), store, config, model_name=model_name)
    engine.start()
    out: dict[str, Any] = {"model": model_name, "steps": steps, "at": {}, "forks": {}}
    try:
        info = engine.info
        rgb = _first_frame(config)
        if rgb.shape[:2] != (info.frame_height, info.frame_width):
            rgb = np.resize(rgb, (info.frame_height, info.frame_width, 3))
        rec = await store.create(
            "t",
            model=model_name,
            prompt="p",
            seed=1,
            width=info.frame_width,
            height=info.frame_height,
            first_frame=encode_frame(rgb, PNG).data,
        )
        sid = rec.session_id
        log = store._log("t", sid)
        most, most_at = 0, 0
        added: list[int] = []  # the bytes each step wrote to its log fields
        parts = {"a": 0, "z": 0, "f": 0, "k": 0}
        t0 = time.perf_counter()
        for i, keys in enumerate(_actions(steps)):
            n = i + 1
            await engine.step(StepRequest("t", sid, keys, request_id=f"r{n}"))
            vals = await store.r.hmget(log, [f"a:{n}", f"z:{n}", f"f:{n}", f"k:{n}"])
            added.append(sum(len(v) for v in vals if v is not None))
            for k, v in zip("azfk", vals):
                parts[k] += 0 if v is None else len(v)
            await archiver.run_once()
            b = await _session_bytes(store, "t", sid)
            if b > most:
                most, most_at = b, n
            if n in points:
                out["at"][n] = b
            if n in FORK_AT and forks:
                times, child_bytes = [], []
                for _ in range(forks):
                    f0 = time.perf_counter()
                    child = await store.fork("t", sid)
                    times.append(time.perf_counter() - f0)
                    child_bytes.append(await _session_bytes(store, "t", child.session_id))
                    await store.delete("t", child.session_id)
                out["forks"][n] = {"ms": statistics.median(times) * 1e3, "child_bytes": max(child_bytes)}
        out["step_s"] = (time.perf_counter() - t0) / steps
        out["max_bytes"], out["max_at"] = most, most_at
        out["per_step_bytes"] = sum(added) / len(added)
        out["per_step_parts"] = {k: v / steps for k, v in parts.items()}
        out["window_steps"] = config.hot_window_steps
    finally:
        await engine.close()
        await store.close()
        srv.stop()
    return out


def measure_session_bytes(model: str, steps: int = 714, *, forks: int = 5, points: tuple[int, ...] = POINTS) -> dict:
    """One model's figures: ``{"model", "steps", "at": {step: bytes}, "max_bytes", "max_at",
    "per_step_bytes", "forks": {step: {"ms", "child_bytes"}}, "step_s", "window_steps"}`` (bytes:
    Redis ``MEMORY USAGE`` of the session's record and log). Starts its own Redis (and stops it)."""
    torch.set_num_threads(1)
    return asyncio.run(_measure(model, steps, forks, tuple(p for p in points if p <= steps)))


def main(argv: list[str] | None = None) -> int:
    from worldserve.common.config import DEFAULT_MODELS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", help="served model names (default: every shipped one)")
    ap.add_argument("--steps", type=int, default=714)
    ap.add_argument("--forks", type=int, default=5)
    ap.add_argument("--json", default="", help="also write the figures to this file")
    a = ap.parse_args(argv)
    names = a.models or [m.name for m in DEFAULT_MODELS]
    known = {m.name for m in DEFAULT_MODELS}
    for n in names:
        if n not in known:
            print(f"error: unknown model {n!r}; shipped: {', '.join(sorted(known))}", file=sys.stderr)
            return 2
    if a.steps < 1 or a.forks < 0:
        print(f"error: --steps {a.steps} / --forks {a.forks}: expected steps >= 1, forks >= 0", file=sys.stderr)
        return 2
    results = []
    for n in names:
        r = measure_session_bytes(n, a.steps, forks=a.forks)
        results.append(r)
        at = "  ".join(f"@{s}: {b / 1024:.0f} KiB" for s, b in r["at"].items())
        print(f"{n}: {r['per_step_bytes'] / 1024:.1f} KiB per hot step; session {at}; ", end="")
        print(f"max {r['max_bytes'] / 1024:.0f} KiB @{r['max_at']}; {r['step_s'] * 1e3:.0f} ms/step")
        print("  per step: " + ", ".join(f"{k} {v / 1024:.1f} KiB" for k, v in r["per_step_parts"].items()))
        for s, f in r["forks"].items():
            print(f"  fork @{s}: {f['ms']:.1f} ms (median of {a.forks}), child {f['child_bytes'] / 1024:.0f} KiB")
        sys.stdout.flush()
    if a.json:
        tmp = a.json + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(results, fh, indent=1)
        os.replace(tmp, a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
