"""The event-level simulation of model replicas in simulated time, with the served code's own parts.

What is the served code's own, imported and called (not copied):

- ``worldserve.dynamics.engine.scheduler.Scheduler``: every simulated step is ``submit``-ted to a
  real Scheduler (interactive ones with their frame deadline, evaluation ones as BULK) and every
  batch is its ``take_batch(limit)``;
- ``worldserve.dynamics.engine.core.Engine._batch_limit``: the batch cut while steps someone waits
  on are about (``interactive_batch_s`` over the running estimate of model seconds per step),
  called with the simulated replica as ``self``; ``WAITING_WINDOW_S`` from the same module;
- the engine's running estimate ``item_s`` (0.8/0.2 average of seconds per step of each batch) and
  its deadline count (a step is met when it returns by its deadline) are re-stated here (they sit
  inside the async batch loop, which has no pure part).

The live room's clock (``worldserve.web.live.LiveRoom._run``) has no pure part either; its rule is
re-stated in :meth:`Cohort.done` and checked against the real LiveRoom in the tests: a tick's step
gets the deadline ``tick_start + period``; a frame that ends after it is ``late``; the ticks it
overran are deadline misses, skipped (``ceil((done - deadline) / period)``); the clock goes on from
the next free tick.

Time is simulated: a heap of (time, seq, callback) events; nothing sleeps. Service time of a batch
comes from :class:`~loadtest.fleet.service.ServiceModel` (measured here); the steps' time outside
the model thread (gRPC hops, the Redis round trip before the model and the append after it, frame
encoding, the WebSocket) is ``pre_s`` before the step reaches the scheduler and ``post_s`` after its
batch ends, plus ``deliver_s`` to the player.

Live sessions are grouped in cohorts: ``size`` sessions that tick in phase (their steps are
``size`` separate scheduler items; one event per cohort tick), which is what makes 10,000 sessions
at 24 fps cheap. Validation runs use cohorts of one (each room on its own clock, at a random phase).
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

from loadtest.fleet.service import ServiceModel
from worldserve.dynamics.engine.core import WAITING_WINDOW_S, Engine
from worldserve.dynamics.engine.scheduler import Scheduler
from worldserve.dynamics.engine.types import Priority

ACTION_GAP_S = (0.3, 0.7)  # a controller's keys change every U(0.3, 0.7) s (loadtest/live.py)


@dataclass
class Clock:
    now: float = 0.0
    _heap: list = field(default_factory=list)
    _seq: itertools.count = field(default_factory=itertools.count)

    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), fn))

    def run(self, until: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= until:
            t, _, fn = heapq.heappop(heap)
            self.now = t
            fn()
        self.now = until


@dataclass(eq=False)
class Item:
    """One step in a replica's scheduler."""

    owner: object
    deadline: float | None
    submitted: float


class Replica:
    """One model replica: a real Scheduler, one model thread, the engine's batch loop."""

    def __init__(self, clock: Clock, service: ServiceModel, *, max_batch_size: int, interactive_batch_s: float):
        self.clock, self.service = clock, service
        self.scheduler: Scheduler[Item] = Scheduler(max_batch_size, max_queue=10**9)
        self.config = SimpleNamespace(interactive_batch_s=interactive_batch_s, max_batch_size=max_batch_size)
        self._item_s = 0.0  # Engine._batch_limit reads these two
        self.last_waiting = float("-inf")
        self.busy = False
        self.busy_s = 0.0
        self.batches = 0
        self.steps = 0
        self.batch_sizes: list[int] = []
        self.met = 0
        self.missed = 0
        self.deadline_log: list[tuple[float, bool]] = []  # (time, met) of each deadline step
        self.record_from = 0.0

    def submit(self, item: Item, priority: Priority) -> None:
        self.scheduler.submit("t", item, priority, item.deadline)
        if priority != Priority.BULK:
            self.last_waiting = self.clock.now  # the Scheduler's own last_waiting is on the wall clock
        if not self.busy:
            self._start()

    def _start(self) -> None:
        now = self.clock.now
        waiting = now - self.last_waiting < WAITING_WINDOW_S
        batch = self.scheduler.take_batch(Engine._batch_limit(self, waiting))  # type: ignore[arg-type]
        if not batch:
            self.busy = False
            return
        self.busy = True
        took = self.service.batch_time(len(batch))
        if now >= self.record_from:
            self.busy_s += took
            self.batches += 1
            self.steps += len(batch)
            self.batch_sizes.append(len(batch))
        self.clock.at(now + took, lambda: self._end(batch, took))

    def _end(self, batch: list[Item], took: float) -> None:
        per = took / len(batch)
        self._item_s = per if not self._item_s else 0.8 * self._item_s + 0.2 * per
        by_owner: dict[int, tuple[object, list[Item]]] = {}
        for it in batch:
            by_owner.setdefault(id(it.owner), (it.owner, []))[1].append(it)
        for owner, items in by_owner.values():
            owner.batch_done(self, items)  # type: ignore[attr-defined]
        self._start()

    def count_deadline(self, t: float, deadline: float) -> None:
        met = t <= deadline
        if t >= self.record_from:
            self.met += met
            self.missed += not met
        self.deadline_log.append((t, met))


class Cohort:
    """``size`` live sessions ticking in phase at ``fps`` (LiveRoom._run's clock), one controller
    per session changing keys every U(0.3, 0.7) s; key-to-frame is measured as the players of
    loadtest/live.py measure it (send -> first frame acking that action)."""

    def __init__(
        self,
        clock: Clock,
        replica: Replica,
        *,
        size: int,
        fps: float,
        phase: float,
        pre_s: float,
        post_s: float,
        deliver_s: float,
        rng: random.Random,
        record_from: float,
    ):
        self.clock, self.replica, self.size, self.period = clock, replica, size, 1.0 / fps
        self.pre_s, self.post_s, self.deliver_s, self.rng = pre_s, post_s, deliver_s, rng
        self.record_from = record_from
        self.frames = self.misses = self.late = 0
        self.latency_s = 0.0  # summed over the cohort's frames: tick start -> step back
        self.k2f: list[float] = []
        self.sent: list[float] = []  # send time of each action (seq = index + 1)
        self.acked = 0
        self._pending = 0
        self._tick_start = 0.0
        self._used = 0
        self._next_action = phase + rng.uniform(0.0, ACTION_GAP_S[1])
        clock.at(phase, self._tick)

    def _held_seq(self, t: float) -> int:
        while self._next_action <= t:
            self.sent.append(self._next_action)
            self._next_action += self.rng.uniform(*ACTION_GAP_S)
        return len(self.sent)

    def _tick(self) -> None:
        now = self.clock.now
        self._tick_start = now
        self._used = self._held_seq(now)
        deadline = now + self.period
        self._pending = self.size
        self.clock.at(now + self.pre_s, lambda: self._submit(deadline))

    def _submit(self, deadline: float) -> None:
        now = self.clock.now
        for _ in range(self.size):
            self.replica.submit(Item(self, deadline, now), Priority.INTERACTIVE)

    def batch_done(self, replica: Replica, items: list[Item]) -> None:
        t = self.clock.now + self.post_s
        for it in items:
            assert it.deadline is not None
            replica.count_deadline(t, it.deadline)
        self._pending -= len(items)
        if self._pending == 0:  # the cohort's last step: one frame for each session
            self.clock.at(t, self.done)

    def done(self) -> None:
        """LiveRoom._run after its step: broadcast (late?), count the overrun ticks, next tick."""
        done = self.clock.now
        tick_start, period = self._tick_start, self.period
        recording = tick_start >= self.record_from
        overran = max(0, math.ceil((done - (tick_start + period)) / period - 1e-9))
        if recording:
            self.frames += self.size
            self.late += self.size * (done > tick_start + period)
            self.misses += self.size * overran
            self.latency_s += self.size * (done - tick_start)
            if self._used > self.acked:
                self.k2f.append(done + self.deliver_s - self.sent[self._used - 1])
        if self._used > self.acked:
            self.acked = self._used
        next_t = tick_start + period * (1 + overran)
        self.clock.at(max(next_t, done), self._tick)


class EvalClient:
    """``envs`` evaluation environments stepped as one StepBatch (BULK) call, again as soon as the
    last of them returns (closed loop, after ``think_s``)."""

    def __init__(self, clock: Clock, replica: Replica, *, envs: int, pre_s: float, post_s: float, think_s: float):
        self.clock, self.replica, self.envs = clock, replica, envs
        self.pre_s, self.post_s, self.think_s = pre_s, post_s, think_s
        self.steps = 0
        self.record_from = 0.0
        self._pending = 0
        clock.at(clock.now + pre_s, self._submit)

    def _submit(self) -> None:
        self._pending = self.envs
        for _ in range(self.envs):
            self.replica.submit(Item(self, None, self.clock.now), Priority.BULK)

    def batch_done(self, replica: Replica, items: list[Item]) -> None:
        self._pending -= len(items)
        if self.clock.now >= self.record_from:
            self.steps += len(items)
        if self._pending == 0:
            self.clock.at(self.clock.now + self.post_s + self.think_s + self.pre_s, self._submit)


def percentile(xs: list[float], q: float) -> float:
    """The same nearest-rank percentile as loadtest/live.py."""
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


@dataclass
class ReplicaResult:
    sessions: int
    fps: float
    frames: int
    misses: int
    late: int
    k2f_s: list[float]
    engine_met: int
    engine_missed: int
    eval_steps_per_s: float
    utilisation: float
    mean_batch: float
    deadline_steps_per_s: float
    sim_s: float
    inflight: float = 0.0  # requests in flight, time-averaged (Little's law): live steps + eval calls

    @property
    def miss_ratio(self) -> float:
        """As the live scenario reports it: misses / (misses + frames)."""
        return self.misses / max(1, self.misses + self.frames)

    @property
    def engine_miss_ratio(self) -> float:
        """As the replica reports it to the autoscaler: deadline steps missed / answered."""
        return self.engine_missed / max(1, self.engine_met + self.engine_missed)


def simulate_replica(
    service: ServiceModel,
    *,
    sessions: int,
    fps: float,
    duration_s: float,
    warmup_s: float = 2.0,
    cohorts: int | None = None,
    eval_envs: int = 0,
    eval_batch: int = 256,
    eval_think_s: float = 0.0,
    pre_s: float = 0.0,
    post_s: float = 0.0,
    deliver_s: float = 0.0,
    max_batch_size: int = 32,
    interactive_batch_s: float = 0.1,
    seed: int = 0,
) -> ReplicaResult:
    """One replica with ``sessions`` live sessions at ``fps`` (in ``cohorts`` groups; default one
    per session up to 64) and ``eval_envs`` evaluation environments, for ``duration_s`` simulated
    seconds after ``warmup_s``."""
    rng = random.Random(seed)
    clock = Clock()
    rep = Replica(clock, service, max_batch_size=max_batch_size, interactive_batch_s=interactive_batch_s)
    rep.record_from = warmup_s
    groups: list[Cohort] = []
    if sessions:
        n = max(1, min(sessions, cohorts if cohorts else 64))
        sizes = [sessions // n + (i < sessions % n) for i in range(n)]
        for size in sizes:
            groups.append(
                Cohort(
                    clock,
                    rep,
                    size=size,
                    fps=fps,
                    phase=rng.uniform(0.0, 1.0 / fps),
                    pre_s=pre_s,
                    post_s=post_s,
                    deliver_s=deliver_s,
                    rng=rng,
                    record_from=warmup_s,
                )
            )
    evals: list[EvalClient] = []
    left = eval_envs
    while left > 0:
        k = min(eval_batch, left)
        c = EvalClient(clock, rep, envs=k, pre_s=pre_s, post_s=post_s, think_s=eval_think_s)
        c.record_from = warmup_s
        evals.append(c)
        left -= k
    clock.run(warmup_s + duration_s)
    frames = sum(g.frames for g in groups)
    sizes_rec = rep.batch_sizes
    return ReplicaResult(
        sessions=sessions,
        fps=fps,
        frames=frames,
        misses=sum(g.misses for g in groups),
        late=sum(g.late for g in groups),
        k2f_s=[x for g in groups for x in g.k2f],
        engine_met=rep.met,
        engine_missed=rep.missed,
        eval_steps_per_s=sum(c.steps for c in evals) / duration_s,
        utilisation=min(1.0, rep.busy_s / duration_s),
        mean_batch=sum(sizes_rec) / max(1, len(sizes_rec)),
        deadline_steps_per_s=(rep.met + rep.missed) / duration_s,
        sim_s=duration_s,
        inflight=sum(g.latency_s for g in groups) / duration_s + len(evals),
    )


@dataclass
class ClusterResult:
    frames: int
    misses: int
    late: int
    k2f_s: list[float]
    replicas: list[tuple[float, int]]  # (time, running replicas)
    engine_met: int
    engine_missed: int

    @property
    def miss_ratio(self) -> float:
        return self.misses / max(1, self.misses + self.frames)


def simulate_live_cluster(
    service: ServiceModel,
    autoscaler,
    *,
    sessions: int,
    fps: float,
    duration_s: float,
    pre_s: float,
    post_s: float,
    deliver_s: float,
    startup_s: float,
    max_batch_size: int = 32,
    interactive_batch_s: float = 0.1,
    window_s: float = 10.0,
    decide_every_s: float = 1.0,
    seed: int = 0,
    replicas_at: list[tuple[float, int]] | None = None,
) -> ClusterResult:
    """``sessions`` live rooms (one player each) on a model deployment whose replicas the served
    policy scales (``autoscaler``: :class:`loadtest.fleet.autoscale.Autoscaler`); rooms are spread
    over the running replicas round-robin (the consistent-hash router's balance) and move when a
    replica starts. ``replicas_at``: (time, running replicas) to follow instead of the policy (a
    real run's own replica samples)."""
    rng = random.Random(seed)
    clock = Clock()

    def new_replica() -> Replica:
        return Replica(clock, service, max_batch_size=max_batch_size, interactive_batch_s=interactive_batch_s)

    running = [new_replica() for _ in range(autoscaler.target)]
    starting: list[float] = []
    rooms = [
        Cohort(
            clock,
            running[i % len(running)],
            size=1,
            fps=fps,
            phase=rng.uniform(0.0, 1.0 / fps),
            pre_s=pre_s,
            post_s=post_s,
            deliver_s=deliver_s,
            rng=rng,
            record_from=0.0,
        )
        for i in range(sessions)
    ]
    timeline: list[tuple[float, int]] = [(0.0, len(running))]

    def rebalance() -> None:
        for i, room in enumerate(rooms):
            room.replica = running[i % len(running)]

    def replica_up() -> None:
        starting.pop(0)
        running.append(new_replica())
        rebalance()
        timeline.append((clock.now, len(running)))

    def control() -> None:
        now = clock.now
        ratios, rates = [], []
        for r in running:
            while r.deadline_log and r.deadline_log[0][0] < now - window_s:
                r.deadline_log.pop(0)
            n = len(r.deadline_log)
            ratios.append(sum(not m for _, m in r.deadline_log) / n if n else 0.0)
            rates.append(n / window_s)
        ongoing = float(sum(room._pending for room in rooms))
        target = autoscaler.decide(now, len(running), ratios, rates, ongoing)
        while target > len(running) + len(starting):
            starting.append(now)
            clock.at(now + startup_s, replica_up)
        while target < len(running) + len(starting) and len(running) > 1 and not starting:
            running.pop()  # its queued steps still finish (the old object keeps its events)
            rebalance()
            timeline.append((now, len(running)))
        if now + decide_every_s <= duration_s:
            clock.at(now + decide_every_s, control)

    def follow(n: int) -> None:
        while len(running) < n:
            running.append(new_replica())
        while len(running) > max(1, n):
            running.pop()
        rebalance()
        if timeline[-1][1] != len(running):
            timeline.append((clock.now, len(running)))

    if replicas_at is None:
        clock.at(decide_every_s, control)
    else:
        for t, n in replicas_at:
            clock.at(t, functools.partial(follow, n))
    clock.run(duration_s)
    return ClusterResult(
        frames=sum(r.frames for r in rooms),
        misses=sum(r.misses for r in rooms),
        late=sum(r.late for r in rooms),
        k2f_s=[x for r in rooms for x in r.k2f],
        replicas=timeline,
        engine_met=0,
        engine_missed=0,
    )
