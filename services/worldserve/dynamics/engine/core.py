"""The dynamics engine of one model replica: request -> scheduler -> runner -> output -> Redis.

A Step, in order (each part in its own file beside this one):

1. ``Engine.step`` validates the typed request against the model (keys, axes, guidance, event),
   reads the session record from Redis, checks it is bound to this engine's model and at the
   expected step, and looks up the session's model state in the ``StateCache`` (hit: the state
   is at the step Redis holds; miss: the latent window, with the model's resume data, is read
   from Redis for a prefill that rebuilds the state bitwise: the cache is only a cache);
2. the ``Scheduler`` queues it per (priority, tenant) and forms batches;
3. the ``Runner`` (the model thread) prefills what was missed, steps the batch and decodes;
4. the ``OutputProcessor`` encodes the frame (PNG for the log, the requested format for the client);
5. ``SessionStore.append`` lands the step with a compare-and-set on the step counter; only then is
   the step acknowledged and the new state kept in the cache.

Knows nothing of gRPC: typed requests in (``types.StepRequest``), ``types.StepOutput`` out,
``worldserve.common.errors`` exceptions for every refusal.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from worldserve.common.codec import (
    PNG,
    EncodedFrame,
    check_format,
    decode_png,
    frame_ref,
    needs_ref,
    pack_array,
    unpack_array,
)
from worldserve.common.config import Config
from worldserve.common.errors import Conflict, DataLoss, FailedPrecondition, InvalidArgument, NotFound
from worldserve.common.metrics import BATCH_BUCKETS, ServiceMetrics
from worldserve.common.text_embedding import decode_text_embedding
from worldserve.dynamics.engine.output import OutputProcessor
from worldserve.dynamics.engine.runner import Job, Runner
from worldserve.dynamics.engine.scheduler import Scheduler
from worldserve.dynamics.engine.state_cache import Key, StateCache
from worldserve.dynamics.engine.types import StepOutput, StepRequest
from worldserve.dynamics.interface import DynamicsModelProtocol
from worldserve.state.quotas import QuotaEnforcer, gcra_args, rate_key
from worldserve.state.store import AlreadyApplied, LogEntry, SessionStore, action_to_dict, check_session_id

if TYPE_CHECKING:
    import torch

    from worldserve.state.store import SessionRecord

log = logging.getLogger("worldserve.dynamics")

MAX_GUIDANCE = 20.0
MAX_EVENT_CHARS = 200
GAUGE_REFRESH_S = 5.0  # Ray drops a gauge that is not set for ~20 s
WAITING_WINDOW_S = 2.0  # batches stay short this long after the last interactive or normal step was queued


class Engine:
    def __init__(
        self,
        model: DynamicsModelProtocol,
        store: SessionStore,
        config: Config,
        metrics: ServiceMetrics | None = None,
        *,
        enforcer: QuotaEnforcer | None = None,
        model_name: str = "",
        batch_invariant: bool = True,
    ):
        self.model = model
        self.store = store
        self.config = config
        self.enforcer = enforcer or QuotaEnforcer(store)
        self.model_name = model_name or config.default_model_name
        self.batch_invariant = batch_invariant
        self.info = model.info
        self.text_dim = int(self.info.extra.get("text_dim") or 0)  # the model takes a text embedding
        m = self.metrics = metrics or ServiceMetrics("dynamics")
        lbl = {"model": self.model_name}
        self._lbl = lbl
        self.m_batch = m.histogram("batch_size", "Sessions per model batch", ("model",), BATCH_BUCKETS)
        self.m_queue = m.gauge("queue_depth", "Steps waiting for the model in this replica", ("model",))
        self.m_active = m.gauge("active_sessions", "Sessions whose model state this replica holds", ("model",))
        self.m_bytes = m.gauge("state_cache_bytes", "Bytes of per-session model state this replica holds", ("model",))
        self.m_evictions = m.counter("state_evictions", "Session states evicted, by reason", ("model", "reason"))
        self.m_hits = m.counter("context_cache_hits", "Steps whose state was in the replica cache", ("model",))
        self.m_misses = m.counter("context_cache_misses", "Steps whose state was prefilled from Redis", ("model",))
        self.m_frames = m.counter("frames_generated", "Frames generated and acknowledged", ("model",))
        self.m_model = m.histogram(
            "model_step_duration_seconds", "Model time of one batch (prefill, step, decode)", ("model",)
        )
        self.m_steps = m.counter(
            "model_steps",
            "Session steps run by the model, by attention backend and kernel",
            ("model", "backend", "kernel"),
        )
        self.m_conflicts = m.counter("step_conflicts", "Steps rejected by the compare-and-set append", ("model",))
        self.m_replays = m.counter(
            "step_replays", "Steps answered from the log: their request id had already landed", ("model",)
        )
        self.m_failures = m.counter("item_failures", "Steps that failed in the model (their batch went on)", ("model",))
        self.m_deadline = m.counter(
            "deadline_steps", "Steps answered that carried a frame deadline, by outcome", ("model", "outcome")
        )
        self.m_wait = m.histogram(
            "queue_wait_seconds", "Time steps waited for the model, by priority class", ("model", "priority")
        )
        self._item_s = 0.0  # model seconds per step, averaged over recent batches
        self.deadline_counts = [0, 0]  # steps with a frame deadline answered so far: [met, missed]
        self.cache = StateCache(
            model,
            config.state_cache_bytes,
            on_evict=lambda reason: self.m_evictions.inc(model=self.model_name, reason=reason),
            on_change=self._cache_changed,
        )
        self.scheduler: Scheduler[Job] = Scheduler(
            config.max_batch_size, config.max_queue, on_depth=lambda n: self.m_queue.set(n, **lbl)
        )
        self.runner = Runner(
            model, self.cache, batch_invariant=batch_invariant, on_item_failure=lambda e: self.m_failures.inc(**lbl)
        )
        self.output = OutputProcessor()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")  # one model stream
        self._inflight: set[tuple[str, str]] = set()
        self._tasks: list[asyncio.Task[None]] = []

    def _cache_changed(self, sessions: int, nbytes: int) -> None:
        self.m_active.set(sessions, **self._lbl)
        self.m_bytes.set(nbytes, **self._lbl)

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks.append(loop.create_task(self._batch_loop(), name="dynamics-batches"))
            self._tasks.append(loop.create_task(self._eviction_loop(), name="dynamics-evictions"))

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        self._tasks = []
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.output.close()

    @property
    def item_s(self) -> float:
        """Model seconds per step, averaged over recent batches (0.0: no batch yet)."""
        return self._item_s

    def check_alive(self) -> None:
        """RuntimeError when a background task (batches, evictions) died (the replica's health check)."""
        for t in self._tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                raise RuntimeError(f"engine task {t.get_name()} died: {t.exception()!r}")

    # -- validation -------------------------------------------------------------------------------
    def action_vector(self, keys: Iterable[str], mouse: Mapping[str, float], event: str | None = None) -> torch.Tensor:
        """The model's action vector; INVALID_ARGUMENT quoting a bad key, axis, value or event. The
        keys and mouse are the model's to check (``DynamicsModelProtocol.action_vector``: the shipped models
        check them with ``ActionSpace.check``, the one check the web's live messages use too)."""
        try:
            vec = self.model.action_vector(list(keys), dict(mouse))
        except ValueError as e:
            raise InvalidArgument(str(e)) from None
        if event is not None:
            if len(event) > MAX_EVENT_CHARS:
                raise InvalidArgument(f"event of {len(event)} characters exceeds the limit of {MAX_EVENT_CHARS}")
            if self.info.events_supported and self.info.event_max_bytes:
                from worldserve.dynamics.layers.actions import normalize_event

                n = len(normalize_event(event).encode())
                if n > self.info.event_max_bytes:  # checked here: inside a batch it would fail the item late
                    raise InvalidArgument(
                        f"event {event[:80]!r} is {n} bytes in UTF-8; the model takes at most {self.info.event_max_bytes}"
                    )
        return vec

    def check_guidance(self, guidance: float | None) -> float:
        if guidance is None:
            return float(self.info.default_guidance)
        if guidance != guidance or not (0.0 <= guidance <= MAX_GUIDANCE):
            raise InvalidArgument(f"guidance={guidance!r} is out of range [0, {MAX_GUIDANCE}]")
        return float(guidance)

    def check_actions(self, actions: Sequence[tuple[tuple[str, ...], Mapping[str, float], str | None]]) -> None:
        """Validate many (keys, mouse, event) at once, naming the first bad index (a Rollout checks
        every action before its first step)."""
        for i, (keys, mouse, event) in enumerate(actions):
            try:
                self.action_vector(keys, mouse, event)
            except InvalidArgument as e:
                raise InvalidArgument(f"actions[{i}]: {e}") from None

    # -- the step ---------------------------------------------------------------------------------
    async def step(self, req: StepRequest) -> StepOutput:
        """One step; see the module docstring. Raises ABORTED (``Conflict``) when the session moved
        on meanwhile, FAILED_PRECONDITION when ``expected_step`` no longer holds."""
        check_session_id(req.session_id)
        vec = self.action_vector(req.keys, req.mouse, req.event)
        g = self.check_guidance(req.guidance)
        fmt = check_format(req.fmt)
        key = (req.tenant, req.session_id)
        try:
            if key in self._inflight:
                raise Conflict(f"session {req.session_id!r} already has a step in flight; this one was not applied")
            self._inflight.add(key)
            self.cache.pin(key)
            try:
                out = await self._step(req, key, vec, g, fmt)
                if req.deadline is not None:
                    met = time.time() <= req.deadline
                    self.m_deadline.inc(model=self.model_name, outcome="met" if met else "missed")
                    self.deadline_counts[0 if met else 1] += 1
                return out
            finally:
                self.cache.unpin(key)
                self._inflight.discard(key)
        except Conflict as e:
            if req.expected_step is not None:  # the caller named a step: its precondition no longer holds
                raise FailedPrecondition(str(e)) from None
            raise

    async def _step(self, req: StepRequest, key: Key, vec: torch.Tensor, g: float, fmt: int) -> StepOutput:
        since = time.monotonic()
        try:
            rate = req.rate
            rec, landed, charged = await self.store.get_for_step(
                req.tenant,
                req.session_id,
                req.request_id,
                None if rate is None else (rate_key(req.tenant), gcra_args(rate.steps_per_s, rate.burst, 1)),
            )
            if rate is not None:  # paced or refused here, before any work (the read is one round trip)
                await self.enforcer.settle(
                    req.tenant, rate.steps_per_s, rate.burst, 1, charged, wait_s=rate.wait_s, hold_s=rate.hold_s
                )
        except NotFound:
            if key in self.cache:  # deleted while this replica held its state
                self.cache.evict(key, "deleted")
            raise
        if rec.model != self.model_name:
            raise FailedPrecondition(
                f"session {req.session_id!r} is bound to model {rec.model!r}; this deployment serves {self.model_name!r}"
            )
        if landed is not None:  # a retry of a step that landed gets that step back (before any precondition)
            hit = await self.store.recorded(req.tenant, req.session_id, req.request_id)
            if hit is not None:
                return await self._replay(req, rec, *hit, fmt)
        await self.store.check_step(rec, req.expected_step)
        job = Job(req, key, rec.step, rec.seed, vec, g, event="")
        entry = self.cache.get(key, rec.step)
        if entry is not None:
            self.m_hits.inc(**self._lbl)
            job.state, prev_event = entry.state, entry.event
        else:
            self.m_misses.inc(**self._lbl)
            prev_event = await self._load_window(job)
        job.event = prev_event if req.event is None else req.event
        ok = False
        try:
            await self._run(job)
            if job.retry_solo:  # its batched call failed: step it alone from a fresh prefill
                self._drop_state(job)
                job.retry_solo, job.solo = False, True
                await self._load_window(job)
                await self._run(job)
            if job.error is not None:
                raise job.error
            if job.rgb is None or job.latent is None:  # the runner fills both or sets error
                raise RuntimeError(f"session {req.session_id!r}: the runner returned no frame")
            png, frame = await self.output.encode(job.rgb, fmt)
            action = action_to_dict(req.keys, dict(req.mouse))
            if job.event:
                action["event"] = job.event  # the log records the event in force at each step
                if req.event is not None and req.event_text:
                    action["event_text"] = req.event_text  # ... and the free text it was given as
            try:
                due = (
                    self.store.archive is not None
                    and (rec.step + 1 - rec.archived) % self.config.archive_chunk_steps == 0
                )  # a chunk fills
                n = await self.store.append(
                    req.tenant,
                    req.session_id,
                    expected_step=rec.step,
                    action=action,
                    latent=pack_array(job.latent, ref=frame_ref(job.rgb)),  # exact, compact beside its frame
                    frame=png,
                    request_id=req.request_id,
                    due=due,
                    first_latent=None
                    if job.first_latent is None
                    else pack_array(job.first_latent, ref=frame_ref(job.first_frame)),
                    resume=job.resume,
                    resume_keep=max(1, self.info.context_frames - 1),
                )
            except (Conflict, NotFound):
                self.m_conflicts.inc(**self._lbl)
                raise
            except AlreadyApplied as e:  # its twin landed first (another replica): answer with that step
                hit = await self.store.recorded(req.tenant, req.session_id, req.request_id)
                if hit is None or hit[0] != e.step:
                    raise Conflict(
                        f"session {req.session_id!r}: request {req.request_id!r} landed as step {e.step}, "
                        "which is gone; this step was not applied"
                    ) from None
                return await self._replay(req, rec, *hit, fmt)
            ok = True
            self.cache.put(key, job.state, job.event, since=since)
            self.m_frames.inc(**self._lbl)
            return StepOutput(req.session_id, n, frame, job.event)
        finally:
            if not ok:
                self._drop_state(job)

    async def _replay(self, req: StepRequest, rec: SessionRecord, step: int, png: bytes, fmt: int) -> StepOutput:
        """The recorded result of a step whose request id had landed: its frame, in ``fmt`` (the
        log keeps PNG: other formats are re-encoded)."""
        self.m_replays.inc(**self._lbl)
        event = ((await self.store.action_at(req.tenant, req.session_id, step)) or {}).get("event", "")
        if fmt == PNG:
            return StepOutput(req.session_id, step, EncodedFrame(PNG, png, rec.width, rec.height), event)
        rgb = decode_png(png)
        _, frame = await self.output.encode(rgb, fmt)
        return StepOutput(req.session_id, step, frame, event)

    def _drop_state(self, job: Job) -> None:
        """The job's state is ahead of Redis or broken: out of the cache, memory released."""
        if job.state is None:
            return
        if self.cache.take(job.key) is not None:
            self.m_evictions.inc(model=self.model_name, reason="stale")
        self.cache.discard(job.state)
        job.state = None

    async def _run(self, job: Job) -> None:
        """Queue the job and wait for the runner; a caller that gives up withdraws a queued job."""
        job.fut = asyncio.get_running_loop().create_future()
        job.queued_at = time.perf_counter()
        self.scheduler.submit(job.req.tenant, job, job.req.priority, job.req.deadline)
        try:
            await asyncio.shield(job.fut)
        except asyncio.CancelledError:
            if not self.scheduler.remove(job.req.tenant, job):
                await asyncio.wait([job.fut])  # running: its state must not be touched until it ends
            raise

    async def _load_window(self, job: Job) -> str:
        """Read the session's latent window for a prefill (and its text embedding, for a model that
        takes one); returns the event in force at its end."""
        req = job.req
        entries, text = await self.store.prefill_window(
            req.tenant,
            req.session_id,
            end_step=job.step,
            frames=self.info.context_frames - 1,
            text=bool(self.text_dim),
        )
        if text is not None:
            job.text = decode_text_embedding(text)  # (L, text_dim) float32
        job.window = [(e.step, e.action, self._latent(req.session_id, e), e.resume) for e in entries]
        missing = [s for s, _, z, _ in job.window if z is None]
        if missing:
            if missing != [0]:
                raise InvalidArgument(f"session {req.session_id!r} has no latents for steps {missing}")
            png = await self.store.first_frame(req.tenant, req.session_id)
            job.first_frame = decode_png(png)
        return (entries[-1].action or {}).get("event", "") if entries else ""

    @staticmethod
    def _latent(sid: str, e: LogEntry) -> np.ndarray | None:
        """A window entry's latent (None: not stored); one packed against its frame gets it back."""
        if e.latent is None:
            return None
        if not needs_ref(e.latent):
            return unpack_array(e.latent)
        if e.frame is None:
            raise DataLoss(f"session {sid!r}: the frame of step {e.step}, which its latent needs, is missing")
        return unpack_array(e.latent, ref=frame_ref(decode_png(e.frame)))

    # -- background -------------------------------------------------------------------------------
    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not await self.scheduler.wait(GAUGE_REFRESH_S):
                self.m_queue.set(self.scheduler.depth, **self._lbl)
                self._cache_changed(len(self.cache), self.cache.nbytes)
                continue
            waiting = time.monotonic() - self.scheduler.last_waiting < WAITING_WINDOW_S
            if self.config.max_batch_wait_s > 0 and not waiting and self.scheduler.depth < self.config.max_batch_size:
                await asyncio.sleep(self.config.max_batch_wait_s)
            batch = self.scheduler.take_batch(self._batch_limit(waiting))
            if not batch:
                continue
            self.m_batch.observe(len(batch), **self._lbl)
            t0 = time.perf_counter()
            for j in batch:
                self.m_wait.observe(t0 - j.queued_at, model=self.model_name, priority=j.req.priority.name.lower())
            try:
                stats = await loop.run_in_executor(self._pool, self.runner.run, batch)
            except Exception as e:
                log.exception("model batch of %d failed", len(batch))
                for j in batch:
                    j.error = e
            else:
                took = time.perf_counter() - t0
                self.m_model.observe(took, **self._lbl)
                per = took / len(batch)
                self._item_s = per if not self._item_s else 0.8 * self._item_s + 0.2 * per
                rt = self.model.runtime
                if stats.steps:
                    self.m_steps.inc(
                        stats.steps,
                        model=self.model_name,
                        backend=rt.attention_backend,
                        kernel=rt.decode_kernel or rt.attention_backend,
                    )
            for j in batch:
                if not j.fut.done():
                    j.fut.set_result(None)

    def _batch_limit(self, waiting: bool) -> int | None:
        """The most steps in the next batch: None (``max_batch_size``), or while steps someone
        waits on (interactive or normal) are about, as many as fit ``interactive_batch_s`` of model
        time (bulk alone: full batches)."""
        if not waiting or not self._item_s:
            return None
        return max(1, int(self.config.interactive_batch_s / self._item_s))

    async def _eviction_loop(self) -> None:
        """Evict the state of every session deleted anywhere in the cluster."""
        while True:
            try:
                async for tenant, sid in self.store.deletions():
                    self.cache.evict((tenant, sid), "deleted")
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("deletion feed lost (%s); resubscribing", type(e).__name__)
                await asyncio.sleep(1.0)

    def evict(self, tenant: str, session_id: str) -> bool:
        """Drop a session's state (DeleteSession, tests)."""
        return self.cache.evict((tenant, session_id), "deleted")
