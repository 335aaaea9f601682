"""DeadlineAwarePolicy: Serve's queue-length decision, plus a replica while deadlines are missed."""

from __future__ import annotations

import pytest
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from worldserve.dynamics.autoscale import MISS_SINCE, DeadlineAwarePolicy

REPLICAS = ["replica-0", "replica-1"]  # the policy only sums over them


def ctx(ratio: float, steps: float, *, now: float, state=None, last_up=None, current=2, ongoing=0.0):
    cfg = AutoscalingConfig(min_replicas=1, max_replicas=4, target_ongoing_requests=32, upscale_delay_s=5)
    return AutoscalingContext(
        deployment_id=None, deployment_name="DynamicsModel-platformer", app_name="dynamics", current_num_replicas=current,
        target_num_replicas=current, running_replicas=REPLICAS[:current], total_num_requests=ongoing,
        total_queued_requests=0.0,
        aggregated_metrics={"deadline_miss_ratio": {r: ratio for r in REPLICAS[:current]},
                            "deadline_steps": {r: steps for r in REPLICAS[:current]}},
        raw_metrics={}, capacity_adjusted_min_replicas=1, capacity_adjusted_max_replicas=4,
        policy_state=dict(state or {}), last_scale_up_time=last_up, last_scale_down_time=None, current_time=now,
        config=cfg,
    )


def test_misses_add_a_replica_after_the_upscale_delay_and_hold_it():
    p = DeadlineAwarePolicy(miss_ratio=0.1, min_deadline_steps=20)
    n, state = p(ctx(0.5, 50, now=100.0))
    assert n == 2 and state[MISS_SINCE] == 100.0  # missing, but not for upscale_delay_s yet: hold
    n, state = p(ctx(0.5, 50, now=106.0, state=state))
    assert n == 3  # one more replica
    n, state = p(ctx(0.5, 50, now=107.0, state=state, last_up=106.0, current=3))
    assert n == 3  # not another before the delay has passed again


def test_few_deadline_steps_or_few_misses_leave_the_default_policy_alone():
    p = DeadlineAwarePolicy(miss_ratio=0.1, min_deadline_steps=20)
    for ratio, steps in ((0.9, 5), (0.05, 500)):
        n, state = p(ctx(ratio, steps, now=200.0, state={MISS_SINCE: 100.0}))
        assert MISS_SINCE not in state and n <= 2


def test_bad_kwargs_are_refused():
    with pytest.raises(ValueError, match="miss_ratio"):
        DeadlineAwarePolicy(miss_ratio=1.5)
