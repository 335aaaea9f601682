"""Autoscaling the model deployments on frame-deadline misses (a Serve custom policy).

Serve's default policy scales on ongoing requests; a model serving live players can keep its
queue short and still miss every frame deadline (each step just takes too long at that batch).
:class:`DeadlineAwarePolicy` takes the default policy's decision and adds one replica at a time
while the replicas report more than ``miss_ratio`` of their deadline steps missed (their
``record_autoscaling_stats``), for ``upscale_delay_s`` in a row; while misses stay above it, it
never scales down. In the serve config::

    autoscaling_config:
      policy:
        policy_function: worldserve.dynamics.autoscale:DeadlineAwarePolicy
        policy_kwargs: {miss_ratio: 0.1, min_deadline_steps: 20}
"""

from __future__ import annotations

import time
from typing import Any

from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy
from ray.serve.config import AutoscalingContext

MISS_SINCE = "worldserve_miss_since"


class DeadlineAwarePolicy:
    def __init__(self, miss_ratio: float = 0.1, min_deadline_steps: int = 20):
        if not 0 < miss_ratio < 1:
            raise ValueError(f"miss_ratio={miss_ratio}: expected a share in (0, 1)")
        self.miss_ratio, self.min_deadline_steps = miss_ratio, min_deadline_steps

    def miss_ratio_of(self, ctx: AutoscalingContext) -> float | None:
        """The deployment's share of deadline steps missed over the look-back window (None: too few)."""
        metrics = ctx.aggregated_metrics or {}
        ratios, steps = metrics.get("deadline_miss_ratio") or {}, metrics.get("deadline_steps") or {}
        total = sum(steps.values())
        if total < self.min_deadline_steps:
            return None
        return sum(ratios.get(r, 0.0) * n for r, n in steps.items()) / total

    def __call__(self, ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
        own = (ctx.policy_state or {}).get(MISS_SINCE)
        want, state = replica_queue_length_autoscaling_policy(ctx)
        state = dict(state or {})  # Serve's policy keeps only its own keys: ours goes back in
        if own is not None:
            state[MISS_SINCE] = own
        ratio = self.miss_ratio_of(ctx)
        now = ctx.current_time or time.time()
        current = ctx.current_num_replicas
        if ratio is not None and ratio > self.miss_ratio:
            since = state.setdefault(MISS_SINCE, now)
            delay = getattr(ctx.config, "upscale_delay_s", 30.0) if ctx.config is not None else 30.0
            last_up = ctx.last_scale_up_time
            if now - since >= delay and (last_up is None or now - last_up >= delay):
                want = max(want, current + 1)
                state[MISS_SINCE] = now
            want = max(want, current)  # never down while frames are late
        else:
            state.pop(MISS_SINCE, None)
        want = min(max(int(want), ctx.capacity_adjusted_min_replicas), ctx.capacity_adjusted_max_replicas)
        return want, state
