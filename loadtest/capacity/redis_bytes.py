"""A session's Redis bytes, Redis commands and archive bytes, measured on a real Redis.

One session is driven through the real :class:`~worldserve.state.store.SessionStore` and
:class:`~worldserve.state.archiver.Archiver` (a ``file://`` archive) exactly as a replica and the
sessions app drive them at steady state: per step the engine's read (``get_for_step`` with the
tenant's step-rate quota and a request id) and its ``append`` (latent, PNG frame, resume data,
request id, ``due`` when a chunk fills); the archiver archives each full chunk as soon as it is
due. The session runs two archive cycles (``2 x chunk_steps`` steps):

- active bytes: ``MEMORY USAGE`` (every field sampled) of the session's keys just before the
  second chunk is archived: the hot window kept after the first one plus a full unarchived chunk,
  the most a stepping session holds (step 0 is in the first chunk: ``2 x chunk_steps - 1`` steps);
- idle bytes: the same right after that chunk is archived and trimmed (what a session that stopped
  stepping keeps until its TTL);
- both then hold ``2 x chunk_steps`` request ids; a long session keeps ``rid_keep`` of them:
  their bytes per step are measured (by deleting them at the end) and the difference is added;
- ops per step: ``INFO commandstats`` calls over the second cycle (its steps and its archive
  pass) / ``chunk_steps``; archive bytes per step: the archive folder's bytes / steps archived.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from pathlib import Path
from typing import Any

from loadtest.capacity.models import Payload

TENANT = "capacity"
IGNORED = {"info", "memory", "config", "hscan", "hkeys", "hdel", "ping", "client", "hello", "select"}


async def _calls(r: Any) -> dict[str, int]:
    stats = await r.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    out = {k: v - before.get(k, 0) for k, v in after.items() if k not in IGNORED and v - before.get(k, 0) > 0}
    return dict(sorted(out.items()))


async def _usage(r: Any, keys: list[str]) -> int:
    total = 0
    for k in keys:
        total += int(await r.memory_usage(k, samples=0) or 0)
    return total


async def measure_session(
    url: str,
    payload: Payload,
    *,
    model: str,
    hw: tuple[int, int],
    context_frames: int,
    chunk_steps: int = 64,
    hot_window: int = 32,
    rid_keep: int = 4096,
    steps_per_s: float = 2000,
    burst: int = 2048,
) -> dict[str, Any]:
    from worldserve.state.archive import Archive
    from worldserve.state.archiver import ArchivePolicy, Archiver
    from worldserve.state.quotas import gcra_args, rate_key
    from worldserve.state.records import log_key, record_key
    from worldserve.state.store import SessionStore, action_to_dict

    with tempfile.TemporaryDirectory(prefix="capacity-archive-") as folder:
        archive = Archive.from_url(f"file://{folder}")
        store = SessionStore.from_url(url, archive=archive, max_tail=max(4096, 2 * chunk_steps), timeout_s=60.0)
        policy = ArchivePolicy(chunk_steps=chunk_steps, hot_window=hot_window, rid_keep=rid_keep)
        archiver = Archiver(store, archive, policy)
        r = store.r
        try:
            rec = await store.create(
                TENANT, model=model, prompt="capacity", seed=1, width=hw[1], height=hw[0], first_frame=payload.frame
            )
            sid = rec.session_id
            keys = [record_key(TENANT, sid), log_key(TENANT, sid)]
            rate = (rate_key(TENANT), gcra_args(steps_per_s, burst, 1))
            action = action_to_dict(["right"], {})
            keep = max(1, context_frames - 1)
            out: dict[str, Any] = {}
            before: dict[str, int] = {}
            dues, n, cycle_first = 0, 0, 0
            while dues < 2:
                n += 1
                rid = uuid.uuid4().hex
                rec, _, _ = await store.get_for_step(TENANT, sid, rid, rate)
                due = (rec.step + 1 - rec.archived) % chunk_steps == 0
                await store.append(
                    TENANT,
                    sid,
                    expected_step=rec.step,
                    action=action,
                    latent=payload.latent,
                    frame=payload.frame,
                    request_id=rid,
                    due=due,
                    first_latent=payload.latent if n == 1 else None,
                    resume=payload.resume if n % payload.resume_every == 0 else None,
                    resume_keep=keep,
                )
                if due:
                    dues += 1
                    if dues == 2:
                        active = await _usage(r, keys)
                        out["redis_fields_active"] = int(await r.hlen(keys[1]))
                    claimed = await store.claim_due(8, policy.lease_s)
                    for t, s in claimed:
                        await archiver.archive_session(t, s)
                    if dues == 1:
                        before, cycle_first = await _calls(r), n + 1
            after = await _calls(r)
            idle = await _usage(r, keys)
            out["redis_fields_idle"] = int(await r.hlen(keys[1]))
            ops = _delta(before, after)
            # request ids: r:<id> and q:<n> fields, one pair per step
            fields = [f.decode() if isinstance(f, bytes) else f for f in await r.hkeys(keys[1])]
            rid_fields = [f for f in fields if f.startswith(("r:", "q:"))]
            rids = len([f for f in rid_fields if f.startswith("q:")])
            with_rids = await _usage(r, keys)
            if rid_fields:
                await r.hdel(keys[1], *rid_fields)
            per_rid = (with_rids - await _usage(r, keys)) / max(1, rids)
            extra = max(0, min(rid_keep, 10**9) - rids) * per_rid
            archived = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
            rec = await store.get(TENANT, sid, touch=False)
            out.update(
                redis_bytes_active=int(active + extra),
                redis_bytes_idle=int(idle + extra),
                redis_bytes_active_measured=int(active),
                redis_bytes_idle_measured=int(idle),
                request_id_bytes_per_step=round(per_rid, 1),
                request_ids_held=rids,
                rid_keep=rid_keep,
                redis_ops_per_step=round(sum(ops.values()) / (n + 1 - cycle_first), 3),
                redis_ops=ops,
                archive_bytes_per_step=int(round(archived / max(1, rec.archived + 1))),  # steps 0..archived
                archived_steps=int(rec.archived) + 1,
                steps=int(rec.step),
                chunk_steps=chunk_steps,
                hot_window=hot_window,
            )
            await store.delete(TENANT, sid)
            return out
        finally:
            await store.close()


def measure(url: str, payload: Payload, **kw: Any) -> dict[str, Any]:
    return asyncio.run(measure_session(url, payload, **kw))
