"""The served autoscaling policy, called in simulated time.

``worldserve.dynamics.autoscale.DeadlineAwarePolicy`` is called with a real
``ray.serve.config.AutoscalingContext`` built from the simulated replicas' figures (each replica's
deadline-miss share and deadline steps/s over its last ``DEADLINE_WINDOW_S``, as its
``record_autoscaling_stats`` reports them, and the requests in flight), wrapped in Serve's own
``_apply_autoscaling_config`` (scaling factors and the upscale/downscale delays). Serve's delay
logic reads ``time.time()``; the wrapper is called with that module's clock pointed at simulated
time for the call. min/max_replicas bound the answer as Serve's controller does.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import ray.serve.autoscaling_policy as serve_policy
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from worldserve.dynamics.autoscale import DeadlineAwarePolicy


@contextlib.contextmanager
def _sim_clock(now: float) -> Iterator[None]:
    real = serve_policy.time
    serve_policy.time = SimpleNamespace(time=lambda: now)  # type: ignore[assignment]
    try:
        yield
    finally:
        serve_policy.time = real


class Autoscaler:
    """One deployment's replica target, decided by the served policy."""

    def __init__(
        self,
        *,
        min_replicas: int,
        max_replicas: int,
        initial_replicas: int,
        target_ongoing_requests: float = 32,
        upscale_delay_s: float = 5,
        downscale_delay_s: float = 30,
        miss_ratio: float = 0.1,
        min_deadline_steps_per_s: float = 1.0,
    ):
        self.config = AutoscalingConfig(
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            initial_replicas=initial_replicas,
            target_ongoing_requests=target_ongoing_requests,
            upscale_delay_s=upscale_delay_s,
            downscale_delay_s=downscale_delay_s,
        )
        self.policy = DeadlineAwarePolicy(miss_ratio=miss_ratio, min_deadline_steps_per_s=min_deadline_steps_per_s)
        self._wrapped = serve_policy._apply_autoscaling_config(self.policy)
        self.target = initial_replicas
        self.state: dict[str, Any] = {}

    def decide(self, now: float, current: int, ratios: list[float], rates: list[float], ongoing: float) -> int:
        """The new replica target given each running replica's (miss ratio, deadline steps/s) (or
        fewer entries standing for all: the policy only weights ratios by steps/s)."""
        ids: list[Any] = [f"replica-{i}" for i in range(len(ratios))]  # the policy only keys dicts by them
        ctx = AutoscalingContext(
            deployment_id=None,  # type: ignore[arg-type]
            deployment_name="DynamicsModel-sim",
            app_name="dynamics",
            current_num_replicas=current,
            target_num_replicas=self.target,
            running_replicas=ids,
            total_num_requests=ongoing,
            total_queued_requests=0.0,
            aggregated_metrics={
                "deadline_miss_ratio": dict(zip(ids, ratios)),
                "deadline_steps_per_s": dict(zip(ids, rates)),
            },
            raw_metrics={},
            capacity_adjusted_min_replicas=self.config.min_replicas,
            capacity_adjusted_max_replicas=self.config.max_replicas,
            policy_state=dict(self.state),
            last_scale_up_time=None,
            last_scale_down_time=None,
            current_time=now,
            config=self.config,
        )
        with _sim_clock(now):
            want, self.state = self._wrapped(ctx)
        self.target = int(min(self.config.max_replicas, max(self.config.min_replicas, math.ceil(want))))
        return self.target
