"""Service times of the simulated replicas: batch size -> model seconds of one batch, measured here.

``measure`` drives the served model in process exactly as a replica does (the engine bench's
``bench_sessions``: Scheduler -> StateCache -> Runner, batch-invariant as on CPU) for a few batch
sizes and records the p50 batch time of each. :class:`ServiceModel` interpolates that table (and
extrapolates linearly past it) and scales it for a GPU by the capacity table's CPU/H200 ratio
(``docs/capacity.json``, written by ``loadtest.capacity``), or by ``--gpu-speedup``.
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class FleetError(ValueError):
    """A bad input of a fleet command: one line naming the value (exit 2, nothing written)."""


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``path`` through a temp file in its folder and a rename: all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class ServiceModel:
    """Model seconds of one batch on one replica, by batch size."""

    model: str
    batch_s: dict[int, float]  # batch size -> p50 seconds of one batch (measured)
    frame: tuple[int, int] = (0, 0)  # (height, width) of the model's frames
    speedup: float = 1.0  # divide every batch time by this (a GPU against the CPU measured)
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    per_step_samples: list[float] | None = None
    """Measured seconds per step (e.g. a replica's batch histogram over its mean batch size): when
    set, a batch of ``b`` takes ``b`` x one draw of these (batch-invariant, as on CPU), scaled by
    ``batch_s`` against its own batch-1 time."""
    seed: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        if not self.batch_s:
            raise FleetError(f"model {self.model!r}: no batch times")
        for b, s in self.batch_s.items():
            if b < 1 or not (s > 0 and math.isfinite(s)):
                raise FleetError(f"model {self.model!r}: batch time {b} -> {s!r} is not a positive time")
        if not (self.speedup > 0 and math.isfinite(self.speedup)):
            raise FleetError(f"speedup={self.speedup!r}: expected a positive number")

    def batch_time(self, b: int) -> float:
        """Seconds of a batch of ``b`` steps: piecewise linear in the measured points (through 0
        below the smallest: never; the smallest point holds), linear past the largest."""
        pts = sorted(self.batch_s.items())
        if b <= pts[0][0]:
            t = pts[0][1] * (b / pts[0][0] if b < pts[0][0] else 1.0)
        elif b >= pts[-1][0]:
            if len(pts) == 1:
                t = pts[0][1] * b / pts[0][0]
            else:
                (b0, t0), (b1, t1) = pts[-2], pts[-1]
                t = t1 + (t1 - t0) / (b1 - b0) * (b - b1)
        else:
            t = pts[-1][1]
            for (b0, t0), (b1, t1) in zip(pts, pts[1:]):
                if b0 <= b <= b1:
                    t = t0 + (t1 - t0) * (b - b0) / (b1 - b0)
                    break
        if self.per_step_samples:
            t *= self._rng.choice(self.per_step_samples) / self.batch_time_mean1
        return t / self.speedup

    @property
    def batch_time_mean1(self) -> float:
        return min(self.batch_s.items())[1] / min(self.batch_s)

    def per_step_s(self, b: int) -> float:
        return self.batch_time(b) / b

    def scaled(self, speedup: float, source: str) -> ServiceModel:
        return ServiceModel(
            self.model, dict(self.batch_s), self.frame, speedup, source, dict(self.extra), self.per_step_samples
        )

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "batch_s": {str(b): s for b, s in sorted(self.batch_s.items())},
            "frame": list(self.frame),
            "source": self.source,
            **self.extra,
        }

    @classmethod
    def from_json(cls, d: dict, source: str) -> ServiceModel:
        try:
            batch = {int(b): float(s) for b, s in d["batch_s"].items()}
            frame = tuple(int(x) for x in d.get("frame", (0, 0)))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise FleetError(f"{source}: not a service-time table ({type(e).__name__}: {e})") from None
        extra = {k: v for k, v in d.items() if k not in ("model", "batch_s", "frame", "source")}
        return cls(str(d.get("model", "?")), batch, (frame[0], frame[1]), 1.0, source, extra)


def read_json(path: Path, flag: str) -> Any:
    """A JSON file given as ``flag``; FleetError naming the flag and the file when it cannot be read."""
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise FleetError(f"{flag} {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise FleetError(f"{flag} {path}: not JSON ({e})") from None


def load_service(path: Path) -> ServiceModel:
    d = read_json(path, "--service")
    return ServiceModel.from_json(d, str(path))


def capacity_entries(path: Path) -> list[dict]:
    """The capacity table's rows (``loadtest.capacity``: ``{"rows": [...]}``; also an object of
    entries keyed by model+size)."""
    table = read_json(path, "--capacity")
    if isinstance(table, dict) and isinstance(table.get("rows"), list):
        rows = [r for r in table["rows"] if isinstance(r, dict)]
    elif isinstance(table, dict):
        rows = [{"key": k, "model": v.get("model", k), **v} for k, v in table.items() if isinstance(v, dict)]
    else:
        raise FleetError(f"--capacity {path}: expected {{rows: [...]}} or an object of model+size entries")
    for r in rows:
        r.setdefault("key", f"{r.get('model')}@{r.get('size', '')}")
    return rows


def capacity_ratio(path: Path, model: str, frame: tuple[int, int] | None) -> tuple[float, dict, bool]:
    """(steps/s on an H200 / steps/s on the CPU, the row, is the H200 figure an estimate?) for
    ``model`` at ``frame`` (H, W) when given, else at its smallest size."""
    every = [r for r in capacity_entries(path) if str(r.get("model")) == model]
    if frame and frame != (0, 0):
        for r in every:
            if (r.get("height"), r.get("width")) == frame and r.get("cannot_run"):
                raise FleetError(
                    f"frame {frame[0]}x{frame[1]}: model {model!r} cannot run at that size ({r['cannot_run']})"
                )
    rows = [r for r in every if not r.get("cannot_run")]
    if not rows:
        raise FleetError(f"model {model!r} is not in {path}")
    if frame and frame != (0, 0):
        h, w = frame
        at = [
            r
            for r in rows
            if (r.get("height"), r.get("width")) == (h, w) or any(x in str(r["key"]) for x in (f"{h}x{w}", f"{w}x{h}"))
        ]
        if not at:
            sizes = ", ".join(f"{r.get('height')}x{r.get('width')}" for r in rows)
            raise FleetError(f"frame {h}x{w}: model {model!r} is not in {path} at that size (it has {sizes})")
        rows = at
    r = min(rows, key=lambda r: float(r.get("height") or 0) * float(r.get("width") or 0))
    try:
        cpu, gpu = float(r["steps_per_s_cpu"]), float(r["steps_per_s_h200"])
    except (KeyError, TypeError, ValueError):
        raise FleetError(f"{path}: row {r['key']!r} lacks steps_per_s_cpu / steps_per_s_h200") from None
    if not (cpu > 0 and gpu > 0):
        raise FleetError(f"{path}: row {r['key']!r} has steps_per_s {cpu!r} / {gpu!r}: expected positive")
    est = bool(r.get("steps_per_s_h200_estimate", r.get("estimate", False)))
    return gpu / cpu, r, est


def measure(model_name: str, sizes: list[int], budget_s: float, frame: tuple[int, int] | None) -> ServiceModel:
    """p50 batch seconds of the served ``model_name`` for each batch size, in process (CPU)."""
    from loadtest.engine_bench_sessions import _window, bench_sessions, engine_parts, session_state_bytes
    from worldserve.common.config import Config
    from worldserve.dynamics.registry import load_model

    overrides: dict[str, Any] = {"device": "cpu"}
    config = Config.load(overrides)
    try:
        spec = config.model_spec(model_name)
    except Exception as e:
        raise FleetError(f"model {model_name!r}: {e}") from None
    model = load_model(spec, config, "cpu")
    info = model.info
    if frame and frame != (0, 0) and frame != (info.frame_height, info.frame_width):
        raise FleetError(
            f"frame {frame[0]}x{frame[1]}: model {model_name!r} makes {info.frame_height}x{info.frame_width} frames"
        )
    parts = engine_parts()
    window = _window(model, parts, "cpu")
    per, _ = session_state_bytes(model, parts, lambda: window)
    inv = config.batch_invariant in ("on", "auto")  # auto: on for CPU
    out: dict[int, float] = {}
    raw = {}
    for n in sizes:
        r = bench_sessions(
            model,
            parts,
            n=n,
            batch_invariant=inv,
            max_batch=n,
            budget_s=budget_s,
            window=window,
            per_session=per,
            mem_avail=8 * 1024**3,
            device="cpu",
            max_rounds=10_000,
        )
        if "p50_batch_ms" not in r:
            raise FleetError(f"measuring {model_name!r} at batch {n}: {r.get('error') or r.get('reason')}")
        out[n] = r["p50_batch_ms"] / 1000.0
        raw[str(n)] = {k: r[k] for k in ("p50_batch_ms", "frames_per_s", "batches", "mean_batch_size") if k in r}
    import numpy as np
    import torch

    from worldserve.common.codec import PNG, encode_rgb, pack_array

    z = np.asarray(window[-1][2], dtype=np.float32)
    rgb = model.decode(torch.from_numpy(z)[None])[0].numpy()
    step_bytes = len(pack_array(z)) + len(encode_rgb(np.ascontiguousarray(rgb, dtype=np.uint8), PNG).data)
    return ServiceModel(
        model_name,
        out,
        (info.frame_height, info.frame_width),
        1.0,
        "measured in process (loadtest.fleet measure)",
        {
            "batch_invariant": inv,
            "torch_threads": torch.get_num_threads(),
            "runs": raw,
            "archive_bytes_per_step_estimate": step_bytes,
        },
    )
