"""Per-tenant quotas, enforced in Redis so that they hold across every replica.

A tenant's quotas are the cluster's defaults (``Config.quotas``) with the overrides set beside its
key in the key file (``{"tenant": ..., "sha256": ..., "quotas": {"steps_per_s": 20}}``).

- ``max_sessions``: live sessions (CreateSession and ForkSession reserve a slot in the tenant's
  session index in one Lua script: two replicas never both take the last slot).
- ``steps_per_s`` / ``step_burst``: a GCRA (generic cell rate algorithm) per tenant, one Lua
  script and one key holding the "theoretical arrival time": a Step costs 1, a StepBatch its item
  count, a Rollout or Play each of its steps. Redis's clock decides, not the replicas'.
- ``max_rollout_actions``, ``max_step_batch``, ``max_ttl_s``: limits on one request.

The Redis side (the session-count script, the GCRA) is :class:`worldserve.state.quotas.QuotaEnforcer`.
A refusal raises :class:`QuotaExceeded` (RESOURCE_EXHAUSTED, naming the quota). When waiting helps,
it carries ``retry_after_s``, sent to the client as ``google.rpc.RetryInfo`` in the status details;
nothing was applied, so a client may retry after that delay (the SDK does).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from worldserve.common.errors import ResourceExhausted

if TYPE_CHECKING:
    from worldserve.common.metrics import ServiceMetrics

MAX_TTL_S = 30 * 24 * 3600
TENANT_LABELS = 64
"""Distinct tenants named in quota metrics; the rest are counted under "other" (bounded labels)."""


def check_fields(cls: type, value: Mapping[str, Any], what: str) -> None:
    """ValueError naming the keys of ``value`` that are not fields of the dataclass ``cls``."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"{what}: unknown fields {unknown}; known: {sorted(known)}")


@dataclass(frozen=True)
class Quotas:
    """One tenant's limits. 0 means unlimited where noted."""

    max_sessions: int = 1000
    """Live sessions (created or forked, not yet deleted or expired); 0: unlimited."""
    steps_per_s: float = 2000.0
    """Sustained steps per second over all of the tenant's sessions; 0: unlimited."""
    step_burst: int = 2048
    """Steps the tenant may take at once above the sustained rate (at least ``max_step_batch``)."""
    max_rollout_actions: int = 256
    """Most actions in one Rollout (the cluster's ``max_rollout_actions`` bounds it too)."""
    max_step_batch: int = 1024
    """Most items in one StepBatch (the cluster's ``max_queue`` bounds it too)."""
    max_ttl_s: int = MAX_TTL_S
    """Longest session TTL a CreateSession may ask for."""

    def __post_init__(self) -> None:
        for name in ("max_sessions", "step_burst", "max_rollout_actions", "max_step_batch", "max_ttl_s"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"quotas.{name}={v!r}: expected an integer >= 0")
        if (
            not isinstance(self.steps_per_s, (int, float))
            or not math.isfinite(self.steps_per_s)
            or self.steps_per_s < 0
        ):
            raise ValueError(f"quotas.steps_per_s={self.steps_per_s!r}: expected a number >= 0")
        if self.max_rollout_actions < 1 or self.max_step_batch < 1:
            raise ValueError("quotas.max_rollout_actions and quotas.max_step_batch must be at least 1")
        if not 60 <= self.max_ttl_s <= MAX_TTL_S:
            raise ValueError(f"quotas.max_ttl_s={self.max_ttl_s} is out of range [60, {MAX_TTL_S}]")
        if self.steps_per_s and self.step_burst < self.max_step_batch:
            raise ValueError(
                f"quotas.step_burst={self.step_burst} is below quotas.max_step_batch="
                f"{self.max_step_batch}: a full StepBatch could never pass"
            )

    @classmethod
    def parse(cls, value: Any, base: Quotas | None = None) -> Quotas:
        """``value`` (a mapping of fields, or a Quotas) over ``base`` (default: the code defaults)."""
        if isinstance(value, Quotas):
            return value
        if value is None:
            return base or cls()
        if not isinstance(value, Mapping):
            raise ValueError(f"quotas must be a mapping, got {value!r}")
        check_fields(cls, value, "quotas")
        return dataclasses.replace(base or cls(), **dict(value))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class QuotaExceeded(ResourceExhausted):
    """A tenant's quota refuses this request; nothing was applied.

    ``retry_after_s``: when a retry may pass (None: waiting does not help, the request itself is
    over the limit)."""

    def __init__(self, quota: str, tenant: str, message: str, retry_after_s: float | None = None):
        super().__init__(message, retry_after_s)
        self.quota = quota
        self.tenant = tenant


def fmt_s(s: float) -> str:
    return f"{s:.3g} s" if s < 10 else f"{s:.0f} s"


class QuotaMetrics:
    """Usage and refusals, labelled by quota and tenant (at most ``TENANT_LABELS`` tenants named)."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.rejections = metrics.counter("quota_rejections", "Requests refused by a tenant quota", ("quota", "tenant"))
        self.admitted = metrics.counter(
            "quota_steps_admitted", "Steps admitted by the tenant step-rate quota", ("tenant",)
        )
        self.sessions = metrics.gauge(
            "quota_live_sessions", "A tenant's live sessions, as last counted at a create", ("tenant",)
        )
        self._named: set[str] = set()

    def tenant_label(self, tenant: str) -> str:
        if tenant in self._named:
            return tenant
        if len(self._named) < TENANT_LABELS:
            self._named.add(tenant)
            return tenant
        return "other"

    def rejected(self, e: QuotaExceeded) -> None:
        self.rejections.inc(quota=e.quota, tenant=self.tenant_label(e.tenant))
