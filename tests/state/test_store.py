import asyncio

import numpy as np
import pytest

from worldserve.common.codec import pack_array, unpack_array
from worldserve.common.errors import Conflict, InvalidArgument, NotFound
from worldserve.state.store import AlreadyApplied, SessionStore, check_request_id


async def make(store: SessionStore, tenant="acme", **kw):
    return await store.create(tenant, model="m", prompt="p", seed=7, width=64, height=64, first_frame=b"png0", **kw)


async def step(store, tenant, rec, n, key="left"):
    z = pack_array(np.full((2, 2), n, dtype=np.float32))
    return await store.append(
        tenant, rec.session_id, expected_step=n - 1, action={"keys": [key]}, latent=z, frame=b"png%d" % n
    )


async def test_create_get_and_tenant_isolation(store):
    rec = await make(store)
    got = await store.get("acme", rec.session_id)
    assert got.step == 0 and got.seed == 7 and got.prompt == "p" and got.tenant == "acme"
    with pytest.raises(NotFound):
        await store.get("other", rec.session_id)
    with pytest.raises(NotFound):
        await store.get("acme", "s_missing")
    with pytest.raises(InvalidArgument, match="invalid session_id"):
        await store.get("acme", "bad id!")


async def test_append_is_compare_and_set(store):
    rec = await make(store)
    z = pack_array(np.zeros((2, 2), np.float32))

    async def go():
        try:
            return await store.append("acme", rec.session_id, expected_step=0, action={}, latent=z, frame=b"x")
        except Conflict as e:
            return e

    results = await asyncio.gather(*[go() for _ in range(8)])
    landed = [r for r in results if r == 1]
    assert len(landed) == 1
    assert sum(isinstance(r, Conflict) for r in results) == 7
    assert (await store.get("acme", rec.session_id)).step == 1
    with pytest.raises(NotFound):
        await store.append("acme", "s_nope", expected_step=0, action={}, latent=z, frame=b"x")


async def test_a_request_id_lands_once_and_is_recorded_with_its_frame(store):
    rec = await make(store)
    z = pack_array(np.zeros((2, 2), np.float32))
    assert await store.recorded("acme", rec.session_id, "a") is None
    n = await store.append("acme", rec.session_id, expected_step=0, action={}, latent=z, frame=b"f1", request_id="a")
    assert n == 1 and await store.recorded("acme", rec.session_id, "a") == (1, b"f1")
    # the same id again, from the current step or a stale one: nothing written, the step named
    for expected in (0, 1):
        with pytest.raises(AlreadyApplied) as e:
            await store.append(
                "acme", rec.session_id, expected_step=expected, action={}, latent=z, frame=b"f2", request_id="a"
            )
        assert e.value.step == 1
    assert (await store.get("acme", rec.session_id)).step == 1
    assert await store.append("acme", rec.session_id, expected_step=1, action={}, latent=z, frame=b"f2") == 2
    assert check_request_id("") == "" and check_request_id("c1:0.a_b-2") == "c1:0.a_b-2"
    for bad in ("x" * 65, "a b", "a/1", "é"):
        with pytest.raises(InvalidArgument, match="request_id"):
            check_request_id(bad)


async def test_window_export_fork_delete(store):
    rec = await make(store)
    for n in range(1, 11):
        assert await step(store, "acme", rec, n, key="left" if n % 2 else "right") == n
    win = await store.window("acme", rec.session_id, end_step=10, frames=4)
    assert [e.step for e in win] == [7, 8, 9, 10]
    assert unpack_array(win[-1].latent)[0, 0] == 10
    assert win[0].action == {"keys": ["left"]}

    child = await store.fork("acme", rec.session_id, step=5)
    assert child.step == 5 and child.parent_id == rec.session_id and child.fork_step == 5
    cwin = await store.window("acme", child.session_id, end_step=5, frames=16)
    assert [e.step for e in cwin] == [0, 1, 2, 3, 4, 5]
    assert cwin[0].latent is None  # step 0 latent not encoded yet
    # the branch moves on its own
    assert await step(store, "acme", child, 6) == 6
    assert (await store.get("acme", rec.session_id)).step == 10
    with pytest.raises(InvalidArgument, match="beyond"):
        await store.fork("acme", rec.session_id, step=11)

    exported = [e async for e in store.export("acme", child.session_id, chunk=4)]
    assert [e.step for e in exported] == list(range(7))
    assert exported[0].frame == b"png0" and exported[6].frame == b"png6"

    assert await store.delete("acme", rec.session_id)
    assert not await store.delete("acme", rec.session_id)
    with pytest.raises(NotFound):
        await store.get("acme", rec.session_id)
    # the fork's history is its own copy: the parent's deletion does not break it
    assert len([e async for e in store.export("acme", child.session_id)]) == 7


async def test_list_paginates_per_tenant(store):
    ids = [(await make(store)).session_id for _ in range(7)]
    await make(store, tenant="other")
    seen, token, pages = [], "", 0
    while True:
        page, token = await store.list("acme", page_size=3, page_token=token)
        seen += [r.session_id for r in page]
        pages += 1
        if not token:
            break
    assert pages == 3 and sorted(seen) == sorted(ids) and len(set(seen)) == 7
    await store.r.delete(store._rec("acme", ids[0]))  # as if expired
    page, _ = await store.list("acme", page_size=100)
    assert ids[0] not in [r.session_id for r in page] and len(page) == 6
    with pytest.raises(InvalidArgument):
        await store.list("acme", page_token="garbage")
    import base64

    forged = [
        base64.urlsafe_b64encode(t).decode() for t in (b"nan|s_x", b"inf|s_x", b"1.5|bad id!", b"1.5", b"\xff\xfe|x")
    ]
    for token in forged + ["A" * 50_000]:
        with pytest.raises(InvalidArgument, match="invalid page_token") as e:
            await store.list("acme", page_token=token)
        assert len(str(e.value)) < 200  # the token is quoted truncated


async def test_deleting_an_unknown_session_deletes_nothing(store):
    rec = await make(store)
    assert await store.delete("acme", rec.session_id) is True
    assert await store.delete("acme", rec.session_id) is False  # the servicer answers NOT_FOUND


async def test_ttl_is_set_and_refreshed(store):
    rec = await make(store, ttl_s=100)
    assert 0 < await store.r.ttl(store._rec("acme", rec.session_id)) <= 100
    await store.r.expire(store._rec("acme", rec.session_id), 10)
    await store.get("acme", rec.session_id)
    assert await store.r.ttl(store._rec("acme", rec.session_id)) > 50
    assert await store.r.ttl(store._log("acme", rec.session_id)) > 50


def test_pack_array_roundtrip_and_rejects_garbage():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    assert np.array_equal(unpack_array(pack_array(a)), a)
    with pytest.raises(ValueError):
        unpack_array(b"junk")
    with pytest.raises(ValueError, match="size mismatch"):
        unpack_array(pack_array(a)[:-4])


async def test_a_redis_restart_costs_no_error_on_pooled_connections(tmp_path):
    """Every pooled connection is broken by a restart; the next commands reconnect and succeed."""
    import asyncio as aio

    from worldserve.common.redis_server import EmbeddedRedis

    srv = EmbeddedRedis(tmp_path).start()
    st = SessionStore.from_url(srv.url, timeout_s=2)
    try:
        rec = await st.create("t", model="m", prompt="p", seed=0, width=8, height=8, first_frame=b"x")
        await aio.gather(*(st.get("t", rec.session_id) for _ in range(8)))  # several pooled connections
        srv.stop()
        srv.start()
        got = await aio.gather(*(st.get("t", rec.session_id) for _ in range(8)))
        assert all(g.session_id == rec.session_id for g in got)
    finally:
        await st.close()
        srv.stop()


async def test_deletions_reach_subscribers(store):
    import asyncio as aio

    got = []

    async def listen():
        async for t, sid in store.deletions():
            got.append((t, sid))
            return

    task = aio.create_task(listen())
    await aio.sleep(0.3)  # subscribed
    rec = await store.create("t", model="m", prompt="p", seed=0, width=8, height=8, first_frame=b"x")
    assert await store.delete("t", rec.session_id)
    await aio.wait_for(task, 10)
    assert got == [("t", rec.session_id)]


async def test_a_text_embedding_lives_with_its_session(store):
    """Kept in the log beside step 0, read with the prefill window, copied on fork, exported with
    step 0, deleted with the session; a session without one reads None and costs nothing."""
    text = b"safetensors blob"
    rec = await make(store, text=text, text_tokens=3)
    assert rec.text_tokens == 3 and (await store.get("acme", rec.session_id)).text_tokens == 3
    for n in range(1, 4):
        await step(store, "acme", rec, n)
    win, got = await store.prefill_window("acme", rec.session_id, end_step=3, frames=2, text=True)
    assert [e.step for e in win] == [2, 3] and got == text
    assert (await store.prefill_window("acme", rec.session_id, end_step=3, frames=2))[1] is None

    child = await store.fork("acme", rec.session_id, step=2)
    assert child.text_tokens == 3
    assert (await store.prefill_window("acme", child.session_id, end_step=2, frames=2, text=True))[1] == text
    exported = [e async for e in store.export("acme", child.session_id)]
    assert exported[0].text == text and all(e.text is None for e in exported[1:])
    assert [e.text async for e in store.export("acme", child.session_id, from_step=1)] == [None, None]

    assert await store.delete("acme", rec.session_id)
    assert await store.r.hget(store._log("acme", rec.session_id), "t") is None
    assert (await store.prefill_window("acme", child.session_id, end_step=2, frames=2, text=True))[1] == text

    plain = await make(store)
    assert plain.text_tokens == 0
    assert (await store.prefill_window("acme", plain.session_id, end_step=0, frames=2, text=True))[1] is None
    assert [e.text async for e in store.export("acme", plain.session_id)] == [None]
