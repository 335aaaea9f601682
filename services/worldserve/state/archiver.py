"""The archiver: moves full chunks of sessions' steps from Redis to the archive, then trims Redis.

A step is acknowledged when it is in Redis (the truth). When a session has a full chunk of steps
after its last archived one, the engine marks it due (``ws:archive:due``). An archiver (a
background task in each sessions replica) claims due sessions with a lease, and for each full
chunk: reads the steps from Redis, writes the chunk and lists it in the manifest, then records
the new archived step in Redis with a compare-and-set and drops what Redis no longer needs (the
steps older than the hot window). Killed anywhere in between, it loses nothing and duplicates
nothing: the next claim (after the lease) rewrites the same chunk object under the same name, the
manifest lists it once, and the compare-and-set moves ``archived`` once.

While the object store is away a session's pass fails; the archiver puts it back in the queue after
an exponential backoff of its own (``retry_initial_s`` doubling to ``retry_max_s``, with jitter)
rather than after the whole lease, and pauses as long after a pass in which everything failed, so
archiving resumes within ``retry_max_s`` of the store's return. Meanwhile Redis holds the steps
(Steps answer RESOURCE_EXHAUSTED past ``archive_max_tail_steps``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from worldserve.common.errors import NotFound
from worldserve.state.archive import Archive
from worldserve.state.store import SessionStore

if TYPE_CHECKING:
    from worldserve.common.metrics import Metric, ServiceMetrics

log = logging.getLogger("worldserve.archiver")
GC_LOCK = "ws:archive:gc"  # held by the archiver that looks for expired sessions' archives


@dataclass(frozen=True)
class ArchivePolicy:
    chunk_steps: int = 64
    """Steps in one archived chunk."""
    hot_window: int = 32
    """Steps whose action, latent and frame stay in Redis after they are archived (at least the
    served models' context window)."""
    rid_keep: int = 4096
    """Steps whose request ids stay in Redis (a retry of an older step is not recognised)."""
    latents: bool = True
    """Archive the latents too (a resume from an archived step needs them)."""
    lease_s: float = 30.0
    """How long a claimed session is left to its archiver before another may take it."""
    expired_grace_s: float = 3600.0
    """An archived session whose Redis record is gone (deleted, or expired by its TTL) has its
    archive deleted once its folder is this old (forks still reading its chunks keep them)."""
    gc_interval_s: float = 300.0
    """How often one archiver of the cluster looks for such archives."""
    retry_initial_s: float = 0.5
    """After a failed pass a session is claimable again this long after (doubling per failure)."""
    retry_max_s: float = 8.0
    """The most a failing session (or, after a pass that failed whole, the archiver) waits."""


class Archiver:
    def __init__(
        self,
        store: SessionStore,
        archive: Archive,
        policy: ArchivePolicy = ArchivePolicy(),
        metrics: ServiceMetrics | None = None,
    ):
        self.store, self.archive, self.policy = store, archive, policy
        self.m_chunks: Metric | None = None
        self.m_failures: Metric | None = None
        self.m_collected: Metric | None = None
        self.m_due: Metric | None = None
        self.m_lag: Metric | None = None
        self.fails: dict[tuple[str, str], int] = {}  # consecutive failed passes per session
        self.streak = 0  # consecutive passes in which every claimed session failed
        self.lag = 0  # the most unarchived steps of a session claimed in the current pass
        if metrics is not None:
            self.m_chunks = metrics.counter("archive_chunks", "Chunks of steps written to the archive")
            self.m_collected = metrics.counter("archive_collected", "Archives of expired sessions deleted")
            self.m_failures = metrics.counter("archive_failures", "Archive passes that failed, by reason", ("reason",))
            self.m_due = metrics.gauge("archive_due_sessions", "Sessions with a full chunk waiting to be archived")
            self.m_lag = metrics.gauge(
                "archive_lag_steps", "Most unarchived steps of a session this archiver claimed in its last pass"
            )

    async def archive_session(self, tenant: str, sid: str) -> int:
        """Archive every full chunk the session has; returns how many were written."""
        p = self.policy
        written = 0
        try:
            rec = await self.store.get(tenant, sid, touch=False)
        except NotFound:
            await self.store.done_due(tenant, sid)
            return 0
        self.lag = max(self.lag, rec.step - rec.archived)
        while rec.step - rec.archived >= p.chunk_steps:
            first, last = rec.archived + 1, rec.archived + p.chunk_steps
            entries = await self.store.log_entries(tenant, sid, first, last, latents=p.latents)
            missing = [first + i for i, e in enumerate(entries) if e is None]
            if missing:  # deleted meanwhile, or an inconsistency: never archive a gap
                log.warning("session %s/%s: steps %s are not in Redis; not archived", tenant, sid, missing[:8])
                self._failed("missing_steps")
                break
            await self.archive.write_chunk(tenant, sid, [e for e in entries if e is not None])
            got = await self.store.trim(
                tenant, sid, expected=rec.archived, archived=last, window=p.hot_window, rid_keep=p.rid_keep
            )
            if got < 0:  # gone, or another archiver moved it first
                break
            written += 1
            if self.m_chunks is not None:
                self.m_chunks.inc()
            rec = await self.store.get(tenant, sid, touch=False)
        if rec.step - rec.archived < p.chunk_steps:
            await self.store.done_due(tenant, sid)
        return written

    def _failed(self, reason: str) -> None:
        if self.m_failures is not None:
            self.m_failures.inc(reason=reason)

    def _delay(self, fails: int) -> float:
        """Exponential backoff with jitter after ``fails`` consecutive failures (>= 1)."""
        p = self.policy
        return min(p.retry_max_s, p.retry_initial_s * 2.0 ** min(fails - 1, 30)) * random.uniform(0.8, 1.0)

    async def run_once(self, n: int = 8) -> int:
        """Claim up to ``n`` due sessions and archive them; returns the chunks written. A session
        whose pass fails is claimable again after its backoff."""
        total = failed = 0
        self.lag = 0
        claimed = await self.store.claim_due(n, self.policy.lease_s)
        for tenant, sid in claimed:
            try:
                total += await self.archive_session(tenant, sid)
                self.fails.pop((tenant, sid), None)
            except Exception as e:
                failed += 1
                k = self.fails[(tenant, sid)] = self.fails.get((tenant, sid), 0) + 1
                delay = self._delay(k)
                log.warning(
                    "archiving %s/%s failed (%s: %s); retried in %.1f s",
                    tenant,
                    sid,
                    type(e).__name__,
                    str(e)[:200],
                    delay,
                )
                self._failed(type(e).__name__)
                try:
                    await self.store.retry_due(tenant, sid, delay)
                except Exception:  # Redis away too: the lease runs out instead
                    pass
        if len(self.fails) > 10_000:  # sessions that failed and went away: forget them
            self.fails.clear()
        self.streak = self.streak + 1 if claimed and failed == len(claimed) else 0
        if self.m_lag is not None and claimed:
            self.m_lag.set(self.lag)
        if self.m_due is not None:
            self.m_due.set(await self.store.due_count())
        return total

    async def collect(self) -> int:
        """Delete the archives of sessions that are gone from Redis (expired by their TTL, or a
        delete that did not reach the archive) and older than the grace; returns how many."""
        n = 0
        for tenant, sid, age in await self.archive.sessions():
            if age < self.policy.expired_grace_s:
                continue  # recent: maybe a fork or a create whose record is being written
            if await self.store.r.exists(self.store._rec(tenant, sid)):
                continue
            await self.archive.delete_session(tenant, sid)
            n += 1
        if n and self.m_collected is not None:
            self.m_collected.inc(n)
        return n

    async def run(self, idle_s: float = 0.5) -> None:
        next_gc = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                if loop.time() >= next_gc:  # one archiver of the cluster at a time (a lock in Redis)
                    next_gc = loop.time() + self.policy.gc_interval_s
                    if await self.store.r.set(GC_LOCK, "1", nx=True, px=int(self.policy.gc_interval_s * 1000)):
                        await self.collect()
                if not await self.run_once():
                    await asyncio.sleep(self._delay(self.streak) if self.streak else idle_s)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("archiver pass failed (%s)", type(e).__name__)
                self._failed(type(e).__name__)
                await asyncio.sleep(1.0)
