"""The fleet scenario: a day of live sessions and evaluation environments on N GPU replicas.

Two levels (the abstraction that makes a simulated day cost minutes, not days):

- the day is stepped every ``step_s`` (10 s): the load curve gives the live sessions and the
  evaluation environments at that moment; the served autoscaling policy (DeadlineAwarePolicy in
  Serve's delay wrapper, :mod:`loadtest.fleet.autoscale`) sets the running replicas from what they
  reported over the step; sessions and environments are spread evenly over the running replicas
  (the consistent-hash router's balance);
- what one replica does with its share (``sessions``, ``envs``) is an event-level simulation
  (:func:`loadtest.fleet.sim.simulate_replica`: the real Scheduler, the engine's batch cut, the
  live rooms' clock) of a few simulated seconds, run once per distinct share (shares are rounded
  to a 2% geometric grid) and reused for every step and every N with that share.

Redis ops/s and archive bytes/s are per-step costs (the capacity table's, or the defaults named in
the report) times the steps served.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from loadtest.fleet.autoscale import Autoscaler
from loadtest.fleet.curve import LoadCurve
from loadtest.fleet.service import ServiceModel
from loadtest.fleet.sim import ReplicaResult, simulate_replica

K2F_BIN_S = 0.005
K2F_BINS = 400  # 0 .. 2 s, the last bin holds everything beyond


def _grid(x: float, step: float = 0.02) -> int:
    """``x`` rounded up to a geometric grid (exact below 50)."""
    if x <= 50:
        return int(math.ceil(x))
    k = math.ceil(math.log(x) / math.log(1 + step))
    return int(math.ceil((1 + step) ** k))


@dataclass
class FleetParams:
    sessions: int = 10_000
    fps: float = 24.0
    eval_envs: int = 100_000
    eval_batch: int = 256
    eval_think_s: float = 0.05
    eval_follows_curve: bool = False
    pre_s: float = 0.004
    post_s: float = 0.004
    deliver_s: float = 0.005
    max_batch_size: int = 32
    interactive_batch_s: float = 0.1
    step_s: float = 10.0
    decide_s: float = 1.0  # the autoscaling policy is asked this often
    micro_s: float = 3.0
    startup_s: float = 60.0
    upscale_delay_s: float = 5.0
    downscale_delay_s: float = 30.0
    target_ongoing_requests: float = 32.0
    miss_ratio_policy: float = 0.1
    redis_ops_per_step: float = 2.0
    archive_bytes_per_step: float = 0.0
    autoscale: bool = True  # False: every GPU serves all day (min_replicas = max_replicas)


@dataclass
class DayResult:
    gpus: int
    hours: list[float] = field(default_factory=list)
    replicas: list[int] = field(default_factory=list)
    sessions: list[int] = field(default_factory=list)
    miss_ratio: list[float] = field(default_factory=list)
    redis_ops_s: list[float] = field(default_factory=list)
    archive_bytes_s: list[float] = field(default_factory=list)
    eval_steps_s: list[float] = field(default_factory=list)
    k2f_hist: list[float] = field(default_factory=lambda: [0.0] * K2F_BINS)
    misses: float = 0.0
    frames: float = 0.0

    @property
    def day_miss_ratio(self) -> float:
        return self.misses / max(1.0, self.misses + self.frames)

    @property
    def peak_hour_miss_ratio(self) -> float:
        return max(self.miss_ratio) if self.miss_ratio else 0.0

    def k2f_percentile(self, q: float) -> float:
        total = sum(self.k2f_hist)
        if not total:
            return float("nan")
        acc = 0.0
        for i, w in enumerate(self.k2f_hist):
            acc += w
            if acc >= q / 100 * total:
                return (i + 1) * K2F_BIN_S
        return K2F_BINS * K2F_BIN_S


class Fleet:
    def __init__(self, service: ServiceModel, curve: LoadCurve, params: FleetParams):
        self.service, self.curve, self.p = service, curve, params
        self._cache: dict[tuple[int, int], ReplicaResult] = {}
        logging.getLogger("ray.serve").setLevel(logging.WARNING)

    @property
    def micro_runs(self) -> int:
        return len(self._cache)

    def replica(self, sessions: int, envs: int) -> ReplicaResult:
        key = (_grid(sessions), _grid(envs))
        r = self._cache.get(key)
        if r is None:
            p = self.p
            r = simulate_replica(
                self.service,
                sessions=key[0],
                fps=p.fps,
                duration_s=p.micro_s,
                warmup_s=1.0,
                cohorts=48,
                eval_envs=key[1],
                eval_batch=p.eval_batch,
                eval_think_s=p.eval_think_s,
                pre_s=p.pre_s,
                post_s=p.post_s,
                deliver_s=p.deliver_s,
                max_batch_size=p.max_batch_size,
                interactive_batch_s=p.interactive_batch_s,
                seed=len(self._cache),
            )
            self._cache[key] = r
        return r

    def day(self, gpus: int, progress=None) -> DayResult:
        p = self.p
        res = DayResult(gpus)
        auto = Autoscaler(
            min_replicas=1 if p.autoscale else gpus,
            max_replicas=gpus,
            initial_replicas=max(1, math.ceil(gpus * self.curve.at(0.0))) if p.autoscale else gpus,
            target_ongoing_requests=p.target_ongoing_requests,
            upscale_delay_s=p.upscale_delay_s,
            downscale_delay_s=p.downscale_delay_s,
            miss_ratio=p.miss_ratio_policy,
        )
        running = auto.target
        pending: list[tuple[float, int]] = []  # (ready at, replicas) started and not yet up
        steps = int(24 * 3600 / p.step_s)
        for i in range(steps):
            t = i * p.step_s
            hour = t / 3600.0
            frac = self.curve.at(hour)
            live = int(round(p.sessions * frac))
            envs = int(round(p.eval_envs * (frac if p.eval_follows_curve else 1.0)))
            while pending and pending[0][0] <= t:
                running += pending.pop(0)[1]
            r = self.replica(math.ceil(live / running) if live else 0, math.ceil(envs / running) if envs else 0)
            frames = live * p.fps * p.step_s * (1 - r.miss_ratio) if live else 0.0
            misses = live * p.fps * p.step_s * r.miss_ratio if live else 0.0
            res.frames += frames
            res.misses += misses
            if live and r.k2f_s:
                w = live * p.step_s / len(r.k2f_s)
                for x in r.k2f_s:
                    res.k2f_hist[min(K2F_BINS - 1, int(x / K2F_BIN_S))] += w
            steps_s = (frames / p.step_s) + r.eval_steps_per_s * running
            if i % max(1, int(300 / p.step_s)) == 0:  # a point every 5 minutes for the plots
                res.hours.append(hour)
                res.replicas.append(running)
                res.sessions.append(live)
                res.miss_ratio.append(r.miss_ratio if live else 0.0)
                res.redis_ops_s.append(steps_s * p.redis_ops_per_step)
                res.archive_bytes_s.append(steps_s * p.archive_bytes_per_step)
                res.eval_steps_s.append(r.eval_steps_per_s * running)
            # Serve's controller asks the policy about every second; the replicas' figures are this
            # step's (their share is fixed within it)
            per = r.inflight
            for k in range(int(p.step_s / p.decide_s) if p.autoscale else 0):  # fixed: nothing to decide
                tk = t + k * p.decide_s
                while pending and pending[0][0] <= tk:
                    running += pending.pop(0)[1]
                # identical replicas: one aggregate entry (the policy weights ratios by steps/s)
                want = auto.decide(
                    tk, running, [r.engine_miss_ratio], [r.deadline_steps_per_s * running], running * per
                )
                inflight = running + sum(n for _, n in pending)
                if want > inflight:
                    pending.append((tk + p.startup_s, want - inflight))
                elif want < running and not pending:
                    running = want
            if progress is not None:
                progress(i + 1, steps)
        return res

    def search(self, slo: float, lo: int, hi: int, progress=None) -> tuple[int | None, dict[int, DayResult]]:
        """The fewest GPUs (max replicas) whose day holds ``slo`` (day miss ratio), by bisection
        over [lo, hi]; every day run is returned."""
        runs: dict[int, DayResult] = {}

        def ok(n: int) -> bool:
            if n not in runs:
                runs[n] = self.day(n, progress)
            return runs[n].day_miss_ratio <= slo

        if not ok(hi):
            return None, runs
        while lo < hi:
            mid = (lo + hi) // 2
            if ok(mid):
                hi = mid
            else:
                lo = mid + 1
        ok(lo)
        return lo, runs
