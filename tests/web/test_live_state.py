"""Live play's Redis (worldserve.state.live.LiveState) on a real redis-server: the token keys, the
lease's take / renew / release, and the session's channels, exactly as the gateway always used them."""

from __future__ import annotations

import asyncio
import hashlib

from waiting import until

from worldserve.state.live import LiveState


def test_the_names_are_the_gateways_keys_in_one_hash_slot():
    assert LiveState.names(("acme", "s_1")) == ("ws:live:{acme:s_1}", "ws:live:{acme:s_1}:out", "ws:live:{acme:s_1}:in")
    assert LiveState.token_key("wst_abc") == "ws:webtoken:" + hashlib.sha256(b"wst_abc").hexdigest()


async def test_a_token_maps_to_its_tenant_until_it_expires(store):
    live = LiveState(store)
    assert await live.token_tenant("wst_nope") is None
    await live.mint_token("wst_abc", "acme", 60)
    assert await live.token_tenant("wst_abc") == "acme"
    key = LiveState.token_key("wst_abc")
    assert await store.r.get(key) == b"acme" and 0 < await store.r.ttl(key) <= 60  # the wire format, unchanged
    await store.r.set(LiveState.token_key("wst_old"), "beta", px=50)  # minted by an older replica
    assert await live.token_tenant("wst_old") == "beta"
    await until(lambda: _gone(live, "wst_old"), what="the old token to expire")


async def _gone(live: LiveState, token: str) -> bool:
    return await live.token_tenant(token) is None


async def test_the_lease_is_taken_once_renewed_by_its_holder_and_released_by_it_alone(store):
    live = LiveState(store)
    lease = LiveState.names(("acme", "s_1"))[0]
    assert await live.lease(lease) is None
    assert await live.take_lease(lease, "r1", 12.5, 15.0) == (True, 12.5)
    assert await store.r.get(lease) == b"r1 12.5" and 14_000 < await store.r.pttl(lease) <= 15_000
    assert await live.take_lease(lease, "r2", 30.0, 15.0) == (False, 12.5)  # another replica: the holder's fps
    await store.r.pexpire(lease, 2000)
    assert await live.renew_lease(lease, "r1", 99.0, 15.0) == (True, 12.5)  # renewed: the room's fps stays
    assert await store.r.pttl(lease) > 14_000
    assert await live.lease(lease) == ("r1", 12.5)
    assert not await live.release_lease(lease, "r2") and await live.lease(lease) == ("r1", 12.5)
    assert await live.release_lease(lease, "r1") and await live.lease(lease) is None
    assert await live.take_lease(lease, "r2", 30.0, 15.0) == (True, 30.0)


async def test_an_expired_lease_is_taken_by_the_next_replica(store):
    live = LiveState(store)
    lease = LiveState.names(("acme", "s_2"))[0]
    assert (await live.take_lease(lease, "r1", 10.0, 0.05))[0]

    async def taken() -> bool:
        return (await live.take_lease(lease, "r2", 20.0, 15.0))[0]

    await until(taken, what="the lease to expire")
    assert await live.lease(lease) == ("r2", 20.0)


async def test_a_channel_feeds_its_subscriber_until_cancelled_and_a_bad_message_does_not_stop_it(store):
    live = LiveState(store)
    _, out_ch, in_ch = LiveState.names(("acme", "s_3"))
    got: list[bytes] = []

    async def handle(data: bytes) -> None:
        if data == b"bad":
            raise ValueError("a bad message")
        got.append(data)

    ready = asyncio.Event()
    listener = asyncio.ensure_future(live.subscribe(out_ch, handle, ready))
    await asyncio.wait_for(ready.wait(), 5)
    await live.publish(in_ch, b"not for us")
    for m in (b"F\x00\x01", b"bad", "C{}"):
        await live.publish(out_ch, m)
    await until(lambda: len(got) == 2, what="two messages")
    assert got == [b"F\x00\x01", b"C{}"]
    listener.cancel()
    await asyncio.wait_for(listener, 5)  # ends quietly, unsubscribed
    await until(_no_subscribers(store, out_ch), what="unsubscribed")


def _no_subscribers(store, channel: str):
    async def check() -> bool:
        return dict(await store.r.pubsub_numsub(channel)).get(channel.encode(), 0) == 0

    return check
