"""Per-tenant quotas, enforced in Redis so that they hold across every replica.

A tenant's quotas are the cluster's defaults (``Config.quotas``) with the overrides set beside its
key in the key file (``{"tenant": ..., "sha256": ..., "quotas": {"steps_per_s": 20}}``).

- ``max_sessions``: live sessions (CreateSession and ForkSession reserve a slot in the tenant's
  session index in one Lua script: two replicas never both take the last slot).
- ``steps_per_s`` / ``step_burst``: a GCRA (generic cell rate algorithm) per tenant, one Lua
  script and one key holding the "theoretical arrival time": a Step costs 1, a StepBatch its item
  count, a Rollout or Play each of its steps. Redis's clock decides, not the replicas'.
- ``max_rollout_actions``, ``max_step_batch``, ``max_ttl_s``: limits on one request.

A refusal raises :class:`QuotaExceeded` (RESOURCE_EXHAUSTED, naming the quota). When waiting helps,
it carries ``retry_after_s``, sent to the client as ``google.rpc.RetryInfo`` in the status details;
nothing was applied, so a client may retry after that delay (the SDK does).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worldserve.common.errors import ResourceExhausted

MAX_TTL_S = 30 * 24 * 3600
TENANT_LABELS = 64
"""Distinct tenants named in quota metrics; the rest are counted under "other" (bounded labels)."""


def check_fields(cls: type, value: Mapping, what: str) -> None:
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
        if not isinstance(self.steps_per_s, (int, float)) or not math.isfinite(self.steps_per_s) or self.steps_per_s < 0:
            raise ValueError(f"quotas.steps_per_s={self.steps_per_s!r}: expected a number >= 0")
        if self.max_rollout_actions < 1 or self.max_step_batch < 1:
            raise ValueError("quotas.max_rollout_actions and quotas.max_step_batch must be at least 1")
        if not 60 <= self.max_ttl_s <= MAX_TTL_S:
            raise ValueError(f"quotas.max_ttl_s={self.max_ttl_s} is out of range [60, {MAX_TTL_S}]")
        if self.steps_per_s and self.step_burst < self.max_step_batch:
            raise ValueError(f"quotas.step_burst={self.step_burst} is below quotas.max_step_batch="
                             f"{self.max_step_batch}: a full StepBatch could never pass")

    @classmethod
    def parse(cls, value: Any, base: "Quotas | None" = None) -> "Quotas":
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


def _fmt_s(s: float) -> str:
    return f"{s:.3g} s" if s < 10 else f"{s:.0f} s"


# KEYS: the tenant's rate key (its theoretical arrival time, µs since the epoch). ARGV: emission
# interval (µs per step), burst (steps), cost (steps). Returns {1, 0} (admitted) or {0, µs to wait}.
# Redis's clock (TIME) is the only clock: replicas' clocks may differ.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + cost * interval
local allow_at = new_tat - burst * interval
if allow_at > now then return {0, math.ceil(allow_at - now)} end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, 0}
"""


class QuotaMetrics:
    """Usage and refusals, labelled by quota and tenant (at most ``TENANT_LABELS`` tenants named)."""

    def __init__(self, metrics) -> None:
        self.rejections = metrics.counter("quota_rejections", "Requests refused by a tenant quota", ("quota", "tenant"))
        self.admitted = metrics.counter("quota_steps_admitted", "Steps admitted by the tenant step-rate quota",
                                        ("tenant",))
        self.sessions = metrics.gauge("quota_live_sessions", "A tenant's live sessions, as last counted at a create",
                                      ("tenant",))
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


class QuotaEnforcer:
    """The checks a service runs before it does any work for a tenant."""

    def __init__(self, redis, metrics=None) -> None:
        self.r = redis
        self._gcra = redis.register_script(_GCRA)
        self.metrics = QuotaMetrics(metrics) if metrics is not None else None

    @staticmethod
    def _rate_key(tenant: str) -> str:
        return f"wsq:{{{tenant}}}:steps"  # the hash tag: one slot per tenant in Redis Cluster

    def _refuse(self, e: QuotaExceeded) -> QuotaExceeded:
        if self.metrics is not None:
            self.metrics.rejected(e)
        return e

    async def charge_steps(self, tenant: str, q: Quotas, n: int = 1, *, wait_s: float = 0.0,
                           hold_s: float = 0.0) -> None:
        """Take ``n`` steps from the tenant's rate; QuotaExceeded with the wait when there is no
        room. ``wait_s``: sleep for room as long as the wait for it is at most this (a short wait
        is paced, not refused). ``hold_s``: hold a refusal this long before answering it (its
        RetryInfo is the rest of the wait), so that a client looping on refusals loops slowly."""
        if not q.steps_per_s or n <= 0:
            return
        interval_us = 1e6 / q.steps_per_s
        while True:
            ok, wait_us = await self._gcra(keys=[self._rate_key(tenant)], args=[repr(interval_us), q.step_burst, n])
            wait = max(0.001, int(wait_us) / 1e6)
            if ok or wait > wait_s:
                break
            await asyncio.sleep(wait)
        if not ok:
            held = min(hold_s, wait)
            if held > 0:
                await asyncio.sleep(held)
            wait = max(0.001, wait - held)
            raise self._refuse(QuotaExceeded(
                "steps_per_s", tenant,
                f"quota steps_per_s exceeded for tenant {tenant!r} ({q.steps_per_s:g} steps/s, burst "
                f"{q.step_burst}; this request takes {n}); retry in {_fmt_s(wait)}", retry_after_s=wait))
        if self.metrics is not None:
            self.metrics.admitted.inc(n, tenant=self.metrics.tenant_label(tenant))

    def check_step_batch(self, tenant: str, q: Quotas, n: int) -> None:
        if n > q.max_step_batch:
            raise self._refuse(QuotaExceeded(
                "max_step_batch", tenant,
                f"quota max_step_batch: a StepBatch of {n} steps exceeds tenant {tenant!r}'s limit of "
                f"{q.max_step_batch}; split it"))

    def check_rollout(self, tenant: str, q: Quotas, n: int) -> None:
        if n > q.max_rollout_actions:
            raise self._refuse(QuotaExceeded(
                "max_rollout_actions", tenant,
                f"quota max_rollout_actions: a Rollout of {n} actions exceeds tenant {tenant!r}'s limit of "
                f"{q.max_rollout_actions}; split it"))

    def check_ttl(self, tenant: str, q: Quotas, ttl_s: int) -> None:
        if ttl_s > q.max_ttl_s:
            raise self._refuse(QuotaExceeded(
                "max_ttl_s", tenant,
                f"quota max_ttl_s: ttl_s={ttl_s} exceeds tenant {tenant!r}'s ceiling of {q.max_ttl_s} s"))

    def sessions_full(self, tenant: str, q: Quotas, live: int, retry_after_s: float | None) -> QuotaExceeded:
        """The refusal of a create or fork over ``max_sessions`` (``live`` sessions counted)."""
        hint = f"; the soonest expires in {_fmt_s(retry_after_s)}" if retry_after_s else ""
        return self._refuse(QuotaExceeded(
            "max_sessions", tenant,
            f"quota max_sessions: tenant {tenant!r} has {live} live sessions (limit {q.max_sessions}); "
            f"delete one{hint}", retry_after_s=retry_after_s))

    def live_sessions(self, tenant: str, n: int) -> None:
        if self.metrics is not None:
            self.metrics.sessions.set(n, tenant=self.metrics.tenant_label(tenant))
