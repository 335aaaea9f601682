"""Serving rollouts through the :class:`~worldserve.dynamics.interface.DynamicsModelProtocol` interface alone,
the way the engine serves them (for the fidelity evaluation, :mod:`worldserve.train.evaluate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .eval_figures import GUIDANCE


@dataclass
class Job:
    """One session to serve: its first frame, the keys of steps 1..S, the event text in force for
    each of those frames (None: no events), its seed."""

    first: np.ndarray
    keys: list[tuple[str, ...]]
    events: list[str] | None
    seed: int


@dataclass
class ServeStats:
    step_calls: int = 0
    frames: int = 0


@torch.no_grad()
def serve(
    model: Any, jobs: Sequence[Job], *, guidance: float = GUIDANCE, batch: int = 64, stats: ServeStats | None = None
) -> list[np.ndarray]:
    """Serve the jobs as the engine does and return each one's frames 1..S, (S, H, W, 3) uint8.

    Sessions run in batches of up to ``batch`` (longest jobs first): ``encode`` their first frames,
    ``prefill`` one state per session (``events=[""]``), then one batched ``step`` per step for
    every session still running (all at the same step), ``decode``; ``release_state`` at the end.
    A model whose state memory is full (``StateMemoryFull``) gets smaller batches."""
    from worldserve.dynamics.interface import StateMemoryFull

    stats = stats if stats is not None else ServeStats()
    events_on = bool(model.info.events_supported)
    vectors: dict[tuple[str, ...], torch.Tensor] = {}

    def vec(keys: tuple[str, ...]) -> torch.Tensor:
        if keys not in vectors:
            vectors[keys] = model.action_vector(list(keys))
        return vectors[keys]

    order = sorted(range(len(jobs)), key=lambda i: -len(jobs[i].keys))
    out: list[np.ndarray | None] = [None] * len(jobs)
    start = 0
    while start < len(order):
        chunk = order[start : start + batch]
        z0 = model.encode(torch.from_numpy(np.stack([jobs[i].first for i in chunk])))
        states: list[Any] = []
        try:
            for j in range(len(chunk)):
                states.append(model.prefill(z0[j : j + 1], model.null_action()[None], 0, events=[""]))
        except StateMemoryFull:
            for s in states:
                model.release_state(s)
            if batch == 1:
                raise
            batch = max(1, len(states) if states else batch // 2)
            continue
        try:
            frames: list[list[np.ndarray]] = [[] for _ in chunk]
            for s in range(1, len(jobs[chunk[0]].keys) + 1):
                live = [j for j, i in enumerate(chunk) if len(jobs[i].keys) >= s]  # a prefix
                n = len(live)
                acts = torch.stack([vec(tuple(jobs[chunk[j]].keys[s - 1])) for j in live])
                evs = None
                if events_on:
                    evs = [(jobs[chunk[j]].events or [""] * s)[s - 1] for j in live]
                lat = model.step(
                    states[:n],
                    acts,
                    seeds=[jobs[chunk[j]].seed for j in live],
                    steps=[s] * n,
                    guidance=guidance,
                    events=evs,
                )
                dec = model.decode(lat).numpy()
                stats.step_calls += 1
                stats.frames += n
                for k, j in enumerate(live):
                    frames[j].append(dec[k])
        finally:
            for st in states:
                model.release_state(st)
        for j, i in enumerate(chunk):
            out[i] = np.stack(frames[j]) if frames[j] else np.zeros((0, *jobs[i].first.shape), np.uint8)
        start += len(chunk)
    return out  # type: ignore[return-value]


def rollout(
    model: Any,
    first: np.ndarray,
    actions: np.ndarray,
    events: list[list[str]] | None,
    seeds: Sequence[int],
    *,
    guidance: float = GUIDANCE,
) -> np.ndarray:
    """N sessions from multi-hot action vectors: first (N, H, W, 3) uint8, actions (N, S, A) in
    the model's action layout -> frames (N, S, H, W, 3), all in one batch."""
    first, actions = np.asarray(first), np.asarray(actions, np.float32)
    names = model.info.action_space.keys
    jobs = []
    for i in range(len(first)):
        keys = [tuple(k for k, v in zip(names, a) if v > 0.5) for a in actions[i]]
        jobs.append(Job(first[i], keys, events[i] if events is not None else None, int(seeds[i])))
    return np.stack(serve(model, jobs, guidance=guidance, batch=max(1, len(jobs))))
