"""Autoscaling the model deployments on frame-deadline misses (a Serve custom policy).

Serve's default policy scales on ongoing requests; a model serving live players can keep its
queue short and still miss every frame deadline (each step just takes too long at that batch).
:class:`DeadlineAwarePolicy` takes the default policy's decision and asks one replica more
while the replicas report more than ``miss_ratio`` of their deadline steps missed (their
``record_autoscaling_stats``, over their last 10 s); Serve scales once that has held for
``upscale_delay_s``. While misses stay above it, it never asks for fewer. In the serve config::

    autoscaling_config:
      policy:
        policy_function: worldserve.dynamics.autoscale:DeadlineAwarePolicy
        policy_kwargs: {miss_ratio: 0.1, min_deadline_steps_per_s: 1.0}
"""

from __future__ import annotations

import logging
from typing import Any

from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy
from ray.serve.config import AutoscalingContext

LATE = "worldserve_late"  # in the policy state while frames are late (logged once per episode)
log = logging.getLogger("ray.serve")


class DeadlineAwarePolicy:
    def __init__(self, miss_ratio: float = 0.1, min_deadline_steps_per_s: float = 1.0):
        if not 0 < miss_ratio < 1:
            raise ValueError(f"miss_ratio={miss_ratio}: expected a share in (0, 1)")
        self.miss_ratio, self.min_rate = miss_ratio, min_deadline_steps_per_s

    def miss_ratio_of(self, ctx: AutoscalingContext) -> float | None:
        """The deployment's share of deadline steps missed, weighting each replica by its deadline
        steps a second (None: fewer than ``min_deadline_steps_per_s`` in all)."""
        metrics = ctx.aggregated_metrics or {}
        ratios, rates = metrics.get("deadline_miss_ratio") or {}, metrics.get("deadline_steps_per_s") or {}
        total = sum(rates.values())
        if total < self.min_rate:
            return None
        return sum(ratios.get(r, 0.0) * n for r, n in rates.items()) / total

    def __call__(self, ctx: AutoscalingContext) -> tuple[float, dict[str, Any]]:
        """The replicas wanted now; Serve applies upscale_delay_s / downscale_delay_s (a decision
        must hold that long), the scaling factors and min/max_replicas around this."""
        want, state = replica_queue_length_autoscaling_policy(ctx)
        ratio = self.miss_ratio_of(ctx)
        current = ctx.current_num_replicas
        if ratio is not None and ratio > self.miss_ratio:
            want = max(want, current + 1)  # one more while frames are late; never fewer
            if current < ctx.capacity_adjusted_max_replicas and (ctx.policy_state or {}).get(LATE) is None:
                log.info(
                    "%s: %.0f%% of frame deadlines missed: asking for %d replicas (now %d)",
                    ctx.deployment_name,
                    100 * ratio,
                    current + 1,
                    current,
                )
            state = {**state, LATE: ratio}
        else:
            state = {k: v for k, v in state.items() if k != LATE}
        return want, state
