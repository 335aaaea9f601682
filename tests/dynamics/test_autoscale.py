"""DeadlineAwarePolicy: Serve's queue-length decision, plus a replica while deadlines are missed
(Serve's own wrapper applies the delays and bounds around it)."""

from __future__ import annotations

import pytest
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from worldserve.dynamics.autoscale import LATE, DeadlineAwarePolicy

REPLICAS = ["replica-0", "replica-1"]  # the policy only sums over them


def ctx(ratios: list[float], rates: list[float], *, current=2, ongoing=0.0, state=None):
    cfg = AutoscalingConfig(min_replicas=1, max_replicas=4, target_ongoing_requests=32, upscale_delay_s=5)
    return AutoscalingContext(
        deployment_id=None,
        deployment_name="DynamicsModel-platformer",
        app_name="dynamics",
        current_num_replicas=current,
        target_num_replicas=current,
        running_replicas=REPLICAS[:current],
        total_num_requests=ongoing,
        total_queued_requests=0.0,
        aggregated_metrics={
            "deadline_miss_ratio": dict(zip(REPLICAS, ratios)),
            "deadline_steps_per_s": dict(zip(REPLICAS, rates)),
        },
        raw_metrics={},
        capacity_adjusted_min_replicas=1,
        capacity_adjusted_max_replicas=4,
        policy_state=dict(state or {}),
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=100.0,
        config=cfg,
    )


def test_missed_deadlines_ask_for_one_more_replica_and_never_fewer():
    p = DeadlineAwarePolicy(miss_ratio=0.1, min_deadline_steps_per_s=1.0)
    want, state = p(ctx([0.3, 0.1], [10.0, 10.0]))  # 20% missed over both, weighted by rate
    assert want == 3 and state[LATE] == pytest.approx(0.2)
    want, state = p(ctx([0.3, 0.0], [10.0, 90.0], ongoing=64.0))  # 3% missed: the queue decides alone
    assert want == 2 and LATE not in state
    want, _ = p(ctx([0.5, 0.5], [5.0, 5.0], ongoing=320.0))  # the queue wants more than one more: it wins
    assert want == 10


def test_too_few_deadline_steps_leave_the_queue_policy_alone():
    p = DeadlineAwarePolicy(miss_ratio=0.1, min_deadline_steps_per_s=1.0)
    want, state = p(ctx([1.0, 1.0], [0.2, 0.3]))
    assert want == 0 and LATE not in state  # no load at all: the queue policy would scale down


def test_bad_kwargs_are_refused():
    with pytest.raises(ValueError, match="miss_ratio"):
        DeadlineAwarePolicy(miss_ratio=1.5)
