"""The engine (scheduler, state cache, runner, output) against a real Redis, with a small
third-party-style model (tests/dynamics/toy_model.py) so that every path is fast and exact.
The shipped model through the same engine: test_engine_world_model.py."""

import asyncio

import numpy as np
import pytest
import torch
from prometheus_client import REGISTRY
from waiting import until

from worldserve.common.codec import JPEG, PNG, RAW, decode_frame, encode_frame
from worldserve.common.config import Config
from worldserve.common.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from worldserve.dynamics.engine.core import Engine
from worldserve.dynamics.engine.types import Priority, StepRequest
from worldserve.state.store import DELETIONS_CHANNEL
from worldserve.v1 import common_pb2

from .toy_model import POISON_SEED, ToyModel

MODEL = "toy"


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def make_engine(store):
    made = []

    def make(model=None, *, invariant=False, **cfg):
        e = Engine(
            model or ToyModel(),
            store,
            Config.load({"max_batch_size": 16, **cfg}, env={}),
            model_name=MODEL,
            batch_invariant=invariant,
        )
        e.start()
        made.append(e)
        return e

    yield make
    for e in made:
        await e.close()


@pytest.fixture
async def engine(make_engine):
    return make_engine()


async def new_session(store, seed=1, model=MODEL, tenant="t"):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[4:8, 2:6] = (200, 30, 30)
    return await store.create(
        tenant, model=model, prompt="p", seed=seed, width=16, height=16, first_frame=encode_frame(rgb, PNG).data
    )


def req(sid, keys=(), tenant="t", **kw) -> StepRequest:
    return StepRequest(tenant=tenant, session_id=sid, keys=tuple(keys), **kw)


def pixels(out) -> np.ndarray:
    return decode_frame(out.frame.to_pb(), max_bytes=1 << 20)


async def deletion_subscribers(store) -> int:
    """Subscribers of the deletion feed (every engine's eviction loop holds one)."""
    ((_, n),) = await store.r.pubsub_numsub(DELETIONS_CHANNEL)
    return n


async def wait_for_deletion_subscribers(store, n: int, timeout_s: float = 5.0) -> None:
    """Until ``n`` clients subscribe to the deletion feed: a deletion published before an
    engine subscribed would never reach it."""

    async def subscribed() -> bool:
        return await deletion_subscribers(store) >= n

    await until(subscribed, timeout_s, f"{n} subscribers on {DELETIONS_CHANNEL}")


async def test_steps_land_in_redis_and_reuse_the_state(engine, store):
    rec = await new_session(store)
    hits0 = sample("worldserve_dynamics_context_cache_hits_total", model=MODEL)
    r1 = await engine.step(req(rec.session_id, ["right"]))
    r2 = await engine.step(req(rec.session_id, ["left"]))
    assert (r1.step, r2.step) == (1, 2)
    assert pixels(r2).shape == (16, 16, 3)
    assert (await store.get("t", rec.session_id)).step == 2
    win = await store.window("t", rec.session_id, end_step=2, frames=3)
    assert all(e.latent is not None for e in win)  # step 0 was encoded on first use and stored
    assert win[2].action == {"keys": ["left"], "mouse": {}}
    assert sample("worldserve_dynamics_context_cache_hits_total", model=MODEL) == hits0 + 1
    assert sample("worldserve_dynamics_model_steps_total", model=MODEL, backend="none", kernel="none") >= 2


async def test_formats(engine, store):
    rec = await new_session(store)
    for fmt in (PNG, JPEG, RAW):
        out = await engine.step(req(rec.session_id, fmt=fmt))
        assert out.frame.format == fmt and (out.frame.width, out.frame.height) == (16, 16)
    with pytest.raises(InvalidArgument, match="unknown frame format 99"):
        await engine.step(req(rec.session_id, fmt=99))


async def test_same_seed_and_actions_give_same_frames(engine, store):
    a, b, c = await new_session(store, seed=4), await new_session(store, seed=4), await new_session(store, seed=5)
    fa = [pixels(await engine.step(req(a.session_id, ["right"]))) for _ in range(3)]
    fb = [pixels(await engine.step(req(b.session_id, ["right"]))) for _ in range(3)]
    fc = [pixels(await engine.step(req(c.session_id, ["right"]))) for _ in range(3)]
    assert all(np.array_equal(x, y) for x, y in zip(fa, fb))
    assert not np.array_equal(fa[-1], fc[-1])


async def test_concurrent_sessions_share_model_calls(make_engine, store):
    model = ToyModel()
    engine = make_engine(model)
    recs = [await new_session(store, seed=i) for i in range(12)]
    for r in recs:
        await engine.step(req(r.session_id))
    model.step_calls.clear()
    out = await asyncio.gather(*(engine.step(req(r.session_id, ["up"])) for r in recs))
    assert [o.step for o in out] == [2] * 12
    assert sum(model.step_calls) == 12 and len(model.step_calls) < 12, model.step_calls


async def test_batch_invariant_mode_steps_each_session_alone(make_engine, store):
    model = ToyModel()
    engine = make_engine(model, invariant=True)
    recs = [await new_session(store, seed=i) for i in range(6)]
    await asyncio.gather(*(engine.step(req(r.session_id, ["up"])) for r in recs))
    assert model.step_calls == [1] * 6


async def test_one_failing_session_fails_alone(make_engine, store):
    model = ToyModel()
    engine = make_engine(model)
    recs = [await new_session(store, seed=s) for s in (1, 2, POISON_SEED, 3, 4)]
    failures0 = sample("worldserve_dynamics_item_failures_total", model=MODEL)
    res = await asyncio.gather(*(engine.step(req(r.session_id, ["up"])) for r in recs), return_exceptions=True)
    assert isinstance(res[2], RuntimeError) and "poisoned" in str(res[2])
    assert [r.step for i, r in enumerate(res) if i != 2] == [1, 1, 1, 1]
    assert (await store.get("t", recs[2].session_id)).step == 0  # nothing landed for it
    assert sample("worldserve_dynamics_item_failures_total", model=MODEL) == failures0 + 1
    # the neighbours' states are good: the next step is a cache hit and lands
    assert (await engine.step(req(recs[0].session_id))).step == 2
    assert not any(h for h in model.live if h not in {id(e.state) for e in engine.cache._entries.values()})


async def test_racing_step_conflicts_and_expected_step(engine, store):
    rec = await new_session(store)
    res = await asyncio.gather(*(engine.step(req(rec.session_id, ["up"])) for _ in range(3)), return_exceptions=True)
    assert sum(not isinstance(r, Exception) for r in res) == 1
    assert sum(isinstance(r, Conflict) for r in res) == 2
    with pytest.raises(FailedPrecondition, match="at step 1"):
        await engine.step(req(rec.session_id, ["up"], expected_step=0))
    assert (await engine.step(req(rec.session_id, ["up"], expected_step=1))).step == 2
    # racing with expected_step: the losers' precondition failed, whichever check caught them
    res = await asyncio.gather(
        *(engine.step(req(rec.session_id, expected_step=2)) for _ in range(3)), return_exceptions=True
    )
    assert sorted(type(r).__name__ for r in res) == ["FailedPrecondition", "FailedPrecondition", "StepOutput"]


async def test_a_retried_request_id_returns_the_recorded_step_and_applies_nothing(make_engine, store):
    engine, other = make_engine(), make_engine()  # two replicas
    rec = await new_session(store)
    first = await engine.step(req(rec.session_id, ["up"], request_id="r-1", expected_step=0))
    replays0 = sample("worldserve_dynamics_step_replays_total", model=MODEL)
    # the retry: same id, even with its now-stale expected_step, on either replica, in another format
    again = await engine.step(req(rec.session_id, ["up"], request_id="r-1", expected_step=0))
    elsewhere = await other.step(req(rec.session_id, ["up"], request_id="r-1", fmt=RAW))
    assert again.step == elsewhere.step == first.step == 1 and again.frame == first.frame
    assert np.array_equal(pixels(elsewhere), pixels(first))
    assert (await store.get("t", rec.session_id)).step == 1  # nothing applied twice
    assert sample("worldserve_dynamics_step_replays_total", model=MODEL) == replays0 + 2
    # a new id steps; ids are per session (another session's "r-1" is its own)
    assert (await engine.step(req(rec.session_id, ["up"], request_id="r-2"))).step == 2
    rec2 = await new_session(store)
    assert (await engine.step(req(rec2.session_id, ["up"], request_id="r-1"))).step == 1


async def test_twins_of_one_request_id_racing_on_two_replicas_land_once(make_engine, store):
    engine, other = make_engine(), make_engine()
    rec = await new_session(store)
    outs = await asyncio.gather(
        *(e.step(req(rec.session_id, ["up"], request_id="twin")) for e in (engine, other)), return_exceptions=True
    )
    steps = [o.step for o in outs if not isinstance(o, Exception)]
    assert steps and set(steps) == {1}, outs  # the loser is answered with the winner's step, or ABORTED
    assert all(isinstance(o, Conflict) for o in outs if isinstance(o, Exception))
    assert (await store.get("t", rec.session_id)).step == 1


async def test_another_replica_moving_the_session_makes_the_state_stale(make_engine, store):
    model = ToyModel()
    engine, other = make_engine(model), make_engine(ToyModel())
    rec = await new_session(store)
    await engine.step(req(rec.session_id, ["up"]))
    await other.step(req(rec.session_id, ["down"]))  # the session moved on elsewhere
    stale0 = sample("worldserve_dynamics_state_evictions_total", model=MODEL, reason="stale")
    assert (await engine.step(req(rec.session_id, ["up"]))).step == 3  # re-prefilled, not a wrong frame
    assert sample("worldserve_dynamics_state_evictions_total", model=MODEL, reason="stale") == stale0 + 1


async def test_bad_input(engine, store):
    rec = await new_session(store)
    with pytest.raises(InvalidArgument, match="'jmp'"):
        await engine.step(req(rec.session_id, ["jmp"]))
    with pytest.raises(InvalidArgument, match="guidance"):
        await engine.step(req(rec.session_id, guidance=50.0))
    with pytest.raises(NotFound):
        await engine.step(req("s_none"))
    with pytest.raises(NotFound):
        await engine.step(req(rec.session_id, tenant="other"))
    with pytest.raises(InvalidArgument, match="event of 201 characters"):
        await engine.step(req(rec.session_id, event="x" * 201))
    assert (await store.get("t", rec.session_id)).step == 0


async def test_a_session_of_another_model_is_refused(engine, store):
    rec = await new_session(store, model="some-other-model")
    with pytest.raises(FailedPrecondition, match="bound to model 'some-other-model'; this deployment serves 'toy'"):
        await engine.step(req(rec.session_id))


async def test_event_switch_is_recorded_and_kept(engine, store):
    rec = await new_session(store)
    sid = rec.session_id
    await engine.step(req(sid, ["right"]))
    await engine.step(req(sid, ["right"], event="night falls"))
    await engine.step(req(sid, ["left"]))  # unset: the event stays in force
    engine.evict("t", sid)  # as on another replica: the event comes back from Redis
    await engine.step(req(sid))
    await engine.step(req(sid, event=""))  # cleared
    win = await store.window("t", sid, end_step=5, frames=5)
    assert [(e.action or {}).get("event") for e in win] == [None, "night falls", "night falls", "night falls", None]


async def test_deleted_sessions_leave_every_replica(make_engine, store):
    m1, m2 = ToyModel(), ToyModel()
    subscribed0 = await deletion_subscribers(store)
    e1, e2 = make_engine(m1), make_engine(m2)
    await wait_for_deletion_subscribers(store, subscribed0 + 2)  # both subscribed to the deletion feed
    a, b = await new_session(store), await new_session(store)
    await e1.step(req(a.session_id))
    await e2.step(req(a.session_id))
    await e1.step(req(b.session_id))
    assert ("t", a.session_id) in e1.cache and ("t", a.session_id) in e2.cache
    deleted0 = sample("worldserve_dynamics_state_evictions_total", model=MODEL, reason="deleted")
    assert await store.delete("t", a.session_id)
    for _ in range(50):
        if ("t", a.session_id) not in e1.cache and ("t", a.session_id) not in e2.cache:
            break
        await asyncio.sleep(0.05)
    assert ("t", a.session_id) not in e1.cache and ("t", a.session_id) not in e2.cache
    assert ("t", b.session_id) in e1.cache
    assert sample("worldserve_dynamics_state_evictions_total", model=MODEL, reason="deleted") == deleted0 + 2
    await e1.step(req(b.session_id))  # the next batch releases the deleted state's memory
    assert len(m1.live) == 1 and m1.released >= 1
    # The gauge is set by the replica whose cache changed last (here e1, after its step): b alone.
    assert len(e1.cache) == 1 and len(e2.cache) == 0
    assert sample("worldserve_dynamics_active_sessions", model=MODEL) == 1


async def test_a_state_computed_during_a_delete_is_not_kept(engine, store):
    rec = await new_session(store)
    key = ("t", rec.session_id)
    await engine.step(req(rec.session_id))
    since = __import__("time").monotonic()
    entry = engine.cache.get(key, 1)
    engine.cache.take(key)
    engine.evict(*key)  # DeleteSession arrives while a step computed a new state
    assert not engine.cache.put(key, entry.state, "", since=since)
    assert key not in engine.cache


async def test_state_byte_budget(make_engine, store):
    model = ToyModel()
    one = 3 * 3 * 16 * 16 * 4  # three latents of one session after a step
    engine = make_engine(model, state_cache_bytes=16 * 1024**2)
    engine.cache.budget_bytes = 2 * one  # room for two sessions
    recs = [await new_session(store, seed=i) for i in range(4)]
    for r in recs:
        for _ in range(3):
            await engine.step(req(r.session_id))
    assert len(engine.cache) == 2 and engine.cache.nbytes <= 2 * one
    assert ("t", recs[3].session_id) in engine.cache and ("t", recs[0].session_id) not in engine.cache


async def test_state_memory_full_evicts_least_recently_used(make_engine, store):
    model = ToyModel(max_states=2)
    engine = make_engine(model)
    recs = [await new_session(store, seed=i) for i in range(3)]
    for r in recs:
        assert (await engine.step(req(r.session_id))).step == 1
    assert len(engine.cache) == 2 and ("t", recs[0].session_id) not in engine.cache


async def test_a_cancelled_step_is_withdrawn(make_engine, store):
    model = ToyModel()
    engine = make_engine(model)
    recs = [await new_session(store, seed=i) for i in range(3)]
    tasks = [asyncio.create_task(engine.step(req(r.session_id))) for r in recs]
    await asyncio.sleep(0)
    tasks[2].cancel()
    res = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(res[2], asyncio.CancelledError) or getattr(res[2], "step", None) == 1
    await asyncio.sleep(0.05)
    if isinstance(res[2], asyncio.CancelledError):
        assert (await store.get("t", recs[2].session_id)).step == 0
    assert engine.scheduler.depth == 0 and not engine._inflight


async def test_a_full_queue_refuses_at_once(store):
    engine = Engine(ToyModel(), store, Config.load({"max_queue": 2}, env={}), model_name=MODEL)  # not started
    engine.scheduler.submit("x", object())
    engine.scheduler.submit("x", object(), Priority.BULK)
    rec = await new_session(store)
    with pytest.raises(ResourceExhausted, match="queue is full"):
        await engine.step(req(rec.session_id))
    assert not engine._inflight and ("t", rec.session_id) not in engine.cache._pinned
    await engine.close()


def test_frame_dataclass_converts_to_protobuf():
    from worldserve.common.codec import encode_rgb

    f = encode_rgb(np.zeros((4, 6, 3), np.uint8), RAW)
    assert f.to_pb() == common_pb2.Frame(format=RAW, data=bytes(72), width=6, height=4)


class SlowToy(ToyModel):
    """Each model call takes ``delay_s`` (a CPU model's step), so batch lengths show in latency."""

    def __init__(self, delay_s: float):
        super().__init__()
        self.delay_s = delay_s

    def step(self, *a, **kw):
        import time

        time.sleep(self.delay_s)
        return super().step(*a, **kw)


async def test_an_interactive_step_overtakes_queued_farm_steps_and_batches_stay_short(make_engine, store):
    import time

    engine = make_engine(SlowToy(0.02), invariant=True, max_batch_size=64, interactive_batch_s=0.05)
    farm = [await new_session(store, seed=i, tenant="farm") for i in range(24)]
    player = await new_session(store, seed=99, tenant="player")
    await engine.step(req(player.session_id, tenant="player"))  # warm: the per-step estimate exists
    t0 = time.monotonic()
    farm_tasks = [asyncio.create_task(engine.step(req(r.session_id, tenant="farm"))) for r in farm]
    await asyncio.sleep(0.03)  # the farm's steps are queued and running
    out = await engine.step(
        req(player.session_id, tenant="player", priority=Priority.INTERACTIVE, deadline=time.time() + 0.5)
    )
    interactive_s = time.monotonic() - t0
    farm_done = sum(t.done() for t in farm_tasks)
    await asyncio.gather(*farm_tasks)
    farm_s = time.monotonic() - t0
    assert out.step == 2
    # 24 farm steps take ~0.5 s of model time; the player's step went ahead of most of them
    assert farm_done < 12 and interactive_s < farm_s / 2, (farm_done, interactive_s, farm_s)
    assert sample("worldserve_dynamics_deadline_steps_total", model=MODEL, outcome="met") >= 1


async def test_batches_are_cut_only_while_steps_someone_waits_on_are_about(make_engine, store):
    engine = make_engine(SlowToy(0.01), invariant=True, max_batch_size=64, interactive_batch_s=0.02)
    assert engine._batch_limit(False) is None and engine._batch_limit(True) is None  # no estimate yet
    recs = [await new_session(store, seed=i) for i in range(4)]
    await asyncio.gather(*(engine.step(req(r.session_id)) for r in recs))
    assert engine._item_s > 0.005
    assert engine._batch_limit(False) is None
    assert 1 <= engine._batch_limit(True) <= 4  # 0.02 s of model time at ~0.01 s a step


class TextToy(ToyModel):
    """A toy that takes a text embedding (``info.extra["text_dim"]``) and records what each prefill got."""

    def __init__(self, text_dim: int):
        super().__init__()
        self.text_dim, self.texts = text_dim, []

    @property
    def info(self):
        import dataclasses

        return dataclasses.replace(super().info, extra={"text_dim": self.text_dim} if self.text_dim else {})

    def prefill(self, latents, actions, first_step, events=None, resume=None, text=None):
        self.texts.append(text)
        return super().prefill(latents, actions, first_step, events, resume)


async def test_the_text_embedding_reaches_every_prefill_of_a_model_that_takes_one(make_engine, store):
    from worldserve.client import text_embedding

    emb = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    rgb = np.zeros((16, 16, 3), np.uint8)
    rec = await store.create(
        "t",
        model=MODEL,
        prompt="p",
        seed=1,
        width=16,
        height=16,
        first_frame=encode_frame(rgb, PNG).data,
        text=text_embedding(emb),
        text_tokens=3,
    )
    toy = TextToy(8)
    engine = make_engine(toy)
    await engine.step(req(rec.session_id, ["right"]))
    engine.evict("t", rec.session_id)  # a cache miss: prefilled again, with the text again
    await engine.step(req(rec.session_id, ["right"]))
    assert len(toy.texts) == 2 and all(torch.equal(t, torch.from_numpy(emb)) for t in toy.texts)

    plain = TextToy(0)  # a model without text_dim is never handed one
    engine2 = make_engine(plain)
    rec2 = await new_session(store)
    await engine2.step(req(rec2.session_id))
    assert plain.texts == [None]
