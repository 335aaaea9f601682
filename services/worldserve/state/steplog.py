"""The session store's step log: appends (exactly once per request id), the model's window,
exports, and the archive's side (its queue of due sessions, the steps it reads from Redis, the
trim after a chunk is written). A mixin of :class:`~worldserve.state.store.SessionStore`, which
holds the client, the registered scripts, the keys and the record reads it uses."""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from worldserve.common.errors import Conflict, FailedPrecondition, NotFound, ResourceExhausted
from worldserve.state import scripts
from worldserve.state.records import ARCHIVE_DUE, AlreadyApplied, LogEntry, SessionRecord, raw_values

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from redis.asyncio.client import Pipeline
    from redis.asyncio.cluster import ClusterPipeline, RedisCluster
    from redis.commands.core import AsyncScript
    from redis.typing import EncodableT

    from worldserve.state.archive import Archive, ArchivedStep


class StepLog:
    """Async access to sessions' step logs (SessionStore's). Errors are worldserve errors."""

    if TYPE_CHECKING:  # SessionStore's
        r: aioredis.Redis | RedisCluster
        archive: Archive | None
        max_tail: int
        wait_replicas: int
        _append: AsyncScript
        _recorded: AsyncScript
        _trim: AsyncScript
        _claim: AsyncScript

        @staticmethod
        def _rec(t: str, sid: str) -> str: ...

        @staticmethod
        def _log(t: str, sid: str) -> str: ...

        def _timed(self, op: str, t0: float) -> None: ...

        def _wait(self, p: Pipeline | ClusterPipeline) -> bool: ...

        def _check_replicated(self, acked: int, what: str) -> None: ...

        async def get(self, tenant: str, sid: str, *, touch: bool = True) -> SessionRecord: ...

    # -- the step log -----------------------------------------------------------------------------
    async def append(
        self,
        tenant: str,
        sid: str,
        *,
        expected_step: int,
        action: dict[str, Any],
        latent: bytes,
        frame: bytes,
        request_id: str = "",
        first_latent: bytes | None = None,
        due: bool = False,
        resume: bytes | None = None,
        resume_keep: int = 0,
    ) -> int:
        """Compare-and-set append of step ``expected_step + 1``; returns the new step. A non-empty
        ``request_id`` is recorded with the step, ``first_latent`` (step 0's latent, encoded by the
        first step) stored where absent, both in the same script; ``due``: the step fills an
        archive chunk, the session joins the archiver's queue in the same round trip (a due mark
        of a step that did not land is harmless: the archiver finds nothing new). ``resume``: the
        model's resume data of the new step (``k:<n>``), kept for ``resume_keep`` steps (the
        script drops step ``n - resume_keep``'s; 0: kept as long as the latent).

        Raises NotFound when the session is gone, Conflict when another write moved it first,
        AlreadyApplied when ``request_id`` had already landed (nothing written). With
        ``wait_replicas``, a step (or an AlreadyApplied) is answered only once that many replicas
        hold it, else Unavailable (the step is on the primary: its retry is answered once).
        """
        t0 = time.perf_counter()
        args: builtins.list[EncodableT] = [
            expected_step,
            json.dumps(action, separators=(",", ":"), sort_keys=True),
            latent,
            frame,
            repr(time.time()),
            request_id,
            self.max_tail,
            first_latent or b"",
            resume or b"",
            resume_keep,
        ]
        keys = [self._rec(tenant, sid), self._log(tenant, sid)]
        if due or self.wait_replicas:
            async with self.r.pipeline(transaction=False) as p:
                p.eval(scripts.APPEND, 2, *keys, *args)  # EVAL, not a Script: a pipeline's scripts cost a SCRIPT EXISTS
                if due:
                    p.zadd(ARCHIVE_DUE, {f"{tenant}\n{sid}": time.time()}, nx=True)
                waited = self._wait(p)  # on the same connection, after the script's writes
                res = await p.execute()
            n, cur = res[0]
            if waited and (n > 0 or n == -3):  # an acknowledgement: replicated first
                self._check_replicated(int(res[-1]), f"step {n if n > 0 else cur} of session {sid!r}")
        else:
            n, cur = await self._append(keys=keys, args=args)
        self._timed("append", t0)
        if n == -1:
            raise NotFound(f"session {sid!r} not found")
        if n == -4:
            raise ResourceExhausted(
                f"session {sid!r} has {expected_step + 1 - int(cur)} steps not yet archived (the limit): the "
                "archive is unreachable or behind; this step was not applied, retry later",
                retry_after_s=1.0,
            )
        if n == -3:
            raise AlreadyApplied(int(cur))
        if n == -2:
            raise Conflict(
                f"session {sid!r} moved to step {cur} while this step (from {expected_step}) was computed; it was not applied"
            )
        return int(n)

    async def recorded(self, tenant: str, sid: str, request_id: str) -> tuple[int, bytes] | None:
        """(step, frame PNG) of the step ``request_id`` landed as in this session, or None. With
        ``wait_replicas``, a step found is returned only once that many replicas hold it (the
        script's TTL refresh is a write a WAIT covers, and the step is older), else Unavailable."""
        t0 = time.perf_counter()
        keys = [self._log(tenant, sid), self._rec(tenant, sid)]
        if self.wait_replicas:
            async with self.r.pipeline(transaction=False) as p:
                p.eval(scripts.RECORDED, 2, *keys, request_id)
                self._wait(p)
                hit, acked = await p.execute()
            if hit is not None:
                self._check_replicated(int(acked), f"step {int(hit[0])} of session {sid!r}")
        else:
            hit = await self._recorded(keys=keys, args=[request_id])
        self._timed("recorded", t0)
        if hit is None:
            return None
        step, frame = int(hit[0]), hit[1]
        if frame is None and self.archive is not None:  # trimmed from Redis: the archive has it
            frame = (await self.archive.read(tenant, sid, step, step))[0].frame
        return step, frame

    async def check_step(self, rec: SessionRecord, expected_step: int | None) -> None:
        if expected_step is not None and expected_step != rec.step:
            raise FailedPrecondition(
                f"session {rec.session_id!r} is at step {rec.step}, not the expected step {expected_step}"
            )

    async def action_at(self, tenant: str, sid: str, step: int) -> dict[str, Any] | None:
        """The recorded action of ``step`` (None: none, e.g. step 0 or a trimmed step)."""
        raw = raw_values([await self.r.hget(self._log(tenant, sid), f"a:{step}")])[0]
        return None if raw is None else json.loads(raw)

    async def window(self, tenant: str, sid: str, *, end_step: int, frames: int) -> builtins.list[LogEntry]:
        """The last ``frames`` log entries up to ``end_step`` (latents, actions, the model's resume
        data and the frames, which a latent packed against its frame needs)."""
        return (await self.prefill_window(tenant, sid, end_step=end_step, frames=frames))[0]

    async def prefill_window(
        self, tenant: str, sid: str, *, end_step: int, frames: int, text: bool = False
    ) -> tuple[builtins.list[LogEntry], bytes | None]:
        """:meth:`window`, and with ``text`` the session's text embedding (None: it has none), in
        the same round trip: what a prefill reads."""
        start = max(0, end_step - frames + 1)
        steps = list(range(start, end_step + 1))
        names: list[str] = []
        for n in steps:
            names += [f"a:{n}", f"z:{n}", f"k:{n}", f"f:{n}"]
        if text:
            names.append("t")
        t0 = time.perf_counter()
        vals = raw_values(await self.r.hmget(self._log(tenant, sid), names))
        self._timed("window", t0)
        out = []
        for i, n in enumerate(steps):
            a, z, k, f = vals[4 * i : 4 * i + 4]
            out.append(LogEntry(n, json.loads(a) if a else None, z, f, k))
        return out, (vals[-1] if text else None)

    async def first_frame(self, tenant: str, sid: str) -> bytes:
        v = raw_values([await self.r.hget(self._log(tenant, sid), "f:0")])[0]
        if v is None:
            raise NotFound(f"session {sid!r} not found")
        return v

    async def export(
        self,
        tenant: str,
        sid: str,
        *,
        from_step: int = 0,
        to_step: int | None = None,
        frames: bool = True,
        chunk: int = 32,
    ) -> AsyncIterator[LogEntry]:
        """Stream a trajectory in chunks (bounded memory for long sessions): the archived steps from
        the archive (DATA_LOSS for a missing or corrupt chunk), then the rest from Redis."""
        rec = await self.get(tenant, sid)
        end = rec.step if to_step is None else min(to_step, rec.step)
        archived = rec.archived if self.archive is not None else -1
        text = None  # step 0 carries the session's text embedding
        if from_step == 0 and rec.text_tokens:
            text = raw_values([await self.r.hget(self._log(tenant, sid), "t")])[0]
        n = from_step
        while n <= end:
            if n <= archived:  # the archived steps, from the archive
                last = min(end, archived)
                assert self.archive is not None  # archived >= 0 only with an archive
                async for e in self.archive.steps(tenant, sid, n, last):
                    yield LogEntry(
                        e.step, e.action, None, e.frame if frames else None, text=text if e.step == 0 else None
                    )
                n = last + 1
                continue
            steps = list(range(n, min(n + chunk, end + 1)))
            names: list[str] = []
            for m in steps:
                names += [f"a:{m}", f"f:{m}"] if frames else [f"a:{m}"]
            vals = raw_values(await self.r.hmget(self._log(tenant, sid), names))
            k = 2 if frames else 1
            for i, m in enumerate(steps):
                a = vals[k * i]
                f = vals[k * i + 1] if frames else None
                if (m > 0 and a is None) or (frames and f is None):
                    fresh = await self.get(tenant, sid, touch=False)  # NotFound when deleted meanwhile
                    if self.archive is not None and fresh.archived >= m:  # archived and trimmed meanwhile
                        archived = fresh.archived
                        break
                    raise NotFound(f"session {sid!r} was deleted during export")
                yield LogEntry(m, json.loads(a) if a else None, None, f, text=text if m == 0 else None)
                n = m + 1

    # -- the archive's side -----------------------------------------------------------------------
    async def mark_due(self, tenant: str, sid: str) -> None:
        """The session has a full chunk to archive."""
        await self.r.zadd(ARCHIVE_DUE, {f"{tenant}\n{sid}": time.time()}, nx=True)

    async def claim_due(self, n: int, lease_s: float) -> builtins.list[tuple[str, str]]:
        got = await self._claim(keys=[ARCHIVE_DUE], args=[repr(time.time()), repr(lease_s), n])
        return [tuple(m.decode().split("\n", 1)) for m in got]

    async def done_due(self, tenant: str, sid: str) -> None:
        await self.r.zrem(ARCHIVE_DUE, f"{tenant}\n{sid}")

    async def retry_due(self, tenant: str, sid: str, delay_s: float) -> None:
        """A claimed session whose pass failed: claimable again in ``delay_s`` (not after the
        whole lease); nothing when it left the queue meanwhile."""
        await self.r.zadd(ARCHIVE_DUE, {f"{tenant}\n{sid}": time.time() + delay_s}, xx=True)

    async def due_count(self) -> int:
        """Sessions with a full chunk waiting for an archiver (claimed or not)."""
        return int(await self.r.zcard(ARCHIVE_DUE))

    async def log_entries(
        self, tenant: str, sid: str, first: int, last: int, *, latents: bool = True
    ) -> builtins.list[ArchivedStep | None]:
        """Steps ``first`` .. ``last`` from Redis as ArchivedStep, or None where a part is missing."""
        from worldserve.state.archive import ArchivedStep

        names: list[str] = []
        for m in range(first, last + 1):
            names += [f"a:{m}", f"f:{m}", f"z:{m}"]
        vals = raw_values(await self.r.hmget(self._log(tenant, sid), names))
        out: builtins.list[ArchivedStep | None] = []
        for i, m in enumerate(range(first, last + 1)):
            a, f, z = vals[3 * i : 3 * i + 3]
            if f is None or (m > 0 and a is None):
                out.append(None)
            else:
                out.append(ArchivedStep(m, json.loads(a) if a else None, f, z if latents else None))
        return out

    async def trim(self, tenant: str, sid: str, *, expected: int, archived: int, window: int, rid_keep: int) -> int:
        """Record ``archived`` (compare-and-set on the previous value) and drop what Redis no longer
        needs; returns the new archived step, -1 (no session) or -2 (moved by someone else)."""
        t0 = time.perf_counter()
        n = await self._trim(
            keys=[self._rec(tenant, sid), self._log(tenant, sid)], args=[expected, archived, window, rid_keep]
        )
        self._timed("trim", t0)
        return int(n)
