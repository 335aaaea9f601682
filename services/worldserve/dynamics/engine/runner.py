"""Runner: the model thread. Turns a batch of jobs into new latents and decoded frames.

One runner per model replica, one thread (the model is not re-entrant). For a batch it:

1. releases the memory of states the cache evicted since the last batch;
2. prefills the sessions whose state was not cached (from their latent window in Redis); when
   the model's state memory is full it evicts least-recently-used sessions and retries;
3. steps the sessions: one ``model.step`` per guidance value over all of them (``batched``), or
   one call per session (``batch_invariant``: a session's frames then cannot depend on who else
   is in the batch, bit for bit, because every model call has the same shapes);
4. decodes the new latents to frames (per session too when batch-invariant): with the model's
   optional ``decode_step`` (a streaming decoder that keeps a cache per session) when it has one,
   else ``decode``;
5. packs each new state's ``resume_data`` (stored with the step), after the decode: a model with
   ``decode_step`` then hands back its decoder cache after the step's frames too.

A model whose ``info.extra`` names a ``text_dim`` takes the session's text embedding (``Job.text``,
(L, text_dim) float32, read with the window) in ``prefill(..., text=...)``.

Failures stay with their item. A prefill or a decode that raises fails that item only. A batched
``step`` that raises marks every item of that call ``retry_solo``: their states may be half
advanced, so the engine drops them, re-prefills and steps each alone, and only the item that
fails alone fails.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from worldserve.common.errors import ResourceExhausted
from worldserve.dynamics.engine.state_cache import Key, StateCache
from worldserve.dynamics.engine.types import StepRequest
from worldserve.dynamics.interface import DynamicsModelProtocol, StateMemoryFull, pack_resume, unpack_resume

log = logging.getLogger("worldserve.dynamics")


@dataclass(eq=False)
class Job:
    """One session's step on its way through the engine."""

    req: StepRequest
    key: Key
    step: int  # the session's step in Redis; the new frame is step + 1
    seed: int
    action_vec: torch.Tensor  # (A,)
    guidance: float
    event: str  # the event in force for the new frame ("" = none)
    state: Any = None  # the session's model state at ``step``; None: prefill from ``window``
    window: list[tuple[int, dict[str, Any] | None, np.ndarray | None, bytes | None]] | None = None
    """(step, action, latent, packed resume data) of the steps to prefill from."""
    first_frame: np.ndarray | None = None  # (H, W, 3) step 0's frame when its latent is not stored
    text: np.ndarray | None = None  # (L, text_dim) float32 the session's text embedding (models with text only)
    solo: bool = False  # step alone (a retry after a batched failure)
    # set by the runner
    prefilled: bool = False
    first_latent: np.ndarray | None = None  # step 0's latent, encoded here, for Redis
    latent: np.ndarray | None = None  # (...) float32 new latent
    resume: bytes | None = None  # the new state's resume data, packed (None: the model keeps none)
    rgb: np.ndarray | None = None  # (H, W, 3) uint8 new frame
    error: BaseException | None = None
    retry_solo: bool = False
    fut: Any = field(default=None, repr=False)
    queued_at: float = 0.0  # time.perf_counter() when it was queued


@dataclass
class BatchStats:
    model_calls: int = 0
    steps: int = 0
    prefills: int = 0
    evictions: int = 0


class Runner:
    def __init__(
        self,
        model: DynamicsModelProtocol,
        cache: StateCache,
        *,
        batch_invariant: bool,
        on_item_failure: Callable[[BaseException], None] | None = None,
    ):
        self.model = model
        self.events_supported = model.info.events_supported
        self.text_supported = bool(model.info.extra.get("text_dim"))
        self.decode_step: Callable[[list[Any], torch.Tensor], torch.Tensor] | None = getattr(model, "decode_step", None)
        self.cache = cache
        self.batch_invariant = batch_invariant
        self._on_item_failure = on_item_failure or (lambda e: None)

    def run(self, jobs: list[Job]) -> BatchStats:
        """Fill each job's ``latent`` and ``rgb``, or its ``error`` / ``retry_solo``."""
        stats = BatchStats()
        self.cache.drain_releases()
        for j in jobs:
            if j.state is None:
                try:
                    j.state = self._prefill(j, stats)
                    j.prefilled = True
                    stats.prefills += 1
                except Exception as e:
                    self._fail(j, e)
        ready = [j for j in jobs if j.error is None]
        for group in self._groups(ready):
            try:
                latents = self.model.step(
                    [j.state for j in group],
                    torch.stack([j.action_vec for j in group]),
                    seeds=[j.seed for j in group],
                    steps=[j.step + 1 for j in group],
                    guidance=group[0].guidance,
                    events=[j.event for j in group] if self.events_supported else None,
                )
                stats.model_calls += 1
            except Exception as e:
                if len(group) == 1:
                    self._fail(group[0], e)
                else:
                    log.warning("a batched step of %d sessions failed (%s); retrying each alone", len(group), e)
                    for j in group:
                        j.retry_solo = True
                continue
            for k, j in enumerate(group):
                j.latent = latents[k].numpy()
            stats.steps += len(group)
            self._decode(group, latents)
            for j in group:
                if j.error is not None:
                    continue
                try:
                    data = self.model.resume_data(j.state)
                    j.resume = None if data is None else pack_resume(data)
                except Exception as e:
                    self._fail(j, e)
        return stats

    # -- parts ------------------------------------------------------------------------------------
    def _fail(self, job: Job, e: BaseException) -> None:
        job.error = e
        self._on_item_failure(e)

    def _groups(self, jobs: list[Job]) -> list[list[Job]]:
        solo = [[j] for j in jobs if j.solo or self.batch_invariant]
        by_guidance: dict[float, list[Job]] = {}
        for j in jobs:
            if not (j.solo or self.batch_invariant):
                by_guidance.setdefault(j.guidance, []).append(j)
        return solo + list(by_guidance.values())

    def _decode(self, group: list[Job], latents: torch.Tensor) -> None:
        if self.batch_invariant or len(group) == 1:
            parts = [(group[k : k + 1], latents[k : k + 1]) for k in range(len(group))]
        else:
            parts = [(group, latents)]
        for jobs, z in parts:
            try:
                if self.decode_step is not None:  # streaming: advances each session's decoder cache
                    frames = self.decode_step([j.state for j in jobs], z).numpy()
                else:
                    frames = self.model.decode(z).numpy()
            except Exception as e:
                for j in jobs:
                    self._fail(j, e)
                continue
            for j, rgb in zip(jobs, frames):
                j.rgb = rgb

    def _prefill(self, job: Job, stats: BatchStats) -> Any:
        latents, actions, events, resume = [], [], [], []
        if not job.window:
            raise RuntimeError(f"session {job.req.session_id!r}: no window to prefill from")
        for step, action, z, packed in job.window:
            resume.append(None if packed is None else unpack_resume(packed))
            if z is None:  # the first frame, stored as an image by the sessions service
                if job.first_frame is None:
                    raise RuntimeError(f"session {job.req.session_id!r}: step {step} has neither a latent nor a frame")
                z = self.model.encode(torch.from_numpy(job.first_frame.copy())[None])[0].numpy()
                job.first_latent = z
            latents.append(torch.from_numpy(np.array(z, dtype=np.float32)))
            a = action or {}
            actions.append(
                self.model.null_action()
                if action is None
                else self.model.action_vector(a.get("keys", []), a.get("mouse", {}))
            )
            events.append(a.get("event", ""))
        first_step = job.window[0][0]
        kw: dict[str, Any] = {"events": events} if self.events_supported else {}
        if any(r is not None for r in resume):
            kw["resume"] = resume
        if self.text_supported and job.text is not None:
            kw["text"] = torch.from_numpy(np.array(job.text, dtype=np.float32))
        # a chunked model's step 0 (one frame) differs in shape from its later steps: a list then
        stacked = torch.stack(latents) if len({z.shape for z in latents}) == 1 else latents
        while True:
            try:
                return self.model.prefill(stacked, torch.stack(actions), first_step=first_step, **kw)
            except StateMemoryFull:
                if not self.cache.evict_lru():
                    raise ResourceExhausted("model state memory is full with sessions in flight; retry later") from None
                self.cache.drain_releases()
                stats.evictions += 1
