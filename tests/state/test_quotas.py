"""Per-tenant quotas against a real Redis: the GCRA step rate, the live-session count, the limits
on one request, the status details a refusal carries, and the key file's per-tenant overrides."""

import asyncio
import json
import time

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from worldserve.common.auth import KeyRing, add_key, new_key, set_quotas
from worldserve.common.config import Config
from worldserve.common.errors import STATUS_DETAILS_KEY, ResourceExhausted, status_details, status_of
from worldserve.common.quotas import QuotaExceeded, Quotas
from worldserve.sessions.core import SessionsCore
from worldserve.state.quotas import QuotaEnforcer
from worldserve.state.store import SessionsFull, SessionStore


@pytest.fixture(params=["redis", "cluster"])
async def store(request, redis_flush):
    """Quotas hold on one redis-server and on a three-master Redis Cluster (one slot per script)."""
    url = request.getfixturevalue("redis_server" if request.param == "redis" else "redis_cluster").url
    s = SessionStore.from_url(url, default_ttl_s=600)
    await redis_flush(s.r)
    yield s
    await s.close()


def store_url(store) -> str:
    from redis.asyncio.cluster import RedisCluster

    if isinstance(store.r, RedisCluster):
        node = store.r.get_default_node()
        return f"redis+cluster://{node.host}:{node.port}"
    kw = store.r.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/0"


def test_quotas_validate_and_merge():
    q = Quotas.parse({"steps_per_s": 5, "max_step_batch": 8, "step_burst": 8}, Quotas())
    assert (q.steps_per_s, q.max_step_batch, q.max_sessions) == (5, 8, Quotas().max_sessions)
    with pytest.raises(ValueError, match="unknown fields"):
        Quotas.parse({"steps_per_sec": 5})
    with pytest.raises(ValueError, match="step_burst"):
        Quotas.parse({"steps_per_s": 5, "step_burst": 4, "max_step_batch": 8})
    with pytest.raises(ValueError, match="max_sessions"):
        Quotas.parse({"max_sessions": -1})
    assert Config.load({"quotas": {"max_sessions": 3}}).quotas.max_sessions == 3


async def test_gcra_admits_the_burst_then_the_rate_and_says_when(store):
    enf = QuotaEnforcer(store)
    q = Quotas(steps_per_s=10, step_burst=5, max_step_batch=5)
    for _ in range(5):  # the burst passes at once
        await enf.charge_steps("a", q)
    with pytest.raises(QuotaExceeded) as e:
        await enf.charge_steps("a", q)
    assert e.value.quota == "steps_per_s" and "retry in" in str(e.value)
    assert 0.0 < e.value.retry_after_s <= 0.11
    await enf.charge_steps("b", q, 5)  # another tenant has its own bucket
    await asyncio.sleep(e.value.retry_after_s + 0.01)
    await enf.charge_steps("a", q)  # the delay it named was enough
    with pytest.raises(QuotaExceeded) as e2:  # a batch waits for room for all of its items
        await enf.charge_steps("a", q, 5)
    assert 0.4 < e2.value.retry_after_s <= 0.51


async def test_gcra_holds_across_enforcers_and_paces_when_asked(store):
    other = SessionStore.from_url(store_url(store))  # a second replica's connection
    try:
        # 5/s: a step's room comes back after 200 ms, far longer than the six calls take on a busy machine
        q = Quotas(steps_per_s=5, step_burst=4, max_step_batch=4)
        a, b = QuotaEnforcer(store), QuotaEnforcer(other)
        admitted = 0
        for enf in (a, b, a, b, a, b):
            try:
                await enf.charge_steps("t", q)
                admitted += 1
            except QuotaExceeded:
                pass
        assert admitted == 4  # one bucket, wherever the steps arrive
        t0 = time.monotonic()
        for _ in range(4):  # a stream's steps wait for room instead of failing
            await b.charge_steps("t", q, wait_s=1.0)
        assert time.monotonic() - t0 >= 0.55  # 4 steps at 5/s past an empty bucket
    finally:
        await other.close()


async def test_request_limits_name_their_quota():
    enf = QuotaEnforcer.__new__(QuotaEnforcer)
    enf.metrics = None
    q = Quotas(max_rollout_actions=8, max_step_batch=4, step_burst=4, max_ttl_s=3600)
    enf.check_rollout("t", q, 8)
    enf.check_step_batch("t", q, 4)
    enf.check_ttl("t", q, 3600)
    for call, quota in (
        (lambda: enf.check_rollout("t", q, 9), "max_rollout_actions"),
        (lambda: enf.check_step_batch("t", q, 5), "max_step_batch"),
        (lambda: enf.check_ttl("t", q, 3601), "max_ttl_s"),
    ):
        with pytest.raises(QuotaExceeded, match=quota) as e:
            call()
        assert e.value.retry_after_s is None  # waiting does not help


async def test_sessions_quota_counts_live_sessions_and_frees_on_delete(store):
    sids = [(await store.reserve("t", 3))[0] for _ in range(3)]
    with pytest.raises(SessionsFull) as e:
        await store.reserve("t", 3)
    assert e.value.live == 3
    assert (await store.reserve("u", 3))[1] == 1  # per tenant
    await store.create("t", model="m", prompt="p", seed=0, width=8, height=8, first_frame=b"x", session_id=sids[0])
    assert await store.delete("t", sids[0])
    sid, n = await store.reserve("t", 3)  # the deleted one's slot is free again
    assert n == 3
    await store.release("t", sid)
    assert (await store.reserve("t", 3))[1] == 3


async def test_sessions_quota_prunes_expired_sessions(store):
    from worldserve.state import store as store_mod

    sid, _ = await store.reserve("t", 1)
    await store.create("t", model="m", prompt="p", seed=0, width=8, height=8, first_frame=b"x", session_id=sid)
    with pytest.raises(SessionsFull) as e:
        await store.reserve("t", 1)
    assert e.value.soonest_s is not None and 0 < e.value.soonest_s <= 600  # the hint: when one expires
    await store.r.delete(store._rec("t", sid), store._log("t", sid))  # as if its TTL ran out
    old = store_mod.INDEX_GRACE_S
    store_mod.INDEX_GRACE_S = 0.0
    try:
        assert (await store.reserve("t", 1))[1] == 1  # the expired one was pruned
    finally:
        store_mod.INDEX_GRACE_S = old


async def test_racing_creates_never_pass_the_limit(store):
    got = await asyncio.gather(*(store.reserve("t", 5) for _ in range(20)), return_exceptions=True)
    assert sum(not isinstance(g, BaseException) for g in got) == 5
    assert all(isinstance(g, SessionsFull) for g in got if isinstance(g, BaseException))


async def test_core_refuses_over_quota_and_leaves_nothing_behind(store):
    async def generate(*a):
        return _png()

    async def info():
        return {"width": 8, "height": 8}

    cfg = Config.load({"quotas": {"max_sessions": 2, "max_ttl_s": 3600}})
    core = SessionsCore(store, cfg, generate=generate, frame_info=info)
    a, _ = await core.create_from_prompt("t", "a red door on the left, grass, day", seed=0)
    assert a.ttl_s == 3600  # the default TTL is cut to the tenant's ceiling
    await core.fork("t", a.session_id, step=None, seed=None)
    with pytest.raises(QuotaExceeded, match="max_sessions") as e:
        await core.create_from_prompt("t", "a red door on the left, grass, day", seed=1)
    assert e.value.retry_after_s is not None  # when the soonest session expires
    with pytest.raises(QuotaExceeded, match="max_ttl_s"):
        await core.create_from_prompt("t2", "a red door on the left, grass, day", seed=0, ttl_s=7200)
    assert await store.r.zcard(store._index("t2")) == 0

    async def broken(*a):
        raise RuntimeError("image app down")

    core2 = SessionsCore(store, cfg, generate=broken, frame_info=info)
    with pytest.raises(RuntimeError):
        await core2.create_from_prompt("t3", "a red door on the left, grass, day", seed=0)
    assert await store.r.zcard(store._index("t3")) == 0  # the failed create released its slot


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    return buf.getvalue()


def test_a_refusal_carries_retry_info_and_the_quota_in_its_status_details():
    e = QuotaExceeded("steps_per_s", "acme", "quota steps_per_s exceeded; retry in 0.25 s", retry_after_s=0.25)
    code, msg = status_of(e)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    st = status_pb2.Status.FromString(status_details(e, code, msg))
    assert (st.code, st.message) == (code.value[0], msg)
    info, failure = error_details_pb2.RetryInfo(), error_details_pb2.QuotaFailure()
    assert st.details[0].Unpack(info) and info.retry_delay.ToNanoseconds() == 250_000_000
    assert st.details[1].Unpack(failure) and failure.violations[0].description == "steps_per_s"
    assert failure.violations[0].subject == "tenant:acme"
    assert status_details(ValueError("x"), grpc.StatusCode.INTERNAL, "x") is None
    assert status_details(ResourceExhausted("queue full", 0.5), code, "queue full") is not None
    assert STATUS_DETAILS_KEY.endswith("-bin")  # binary metadata


def test_quota_overrides_sit_beside_the_tenants_key(tmp_path):
    path = tmp_path / "keys.json"
    add_key(path, "acme", new_key(), {"steps_per_s": 5, "step_burst": 1024})
    add_key(path, "other", new_key())
    ring = KeyRing.load(path, env={})
    assert ring.quotas == {"acme": {"steps_per_s": 5, "step_burst": 1024}}
    set_quotas(path, "other", {"max_sessions": 7})
    assert KeyRing.load(path, env={}).quotas["other"] == {"max_sessions": 7}
    with pytest.raises(ValueError, match="no key"):
        set_quotas(path, "nobody", {"max_sessions": 1})
    with pytest.raises(ValueError, match="unknown fields"):
        set_quotas(path, "other", {"sessions": 1})
    data = json.loads(path.read_text())
    data["keys"][1]["quotas"] = {"max_sessions": -3}
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="other"):
        KeyRing.load(path, env={})


async def test_short_waits_are_paced_and_refusals_are_held(store):
    enf = QuotaEnforcer(store)
    q = Quotas(steps_per_s=10, step_burst=1, max_step_batch=1)
    await enf.charge_steps("p", q)
    t0 = time.monotonic()
    await enf.charge_steps("p", q, wait_s=0.2)  # 0.1 s of waiting: paced, admitted
    assert 0.05 <= time.monotonic() - t0 < 0.3
    q2 = Quotas(steps_per_s=1, step_burst=1, max_step_batch=1)
    await enf.charge_steps("h", q2)
    t0 = time.monotonic()
    with pytest.raises(QuotaExceeded) as e:  # ~1 s of waiting: refused after a 0.25 s hold
        await enf.charge_steps("h", q2, wait_s=0.1, hold_s=0.25)
    assert 0.2 <= time.monotonic() - t0 < 0.5
    assert 0.6 < e.value.retry_after_s <= 0.76  # the rest of the wait
