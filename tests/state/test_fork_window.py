"""A fork copies the context window, not the unarchived tail: the parent's older steps are archived
first and shared by reference. The child's export from step 0 is the parent's trajectory, also
after the parent is archived further, trimmed or deleted (a real Redis and Redis Cluster; a local
folder archive)."""

from __future__ import annotations

import pytest

from worldserve.state.archive import Archive
from worldserve.state.archiver import ArchivePolicy, Archiver
from worldserve.state.store import SessionStore

WINDOW = 4
POLICY = ArchivePolicy(chunk_steps=8, hot_window=WINDOW, rid_keep=6)
STEP_BYTES = 2048  # each step's latent: a long unarchived tail would be costly to copy


@pytest.fixture
async def wstore(redis_url, redis_flush, tmp_path):
    s = SessionStore.from_url(
        redis_url,
        default_ttl_s=600,
        archive=Archive.from_url(f"file://{tmp_path}/a"),
        max_tail=4096,
        hot_window=WINDOW,
        rid_keep=POLICY.rid_keep,
    )
    await redis_flush(s.r)
    yield s
    await s.close()


def frame(n: int) -> bytes:
    return b"PNG" + n.to_bytes(4, "big")


def action(n: int) -> dict:
    return {"keys": ["right" if n % 3 else "left"], "mouse": {}}


async def play(store, sid, n, start=0, arch=None):
    for i in range(start, start + n):
        await store.append(
            "t",
            sid,
            expected_step=i,
            action=action(i + 1),
            latent=bytes([i % 251]) * STEP_BYTES,
            frame=frame(i + 1),
            request_id=f"r{sid[-6:]}{i + 1}",
            resume=b"k" * 100,
            resume_keep=WINDOW,
        )
        if arch is not None and (i + 1) % POLICY.chunk_steps == 0:
            await store.mark_due("t", sid)
            await arch.run_once()


async def new(store):
    return await store.create("t", model="m", prompt="p", seed=0, width=8, height=8, first_frame=frame(0))


async def exported(store, sid):
    return [(e.step, e.action, e.frame) async for e in store.export("t", sid)]


def expected(upto: int) -> list:
    return [(n, action(n) if n else None, frame(n)) for n in range(upto + 1)]


async def session_bytes(store, sid) -> int:
    return sum(
        [int(await store.r.memory_usage(k, samples=0) or 0) for k in (store._rec("t", sid), store._log("t", sid))]
    )


async def test_a_fork_of_a_long_unarchived_tail_copies_only_the_window(wstore):
    arch = Archiver(wstore, wstore.archive, POLICY)
    rec = await new(wstore)
    await play(wstore, rec.session_id, 200, arch=arch)  # archived to 199, then a tail the archiver is behind on
    await play(wstore, rec.session_id, 60, start=200)
    parent = await wstore.get("t", rec.session_id)
    assert parent.archived == 199 and parent.step == 260
    tail_bytes = await session_bytes(wstore, rec.session_id)
    child = await wstore.fork("t", rec.session_id)
    # the child holds the window: its fields and bytes are bounded by it, not by the 60-step tail
    fields = await wstore.r.hkeys(wstore._log("t", child.session_id))
    steps = {int(f.split(b":")[1]) for f in fields if f[:2] in (b"a:", b"z:", b"f:", b"k:")}
    assert steps == set(range(261 - WINDOW, 261)), sorted(steps)
    child_bytes = await session_bytes(wstore, child.session_id)
    assert child_bytes <= WINDOW * (STEP_BYTES + 512) + 4096 < tail_bytes / 8, (child_bytes, tail_bytes)
    # the parent's older steps were archived first (and trimmed from its Redis)
    after = await wstore.get("t", rec.session_id)
    assert after.archived == 260 - WINDOW and child.archived == 260 - WINDOW
    assert await session_bytes(wstore, rec.session_id) < tail_bytes / 4
    assert await exported(wstore, child.session_id) == expected(260)
    assert await exported(wstore, rec.session_id) == expected(260)
    win = await wstore.window("t", child.session_id, end_step=260, frames=WINDOW)
    assert [e.latent for e in win] == [bytes([(n - 1) % 251]) * STEP_BYTES for n in range(257, 261)]
    assert all(e.resume == b"k" * 100 and e.frame == frame(e.step) for e in win)


async def test_the_childs_history_survives_parent_trim_and_delete(wstore):
    arch = Archiver(wstore, wstore.archive, POLICY)
    rec = await new(wstore)
    await play(wstore, rec.session_id, 30)  # nothing archived yet: 30 steps in Redis
    early = await wstore.fork("t", rec.session_id, step=21)  # before the parent's newest steps
    assert (await wstore.get("t", rec.session_id)).archived == 21 - WINDOW  # archived up to the fork's window
    late = await wstore.fork("t", rec.session_id)
    assert (await wstore.get("t", rec.session_id)).archived == 30 - WINDOW
    # the parent goes on, is archived and trimmed, then deleted
    await play(wstore, rec.session_id, 40, start=30, arch=arch)
    await arch.run_once()
    parent = await wstore.get("t", rec.session_id)
    assert parent.trimmed >= 60 - WINDOW  # trimmed far past both forks: their steps come from the archive
    assert await exported(wstore, early.session_id) == expected(21)
    assert await exported(wstore, late.session_id) == expected(30)
    assert await wstore.delete("t", rec.session_id)
    assert await exported(wstore, early.session_id) == expected(21)
    assert await exported(wstore, late.session_id) == expected(30)
    # a child goes on by itself and is archived itself: one trajectory across both archives
    await play(wstore, early.session_id, 20, start=21, arch=arch)
    await arch.run_once()
    got = await exported(wstore, early.session_id)
    assert [s for s, _, _ in got] == list(range(42)) and got[:22] == expected(21)


async def test_an_archiver_racing_the_fork_loses_and_duplicates_nothing(wstore):
    rec = await new(wstore)
    await play(wstore, rec.session_id, 20)
    sid = rec.session_id
    # an archiver wrote chunk 0-7 and was killed before its trim: the manifest lists it, Redis does not know
    await wstore.archive.write_chunk("t", sid, [e for e in await wstore.log_entries("t", sid, 0, 7) if e])
    child = await wstore.fork("t", sid, step=18)  # archives 0-18: listed as 8-18 after the chunk there
    chunks = await wstore.archive.manifest("t", sid)
    assert [(c.first, c.last) for c in chunks] == [(0, 7), (8, 18 - WINDOW)]
    # the archiver comes back: its chunk 0-7 is listed already, its trim finds archived moved on
    arch = Archiver(wstore, wstore.archive, POLICY)
    await wstore.mark_due("t", sid)
    await arch.run_once()
    await play(wstore, sid, 8, start=20)
    await wstore.mark_due("t", sid)  # the engine marks a chunk due counting from the archived step
    await arch.run_once()
    assert (await wstore.get("t", sid)).archived == 18 - WINDOW + POLICY.chunk_steps
    assert await exported(wstore, sid) == expected(28)
    assert await exported(wstore, child.session_id) == expected(18)


async def test_a_long_tail_is_archived_in_parts_before_the_fork(wstore):
    from worldserve.state.store import FLUSH_CHUNK_STEPS

    rec = await new(wstore)
    n = FLUSH_CHUNK_STEPS + 40  # the archive was away: nothing archived
    await play(wstore, rec.session_id, n)
    child = await wstore.fork("t", rec.session_id)
    chunks = await wstore.archive.manifest("t", rec.session_id)
    assert [(c.first, c.last) for c in chunks] == [(0, FLUSH_CHUNK_STEPS - 1), (FLUSH_CHUNK_STEPS, n - WINDOW)]
    assert await exported(wstore, child.session_id) == expected(n)
    assert await wstore.r.hlen(wstore._log("t", child.session_id)) == 4 * WINDOW


async def test_a_fork_at_an_older_step_keeps_its_whole_window(wstore):
    # a live world keeps stepping: the page forks at the step it shows, behind the current one;
    # archiving the parent first must not trim the fork's window away
    arch = Archiver(wstore, wstore.archive, POLICY)
    rec = await new(wstore)
    await play(wstore, rec.session_id, 200, arch=arch)
    await play(wstore, rec.session_id, 60, start=200)
    child = await wstore.fork("t", rec.session_id, step=240)
    win = await wstore.window("t", child.session_id, end_step=240, frames=WINDOW)
    assert [e.step for e in win] == list(range(241 - WINDOW, 241))
    assert [e.latent for e in win] == [bytes([(n - 1) % 251]) * STEP_BYTES for n in range(241 - WINDOW, 241)]
    assert await exported(wstore, child.session_id) == expected(240)
    assert await exported(wstore, rec.session_id) == expected(260)
