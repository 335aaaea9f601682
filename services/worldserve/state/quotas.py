"""The Redis side of the tenant quotas (:mod:`worldserve.common.quotas` holds the limits): the
step-rate GCRA and the checks a service runs before it does any work for a tenant."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from worldserve.common.quotas import QuotaExceeded, QuotaMetrics, Quotas, fmt_s
from worldserve.state.store import SessionStore

if TYPE_CHECKING:
    from worldserve.common.metrics import ServiceMetrics

# KEYS: the tenant's rate key (its theoretical arrival time, µs since the epoch). ARGV: emission
# interval (µs per step), burst (steps), cost (steps). Returns {1, 0} (admitted) or {0, µs to wait}.
# Redis's clock (TIME) is the only clock: replicas' clocks may differ.
GCRA = """
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


def rate_key(tenant: str) -> str:
    """The tenant's GCRA key (the hash tag: one slot per tenant in Redis Cluster)."""
    return f"wsq:{{{tenant}}}:steps"


def gcra_args(steps_per_s: float, burst: int, n: int) -> list[str | int]:
    """ARGV of :data:`GCRA` for ``n`` steps at ``steps_per_s`` with ``burst``."""
    return [repr(1e6 / steps_per_s), burst, n]


class QuotaEnforcer:
    """The checks a service runs before it does any work for a tenant."""

    def __init__(self, store: SessionStore, metrics: ServiceMetrics | None = None) -> None:
        self.r = store.r
        self._gcra = self.r.register_script(GCRA)
        self.metrics = QuotaMetrics(metrics) if metrics is not None else None

    def _refuse(self, e: QuotaExceeded) -> QuotaExceeded:
        if self.metrics is not None:
            self.metrics.rejected(e)
        return e

    async def charge_steps(
        self, tenant: str, q: Quotas, n: int = 1, *, wait_s: float = 0.0, hold_s: float = 0.0
    ) -> None:
        """Take ``n`` steps from the tenant's rate; QuotaExceeded with the wait when there is no
        room. ``wait_s``: sleep for room as long as the wait for it is at most this (a short wait
        is paced, not refused). ``hold_s``: hold a refusal this long before answering it (its
        RetryInfo is the rest of the wait), so that a client looping on refusals loops slowly."""
        if not q.steps_per_s or n <= 0:
            return
        await self.settle(tenant, q.steps_per_s, q.step_burst, n, None, wait_s=wait_s, hold_s=hold_s)

    async def settle(
        self,
        tenant: str,
        steps_per_s: float,
        burst: int,
        n: int,
        first: tuple[int, int] | None,
        *,
        wait_s: float = 0.0,
        hold_s: float = 0.0,
    ) -> None:
        """``charge_steps`` from a first GCRA answer ``(ok, µs to wait)`` already fetched (the
        dynamics engine runs the script in the round trip that reads the session; None: run it
        here): paces a short wait, else refuses after ``hold_s``."""
        while True:
            if first is None:
                ok, wait_us = await self._gcra(keys=[rate_key(tenant)], args=gcra_args(steps_per_s, burst, n))
            else:
                (ok, wait_us), first = first, None
            wait = max(0.001, int(wait_us) / 1e6)
            if ok or wait > wait_s:
                break
            await asyncio.sleep(wait)
        if not ok:
            held = min(hold_s, wait)
            if held > 0:
                await asyncio.sleep(held)
            wait = max(0.001, wait - held)
            raise self._refuse(
                QuotaExceeded(
                    "steps_per_s",
                    tenant,
                    f"quota steps_per_s exceeded for tenant {tenant!r} ({steps_per_s:g} steps/s, burst "
                    f"{burst}; this request takes {n}); retry in {fmt_s(wait)}",
                    retry_after_s=wait,
                )
            )
        if self.metrics is not None:
            self.metrics.admitted.inc(n, tenant=self.metrics.tenant_label(tenant))

    def check_step_batch(self, tenant: str, q: Quotas, n: int) -> None:
        if n > q.max_step_batch:
            raise self._refuse(
                QuotaExceeded(
                    "max_step_batch",
                    tenant,
                    f"quota max_step_batch: a StepBatch of {n} steps exceeds tenant {tenant!r}'s limit of "
                    f"{q.max_step_batch}; split it",
                )
            )

    def check_rollout(self, tenant: str, q: Quotas, n: int) -> None:
        if n > q.max_rollout_actions:
            raise self._refuse(
                QuotaExceeded(
                    "max_rollout_actions",
                    tenant,
                    f"quota max_rollout_actions: a Rollout of {n} actions exceeds tenant {tenant!r}'s limit of "
                    f"{q.max_rollout_actions}; split it",
                )
            )

    def check_ttl(self, tenant: str, q: Quotas, ttl_s: int) -> None:
        if ttl_s > q.max_ttl_s:
            raise self._refuse(
                QuotaExceeded(
                    "max_ttl_s",
                    tenant,
                    f"quota max_ttl_s: ttl_s={ttl_s} exceeds tenant {tenant!r}'s ceiling of {q.max_ttl_s} s",
                )
            )

    def sessions_full(self, tenant: str, q: Quotas, live: int, retry_after_s: float | None) -> QuotaExceeded:
        """The refusal of a create or fork over ``max_sessions`` (``live`` sessions counted)."""
        hint = f"; the soonest expires in {fmt_s(retry_after_s)}" if retry_after_s else ""
        return self._refuse(
            QuotaExceeded(
                "max_sessions",
                tenant,
                f"quota max_sessions: tenant {tenant!r} has {live} live sessions (limit {q.max_sessions}); "
                f"delete one{hint}",
                retry_after_s=retry_after_s,
            )
        )

    def live_sessions(self, tenant: str, n: int) -> None:
        if self.metrics is not None:
            self.metrics.sessions.set(n, tenant=self.metrics.tenant_label(tenant))
