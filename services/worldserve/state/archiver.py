"""The archiver: moves full chunks of sessions' steps from Redis to the archive, then trims Redis.

A step is acknowledged when it is in Redis (the truth). When a session has a full chunk of steps
after its last archived one, the engine marks it due (``ws:archive:due``). An archiver (a
background task in each sessions replica) claims due sessions with a lease, and for each full
chunk: reads the steps from Redis, writes the chunk and lists it in the manifest, then records
the new archived step in Redis with a compare-and-set and drops what Redis no longer needs (the
steps older than the hot window). Killed anywhere in between, it loses nothing and duplicates
nothing: the next claim (after the lease) rewrites the same chunk object under the same name, the
manifest lists it once, and the compare-and-set moves ``archived`` once.
"""

from __future__ import annotations

import asyncio
import logging
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
        if metrics is not None:
            self.m_chunks = metrics.counter("archive_chunks", "Chunks of steps written to the archive")
            self.m_collected = metrics.counter("archive_collected", "Archives of expired sessions deleted")
            self.m_failures = metrics.counter("archive_failures", "Archive passes that failed, by reason", ("reason",))

    async def archive_session(self, tenant: str, sid: str) -> int:
        """Archive every full chunk the session has; returns how many were written."""
        p = self.policy
        written = 0
        try:
            rec = await self.store.get(tenant, sid, touch=False)
        except NotFound:
            await self.store.done_due(tenant, sid)
            return 0
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

    async def run_once(self, n: int = 8) -> int:
        """Claim up to ``n`` due sessions and archive them; returns the chunks written."""
        total = 0
        for tenant, sid in await self.store.claim_due(n, self.policy.lease_s):
            try:
                total += await self.archive_session(tenant, sid)
            except Exception as e:
                log.warning(
                    "archiving %s/%s failed (%s: %s); retried after the lease",
                    tenant,
                    sid,
                    type(e).__name__,
                    str(e)[:200],
                )
                self._failed(type(e).__name__)
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
                    await asyncio.sleep(idle_s)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("archiver pass failed (%s)", type(e).__name__)
                self._failed(type(e).__name__)
                await asyncio.sleep(1.0)
