"""The dynamics engine: queue -> batch across sessions -> model -> compare-and-set append.

Knows nothing of gRPC. One engine lives in each dynamics replica:

- Requests queue per tenant; the batcher drains them round-robin across tenants (a noisy tenant
  cannot starve the others) up to ``max_batch_size``. While the model runs a batch, the next one
  fills up (continuous batching): one session alone pays no batching wait.
- Context: the replica keeps each session's KV cache (LRU). A cache entry is used only when it
  is at the session's current step in Redis; otherwise the window of latents is loaded from
  Redis and prefilled. Redis is the truth; a dead replica loses nothing.
- A step is acknowledged only after its compare-and-set append landed in Redis. A racing step on
  the same session gets ``Conflict`` (ABORTED), or ``FailedPrecondition`` when the caller named an
  expected step that no longer holds.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from worldserve.common.codec import PNG, encode_frame, pack_array, unpack_array
from worldserve.common.config import Config
from worldserve.common.errors import Conflict, FailedPrecondition, InvalidArgument, ResourceExhausted
from worldserve.common.metrics import BATCH_BUCKETS, ServiceMetrics
from worldserve.sessions.store import SessionRecord, SessionStore, action_to_dict, check_session_id

log = logging.getLogger("worldserve.dynamics")

MAX_GUIDANCE = 20.0
MAX_EVENT_CHARS = 200
GAUGE_REFRESH_S = 5.0


@dataclass
class StepResult:
    session_id: str
    step: int
    frame: object  # worldserve.v1.Frame in the requested format
    png: bytes


@dataclass
class _Job:
    tenant: str
    rec: SessionRecord
    action: dict
    action_vec: torch.Tensor  # (A,)
    guidance: float
    fmt: int
    event: str | None  # the request's event switch; None keeps the event in force
    cache: object | None  # KVCache at rec.step, or None when it must be prefilled
    window: list | None = None  # [(step, action dict|None, latent np|None)] for prefill
    first_frame_png: bytes | None = None  # step 0 frame when its latent is not stored yet
    fut: asyncio.Future = field(default=None)  # type: ignore[assignment]
    # filled by the model thread
    new_cache: object | None = None
    first_latent: bytes | None = None


class Engine:
    def __init__(self, model, store: SessionStore, config: Config, metrics: ServiceMetrics | None = None):
        self.model = model
        self.store = store
        self.config = config
        self.metrics = metrics or ServiceMetrics("dynamics")
        self.context_frames = model.config.context_frames
        self._events_supported = bool(getattr(model, "events_supported", False))
        self._queues: dict[str, collections.deque[_Job]] = collections.OrderedDict()
        self._queued = 0
        self._wake = asyncio.Event()
        self._inflight: set[tuple[str, str]] = set()
        self._cache: collections.OrderedDict[tuple[str, str], object] = collections.OrderedDict()
        self._events: dict[tuple[str, str], str] = {}  # event in force, beside each cached context
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")  # one model stream
        self._task: asyncio.Task | None = None
        m = self.metrics
        self.m_batch = m.histogram("batch_size", "Sessions per model step", (), BATCH_BUCKETS)
        self.m_queue = m.gauge("queue_depth", "Steps waiting for the model in this replica")
        self.m_active = m.gauge("active_sessions", "Sessions with a context in this replica's cache")
        self.m_hits = m.counter("context_cache_hits", "Steps whose context was in the replica cache")
        self.m_misses = m.counter("context_cache_misses", "Steps whose context was loaded from Redis and prefilled")
        self.m_frames = m.counter("frames_generated", "Frames generated")
        self.m_model = m.histogram("model_step_duration_seconds", "Model time of one batched step (sample + decode)")
        self.m_conflicts = m.counter("step_conflicts", "Steps rejected by the compare-and-set append")

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._batcher(), name="dynamics-batcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- public API -------------------------------------------------------------------------------
    def action(
        self, keys: Sequence[str], mouse: Mapping[str, float], event: str | None = None
    ) -> tuple[dict, torch.Tensor]:
        try:
            vec = self.model.action_vector(list(keys), dict(mouse))
        except ValueError as e:
            raise InvalidArgument(str(e)) from None
        if event is not None:
            if len(event) > MAX_EVENT_CHARS:
                raise InvalidArgument(f"event of {len(event)} characters exceeds the limit of {MAX_EVENT_CHARS}")
            limit = getattr(self.model.config, "event_max_bytes", None)
            if self._events_supported and limit is not None:
                from worldserve.dynamics.model.events import normalize_event

                n = len(normalize_event(event).encode())
                if n > limit:  # checked here: inside a batch it would fail every session in it
                    raise InvalidArgument(f"event {event[:80]!r} is {n} bytes in UTF-8; the model takes at most {limit}")
        return action_to_dict(keys, dict(mouse)), vec

    def check_guidance(self, guidance: float | None) -> float:
        if guidance is None:
            return float(self.model.config.guidance)
        if not (0.0 <= guidance <= MAX_GUIDANCE) or guidance != guidance:
            raise InvalidArgument(f"guidance={guidance!r} is out of range [0, {MAX_GUIDANCE}]")
        return float(guidance)

    async def step(
        self,
        tenant: str,
        session_id: str,
        keys: Sequence[str],
        mouse: Mapping[str, float],
        *,
        expected_step: int | None = None,
        guidance: float | None = None,
        fmt: int = PNG,
        event: str | None = None,
    ) -> StepResult:
        """One step. ``event`` switches the world event from this step on ("" clears it)."""
        check_session_id(session_id)
        action, vec = self.action(keys, mouse, event)
        g = self.check_guidance(guidance)
        try:
            return await self._step(tenant, session_id, action, vec, g, expected_step, fmt, event)
        except Conflict as e:
            if expected_step is not None:  # the caller named a step: its precondition no longer holds
                raise FailedPrecondition(str(e)) from None
            raise

    async def _step(self, tenant, session_id, action, vec, g, expected_step, fmt, event) -> StepResult:
        key = (tenant, session_id)
        if key in self._inflight:
            raise Conflict(f"session {session_id!r} already has a step in flight; this one was not applied")
        if self._queued >= self.config.max_queue:
            raise ResourceExhausted(f"dynamics queue is full ({self._queued} steps waiting); retry later")
        self._inflight.add(key)
        try:
            rec = await self.store.get(tenant, session_id)
            await self.store.check_step(rec, expected_step)
            job = _Job(tenant, rec, action, vec, g, fmt or PNG, event, cache=None)
            await self._attach_context(job)
            if job.event is None:  # keep the event in force
                job.event = self._events.get(key, "")
            if job.event:
                action["event"] = job.event  # the log records the event in force at each step
            job.fut = asyncio.get_running_loop().create_future()
            self._enqueue(job)
            latent, png, frame = await job.fut
            if job.first_latent is not None:
                await self.store.set_latent_if_absent(tenant, session_id, 0, job.first_latent)
            try:
                n = await self.store.append(
                    tenant, session_id, expected_step=rec.step, action=action, latent=pack_array(latent), frame=png
                )
            except Exception:
                self._drop(key)
                self.m_conflicts.inc()
                raise
            self._events[key] = job.event
            self.m_frames.inc()
            return StepResult(session_id, n, frame, png)
        except BaseException:
            self._drop(key)
            raise
        finally:
            self._inflight.discard(key)

    # -- context ----------------------------------------------------------------------------------
    def _drop(self, key: tuple[str, str]) -> None:
        self._cache.pop(key, None)
        self._events.pop(key, None)
        self.m_active.set(len(self._cache))

    async def _attach_context(self, job: _Job) -> None:
        key = (job.tenant, job.rec.session_id)
        cached = self._cache.get(key)
        if cached is not None and getattr(cached, "last_step", None) == job.rec.step:
            self._cache.move_to_end(key)
            job.cache = cached
            self.m_hits.inc()
            return
        self._drop(key)
        self.m_misses.inc()
        entries = await self.store.window(
            job.tenant, job.rec.session_id, end_step=job.rec.step, frames=self.context_frames - 1
        )
        job.window = [(e.step, e.action, None if e.latent is None else unpack_array(e.latent)) for e in entries]
        self._events[key] = (entries[-1].action or {}).get("event", "")
        if any(z is None for _, _, z in job.window):
            missing = [s for s, _, z in job.window if z is None]
            if missing != [0]:
                raise InvalidArgument(f"session {job.rec.session_id!r} has no latents for steps {missing}")
            job.first_frame_png = await self.store.first_frame(job.tenant, job.rec.session_id)

    # -- batching ---------------------------------------------------------------------------------
    def _enqueue(self, job: _Job) -> None:
        self._queues.setdefault(job.tenant, collections.deque()).append(job)
        self._queued += 1
        self.m_queue.set(self._queued)
        self._wake.set()

    def _take_batch(self) -> list[_Job]:
        """Round-robin across tenants, up to max_batch_size."""
        batch: list[_Job] = []
        while self._queued and len(batch) < self.config.max_batch_size:
            for tenant in list(self._queues):
                q = self._queues[tenant]
                if q:
                    batch.append(q.popleft())
                    self._queued -= 1
                if not q:
                    del self._queues[tenant]
                if len(batch) >= self.config.max_batch_size:
                    break
            if self._queues:  # rotate so the next batch starts with the next tenant
                first = next(iter(self._queues))
                self._queues.move_to_end(first)
        self.m_queue.set(self._queued)
        return batch

    async def _batcher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:  # wake at least every few seconds: Ray drops a gauge that is not set for ~20 s
                await asyncio.wait_for(self._wake.wait(), timeout=GAUGE_REFRESH_S)
            except asyncio.TimeoutError:
                self.m_queue.set(self._queued)
                self.m_active.set(len(self._cache))
                continue
            self._wake.clear()
            if self.config.max_batch_wait_s > 0 and self._queued < self.config.max_batch_size:
                await asyncio.sleep(self.config.max_batch_wait_s)
            while self._queued:
                batch = self._take_batch()
                self.m_batch.observe(len(batch))
                t0 = time.perf_counter()
                try:
                    results = await loop.run_in_executor(self._pool, self._run_batch, batch)
                except Exception as e:  # noqa: BLE001 - fail this batch, keep serving
                    log.exception("model batch of %d failed", len(batch))
                    for j in batch:
                        if not j.fut.done():
                            j.fut.set_exception(e)
                    continue
                self.m_model.observe(time.perf_counter() - t0)
                for j, r in zip(batch, results):
                    key = (j.tenant, j.rec.session_id)
                    if j.new_cache is not None:
                        self._cache[key] = j.new_cache
                        self._cache.move_to_end(key)
                    while len(self._cache) > self.config.context_cache_sessions:
                        old, _ = self._cache.popitem(last=False)
                        self._events.pop(old, None)
                    if not j.fut.done():
                        j.fut.set_result(r)
                self.m_active.set(len(self._cache))

    # -- the model thread -------------------------------------------------------------------------
    def _prefill(self, job: _Job):
        window = job.window or []
        latents = []
        actions = []
        for step, action, z in window:
            if z is None:  # the first frame, stored as an image by the sessions service
                from worldserve.common.codec import decode_frame
                from worldserve.v1 import common_pb2

                rgb = decode_frame(common_pb2.Frame(format=PNG, data=job.first_frame_png), max_bytes=1 << 30)
                z = self.model.encode(torch.from_numpy(rgb.copy())[None])[0].numpy()
                job.first_latent = pack_array(z)
            latents.append(torch.from_numpy(np.array(z, dtype=np.float32)))
            actions.append(
                self.model.null_action() if action is None else self.model.action_vector(action.get("keys", []), action.get("mouse", {}))
            )
        kw = {}
        if self._events_supported:
            kw["events"] = [(a or {}).get("event", "") for _, a, _ in window]
        return self.model.prefill(torch.stack(latents), torch.stack(actions), first_step=window[0][0], **kw)

    def _run_batch(self, batch: list[_Job]):
        for j in batch:
            if j.cache is None:
                j.cache = self._prefill(j)
            j.new_cache = j.cache
        out: list = [None] * len(batch)
        by_guidance: dict[float, list[int]] = {}
        for i, j in enumerate(batch):
            by_guidance.setdefault(j.guidance, []).append(i)
        for g, idx in by_guidance.items():
            jobs = [batch[i] for i in idx]
            kw = {"events": [j.event or "" for j in jobs]} if self._events_supported else {}
            latents = self.model.step(
                [j.cache for j in jobs],
                torch.stack([j.action_vec for j in jobs]),
                seeds=[j.rec.seed for j in jobs],
                steps=[j.rec.step + 1 for j in jobs],
                guidance=g,
                **kw,
            )
            frames = self.model.decode(latents).numpy()
            lat = latents.numpy()
            for k, i in enumerate(idx):
                png_frame = encode_frame(frames[k], PNG)
                frame = png_frame if batch[i].fmt == PNG else encode_frame(frames[k], batch[i].fmt)
                out[i] = (lat[k].copy(), png_frame.data, frame)
        return out
