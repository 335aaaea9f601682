"""Serving rollouts through the :class:`~worldserve.dynamics.interface.DynamicsModelProtocol` interface alone,
the way the engine serves them (for the fidelity evaluation, :mod:`worldserve.train.evaluate`), and
:func:`resume_matches`: sessions resumed after a cache miss against their warm twins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
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


@dataclass
class ResumeMatch:
    """What :func:`resume_matches` found: frames of resumed sessions against their warm twins'."""

    compared: int = 0
    """Frames compared: each resumed session's frames after the cache miss, at every resume point."""
    identical: int = 0
    """Of those, the frames bitwise identical to the warm session's at the same step."""
    differing: list[tuple[int, int, int]] = field(default_factory=list)
    """(job index, resume point K, step) of each frame that differs."""

    @property
    def exact(self) -> bool:
        """Every compared frame identical (and at least one compared)."""
        return self.compared > 0 and self.identical == self.compared


@torch.no_grad()
def resume_matches(
    model: Any,
    jobs: Sequence[Job],
    resume_at: Sequence[int],
    *,
    guidance: float | None = GUIDANCE,
    text: torch.Tensor | None = None,
    resumed_batch: int = 1,
) -> ResumeMatch:
    """Resumed after a cache miss, is a session bitwise its warm twin? For every model kind, through
    the :class:`~worldserve.dynamics.interface.DynamicsModelProtocol` interface as the engine calls it.

    Warm: the jobs (all as long as the first) are served as one batch, as :func:`serve` does:
    ``encode`` the first frames, one ``prefill`` per session, one batched ``step`` per step (each
    session's seed; its event in force when the model takes events), then the frames (with the
    model's streaming ``decode_step`` when it has one, else ``decode``) and each state's
    ``resume_data``, kept as the engine keeps a step in Redis: the latent, the action, the event and
    the resume data serialised (``pack_resume``). At each resume point K (0 <= K < steps) every
    session's state is dropped and rebuilt as the engine rebuilds it after a cache miss: ``prefill``
    from the last ``context_frames - 1`` kept steps up to K (their latents, actions, events and
    unpacked resume data; the session's ``text`` embedding for a model that takes one). The rebuilt
    sessions then step K+1 .. in batches of ``resumed_batch`` (1: each alone), in reverse order: on
    another replica a session meets other neighbours, so this also checks that a session's frames
    do not depend on its batch. Every frame after K is compared with the warm one; every state is
    released.

    Returns the frames compared and the frames identical (``ResumeMatch.exact``: all of them).
    """
    from worldserve.dynamics.interface import pack_resume, unpack_resume

    if not jobs:
        raise ValueError("resume_matches needs at least one job")
    steps = len(jobs[0].keys)
    if any(len(j.keys) != steps for j in jobs):
        raise ValueError(f"every job must have the same number of steps; got {sorted({len(j.keys) for j in jobs})}")
    for k in resume_at:
        if not 0 <= k < steps:
            raise ValueError(f"resume point {k} is outside [0, {steps}): a session resumes before one of its steps")
    if resumed_batch < 1:
        raise ValueError(f"resumed_batch must be >= 1, got {resumed_batch}")
    info = model.info
    events_on = bool(info.events_supported)
    text_on = text is not None and bool(info.extra.get("text_dim"))
    window = max(1, info.context_frames - 1)
    decode_step = getattr(model, "decode_step", None)
    n = len(jobs)

    def frames_of(states: list[Any], z: torch.Tensor) -> torch.Tensor:  # as the engine's runner decodes
        return (decode_step(states, z) if decode_step is not None else model.decode(z)).cpu()

    def event(i: int, s: int) -> str:  # the event in force for step s (1-based) of job i
        ev = jobs[i].events
        return ev[s - 1] if ev is not None else ""

    def prefill(entries: list[tuple[torch.Tensor, torch.Tensor, str, bytes | None]], first: int) -> Any:
        kw: dict[str, Any] = {"events": [e[2] for e in entries]} if events_on else {}
        if any(e[3] is not None for e in entries):
            kw["resume"] = [None if e[3] is None else unpack_resume(e[3]) for e in entries]
        if text_on:
            kw["text"] = text
        lat = [e[0] for e in entries]
        stacked = torch.stack(lat) if len({z.shape for z in lat}) == 1 else lat  # as the engine's runner
        return model.prefill(stacked, torch.stack([e[1] for e in entries]), first, **kw)

    def step(states: list[Any], idx: list[int], s: int) -> torch.Tensor:
        acts = torch.stack([model.action_vector(list(jobs[i].keys[s - 1])) for i in idx])
        return model.step(
            states,
            acts,
            seeds=[jobs[i].seed for i in idx],
            steps=[s] * len(idx),
            guidance=guidance,
            events=[event(i, s) for i in idx] if events_on else None,
        )

    # the warm sessions, and each one's log as Redis keeps it: (latent, action, event, packed resume data)
    z0 = model.encode(torch.from_numpy(np.stack([np.asarray(j.first, dtype=np.uint8) for j in jobs])))
    null = model.null_action()
    logs: list[list[tuple[torch.Tensor, torch.Tensor, str, bytes | None]]] = [
        [(z0[i], null, "", None)] for i in range(n)
    ]
    warm: list[list[torch.Tensor]] = [[] for _ in range(n)]
    states: list[Any] = []
    try:
        for i in range(n):
            states.append(prefill(logs[i][:1], 0))
        for s in range(1, steps + 1):
            z = step(states, list(range(n)), s)
            f = frames_of(states, z)
            for i in range(n):
                data = model.resume_data(states[i])
                a = model.action_vector(list(jobs[i].keys[s - 1]))
                logs[i].append((z[i], a, event(i, s), None if data is None else pack_resume(data)))
                warm[i].append(f[i])
    finally:
        for st in states:
            model.release_state(st)

    out = ResumeMatch()
    for k in resume_at:
        order = list(reversed(range(n)))
        for g in range(0, n, resumed_batch):
            idx = order[g : g + resumed_batch]
            rebuilt: list[Any] = []
            try:
                for i in idx:  # the cache miss: the state rebuilt from what Redis keeps up to step k
                    tail = logs[i][max(0, k + 1 - window) : k + 1]
                    rebuilt.append(prefill(tail, k + 1 - len(tail)))
                for s in range(k + 1, steps + 1):
                    f = frames_of(rebuilt, step(rebuilt, idx, s))
                    for j, i in enumerate(idx):
                        out.compared += 1
                        if torch.equal(f[j], warm[i][s - 1]):
                            out.identical += 1
                        else:
                            out.differing.append((i, k, s))
            finally:
                for st in rebuilt:
                    model.release_state(st)
    return out
