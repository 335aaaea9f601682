"""Bounded hot state: the archiver moves full chunks from a real Redis to the archive (a local
folder here; S3 in test_archive.py), Redis stays bounded, and export, replays, forks and deletes
see one trajectory across both tiers; crashes in between lose and duplicate nothing."""

from __future__ import annotations

import pytest

from worldserve.common.errors import DataLoss, ResourceExhausted
from worldserve.state.archive import Archive
from worldserve.state.archiver import ArchivePolicy, Archiver
from worldserve.state.store import SessionStore

POLICY = ArchivePolicy(chunk_steps=8, hot_window=4, rid_keep=6)


@pytest.fixture
async def astore(redis_url, redis_flush, tmp_path):
    s = SessionStore.from_url(
        redis_url, default_ttl_s=600, archive=Archive.from_url(f"file://{tmp_path}/a"), max_tail=48
    )
    await redis_flush(s.r)
    yield s
    await s.close()


def frame(n: int) -> bytes:
    return b"PNG" + n.to_bytes(4, "big")


async def play(store, tenant, sid, n, start=0):
    for i in range(start, start + n):
        await store.append(
            tenant,
            sid,
            expected_step=i,
            action={"keys": ["right"], "mouse": {}},
            latent=b"z" + i.to_bytes(4, "big"),
            frame=frame(i + 1),
            request_id=f"r{i + 1}",
        )
        if (i + 1) % POLICY.chunk_steps == 0:
            await store.mark_due(tenant, sid)


async def new(store, tenant="t"):
    return await store.create(tenant, model="m", prompt="p", seed=0, width=8, height=8, first_frame=frame(0))


async def exported(store, tenant, sid):
    return [(e.step, e.frame) async for e in store.export(tenant, sid)]


async def test_redis_stays_bounded_and_export_sees_every_step_once(astore):
    arch = Archiver(astore, astore.archive, POLICY)
    rec = await new(astore)
    sizes = []
    for _ in range(5):
        await play(astore, "t", rec.session_id, 40, start=(await astore.get("t", rec.session_id)).step)
        await arch.run_once()
        sizes.append(await astore.r.hlen(astore._log("t", rec.session_id)))
    got = await astore.get("t", rec.session_id)
    assert got.step == 200 and got.archived == 199 and got.trimmed == 196  # the hot window stays
    assert max(sizes) == min(sizes), sizes  # flat however long the session gets
    assert sizes[-1] <= 3 * (POLICY.chunk_steps + POLICY.hot_window) + 2 * POLICY.rid_keep
    assert await exported(astore, "t", rec.session_id) == [(n, frame(n)) for n in range(201)]
    assert [e.step async for e in astore.export("t", rec.session_id, from_step=195, to_step=199)] == list(
        range(195, 200)
    )
    win = await astore.window("t", rec.session_id, end_step=200, frames=4)
    assert all(e.latent is not None for e in win)  # a prefill still finds its window in Redis


async def test_a_replay_of_a_trimmed_step_reads_its_frame_from_the_archive(astore):
    rec = await new(astore)
    await play(astore, "t", rec.session_id, 16)
    await Archiver(astore, astore.archive, POLICY).run_once()
    assert await astore.r.hget(astore._log("t", rec.session_id), "f:12") is None  # trimmed
    assert await astore.recorded("t", rec.session_id, "r12") == (12, frame(12))
    assert await astore.recorded("t", rec.session_id, "r3") is None  # older than rid_keep: forgotten


async def test_a_crash_between_archive_and_trim_loses_and_duplicates_nothing(astore, monkeypatch):
    rec = await new(astore)
    await play(astore, "t", rec.session_id, 24)
    arch = Archiver(astore, astore.archive, POLICY)
    real_trim = astore.trim
    calls = []

    async def dying_trim(*a, **kw):  # the archiver is killed after its chunk is written
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed mid-pass")
        return await real_trim(*a, **kw)

    monkeypatch.setattr(astore, "trim", dying_trim)
    await arch.run_once()  # chunk 0-7 archived and trimmed; chunk 8-15 written, then the crash
    assert (await astore.get("t", rec.session_id)).archived == 7
    await astore.r.zadd("ws:archive:due", {f"t\n{rec.session_id}": 0})  # the lease ran out
    await arch.run_once()
    man = await astore.archive.manifest("t", rec.session_id)
    assert [(c.first, c.last) for c in man] == [(0, 7), (8, 15), (16, 23)]  # each once
    assert await exported(astore, "t", rec.session_id) == [(n, frame(n)) for n in range(25)]


async def test_an_unreachable_archive_bounds_the_tail_then_refuses(astore, monkeypatch):
    rec = await new(astore)

    async def down(*a, **kw):
        raise OSError("archive unreachable")

    monkeypatch.setattr(astore.archive, "write_chunk", down)
    await play(astore, "t", rec.session_id, 47)  # steps 0..47 unarchived: the bound, 48
    assert await Archiver(astore, astore.archive, POLICY).run_once() == 0  # nothing archived, nothing lost
    with pytest.raises(ResourceExhausted, match="not yet archived") as e:
        await play(astore, "t", rec.session_id, 1, start=47)
    assert e.value.retry_after_s
    monkeypatch.undo()
    await astore.r.zadd("ws:archive:due", {f"t\n{rec.session_id}": 0})
    await Archiver(astore, astore.archive, POLICY).run_once()  # the archive is back
    await play(astore, "t", rec.session_id, 1, start=47)
    assert await exported(astore, "t", rec.session_id) == [(n, frame(n)) for n in range(49)]


async def test_a_corrupt_chunk_fails_export_with_data_loss(astore):
    import obstore

    rec = await new(astore)
    await play(astore, "t", rec.session_id, 16)
    await Archiver(astore, astore.archive, POLICY).run_once()
    key = astore.archive._base("t", rec.session_id) + "chunks/000000000000-000000000007.wsc"
    await obstore.put_async(astore.archive.store, key, b"bitrot")
    with pytest.raises(DataLoss, match="steps 0-7 are corrupt"):
        await exported(astore, "t", rec.session_id)


async def test_forks_of_archived_history_and_deleting_the_parent(astore):
    rec = await new(astore)
    await play(astore, "t", rec.session_id, 30)
    await Archiver(astore, astore.archive, POLICY).run_once()
    parent = await astore.get("t", rec.session_id)
    assert parent.archived == 23
    early = await astore.fork("t", rec.session_id, step=12)  # inside an archived chunk
    late = await astore.fork("t", rec.session_id, step=28)  # in the hot tail
    assert await astore.delete("t", rec.session_id)
    assert await exported(astore, "t", early.session_id) == [(n, frame(n)) for n in range(13)]
    assert await exported(astore, "t", late.session_id) == [(n, frame(n)) for n in range(29)]
    await play(astore, "t", early.session_id, 20, start=12)  # the child goes on and is archived itself
    await Archiver(astore, astore.archive, POLICY).run_once()
    child = await astore.get("t", early.session_id)
    assert child.archived >= 23
    got = await exported(astore, "t", early.session_id)
    assert [s for s, _ in got] == list(range(33)) and got[:13] == [(n, frame(n)) for n in range(13)]


async def test_delete_removes_the_archived_steps(astore):
    rec = await new(astore)
    await play(astore, "t", rec.session_id, 16)
    await Archiver(astore, astore.archive, POLICY).run_once()
    assert await astore.archive.manifest("t", rec.session_id)
    assert await astore.delete("t", rec.session_id)
    assert await astore.archive.manifest("t", rec.session_id) == []


async def objects(store, tenant, sid) -> list[str]:
    return await store.archive._list(store.archive._base(tenant, sid))


async def test_a_fork_costs_its_window_not_its_history(astore):
    import time as _time

    arch = Archiver(astore, astore.archive, POLICY)
    costs = {}
    for n in (200, 2000):
        rec = await new(astore)
        for start in range(0, n, 40):
            await play(astore, "t", rec.session_id, 40, start=start)
            await arch.run_once()
        t0 = _time.perf_counter()
        child = await astore.fork("t", rec.session_id)
        costs[n] = _time.perf_counter() - t0
        hot = await astore.r.hlen(astore._log("t", child.session_id))
        assert hot <= 3 * (POLICY.chunk_steps + POLICY.hot_window)  # only the hot part was copied in Redis
        assert [p.rsplit("/", 1)[1] for p in await objects(astore, "t", child.session_id)] == ["manifest.json"]
        got = await exported(astore, "t", child.session_id)
        assert [s for s, _ in got] == list(range(n + 1)) and got[-1][1] == frame(n)
    print(f"fork: {costs[200] * 1e3:.1f} ms at 200 steps, {costs[2000] * 1e3:.1f} ms at 2000")
    assert costs[2000] < 5 * costs[200] + 0.05  # not 10x: the history is shared, not copied


async def test_deletes_keep_what_forks_still_read_and_free_it_after(astore):
    arch = Archiver(astore, astore.archive, POLICY)
    root = await new(astore)
    await play(astore, "t", root.session_id, 24)
    await arch.run_once()
    child = await astore.fork("t", root.session_id, step=20)
    await play(astore, "t", child.session_id, 20, start=20)
    await arch.run_once()
    grandchild = await astore.fork("t", child.session_id, step=35)
    assert await astore.delete("t", root.session_id)
    late = await astore.fork("t", child.session_id, step=10)  # a fork of a deleted parent's steps
    assert await exported(astore, "t", late.session_id) == [(n, frame(n)) for n in range(11)]
    assert await astore.delete("t", late.session_id)
    assert await astore.delete("t", child.session_id)
    assert await objects(astore, "t", root.session_id)  # still read by the grandchild
    got = await exported(astore, "t", grandchild.session_id)
    assert got == [(n, frame(n)) for n in range(36)]
    assert await astore.delete("t", grandchild.session_id)  # the last reader: everything goes
    for sid in (root.session_id, child.session_id, grandchild.session_id):
        assert await objects(astore, "t", sid) == []


async def test_the_archive_of_an_expired_session_is_collected_after_the_grace(astore):
    from dataclasses import replace

    rec = await new(astore)
    keep = await new(astore)
    for s in (rec, keep):
        await play(astore, "t", s.session_id, 16)
    await Archiver(astore, astore.archive, POLICY).run_once()
    await astore.r.delete(astore._rec("t", rec.session_id), astore._log("t", rec.session_id))  # its TTL ran out
    assert await Archiver(astore, astore.archive, POLICY).collect() == 0  # within the grace: kept
    assert await Archiver(astore, astore.archive, replace(POLICY, expired_grace_s=0)).collect() == 1
    assert await objects(astore, "t", rec.session_id) == []
    assert await objects(astore, "t", keep.session_id)  # a live session's archive stays


async def test_a_failing_session_is_retried_after_its_backoff_not_the_lease(astore, monkeypatch):
    import time

    import prometheus_client

    from worldserve.common import metrics as wm
    from worldserve.common.metrics import ServiceMetrics

    # in `make test` the e2e tests' Ray is still up in this process, and metrics made while it is
    # go to Ray: this test reads prometheus_client's, so it makes its own there
    made = wm._Backend._made
    for name in [n for n, m in made.items() if isinstance(m, wm._RayMetric) and "_sessions_archive_" in n]:
        del made[name]
    monkeypatch.setattr(wm, "_in_ray", lambda: False)
    rec = await new(astore)
    await play(astore, "t", rec.session_id, 16)
    await astore.mark_due("t", rec.session_id)

    async def down(*a, **kw):
        raise OSError("archive unreachable")

    monkeypatch.setattr(astore.archive, "write_chunk", down)
    arch = Archiver(astore, astore.archive, POLICY, ServiceMetrics("sessions"))
    member = f"t\n{rec.session_id}"
    delays = []
    for _ in range(6):
        assert await arch.run_once() == 0
        delays.append(await astore.r.zscore("ws:archive:due", member) - time.time())
        await astore.r.zadd("ws:archive:due", {member: 0})  # claimable now (the test does not wait)
    assert all(d < POLICY.lease_s for d in delays), delays  # not the whole lease
    assert delays[0] <= POLICY.retry_initial_s and delays[-1] > 4 * POLICY.retry_initial_s, delays  # doubling
    assert max(delays) <= POLICY.retry_max_s, delays
    assert arch.streak == 6
    sample = prometheus_client.REGISTRY.get_sample_value
    assert sample("worldserve_sessions_archive_lag_steps") == 17  # steps 0..16
    assert sample("worldserve_sessions_archive_due_sessions") == 1
    assert sample("worldserve_sessions_archive_failures_total", {"reason": "OSError"}) >= 6
    monkeypatch.undo()
    assert await arch.run_once() == 2  # the store is back: both chunks, and the session leaves the queue
    assert arch.streak == 0 and not arch.fails
    assert sample("worldserve_sessions_archive_due_sessions") == 0


async def test_a_text_embedding_outlives_the_trim_of_its_step(astore):
    """The archiver trims step 0 from Redis; the session's text embedding stays (every prefill
    reads it) and an export from the archive still carries it with step 0."""
    rec = await astore.create(
        "t", model="m", prompt="p", seed=0, width=8, height=8, first_frame=frame(0), text=b"emb", text_tokens=1
    )
    await play(astore, "t", rec.session_id, 16)
    await Archiver(astore, astore.archive, POLICY).run_once()
    assert (await astore.get("t", rec.session_id)).trimmed >= 0
    assert (await astore.prefill_window("t", rec.session_id, end_step=16, frames=2, text=True))[1] == b"emb"
    steps = [e async for e in astore.export("t", rec.session_id)]
    assert steps[0].text == b"emb" and steps[0].frame == frame(0) and len(steps) == 17
