"""The engine against a real Redis and the real (small, randomly initialised) model."""

import asyncio

import numpy as np
import pytest
from prometheus_client import REGISTRY

from worldserve.common.codec import PNG, decode_frame, encode_frame
from worldserve.common.config import Config
from worldserve.common.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound
from worldserve.dynamics.engine import Engine
from worldserve.v1 import common_pb2


@pytest.fixture(scope="module")
def model():
    from worldserve.dynamics.model import WorldModel

    return WorldModel.random(seed=0)


@pytest.fixture
async def engine(model, store):
    e = Engine(model, store, Config.load({"max_batch_size": 16}, env={}))
    e.start()
    yield e
    await e.close()


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def new_session(store, seed=1, fill=0):
    rgb = np.full((64, 64, 3), fill, np.uint8)
    rgb[20:40, 10:30] = (200, 30, 30)
    return await store.create("t", model="m", prompt="p", seed=seed, width=64, height=64, first_frame=encode_frame(rgb, PNG).data)


def pixels(r) -> np.ndarray:
    return decode_frame(common_pb2.Frame(format=PNG, data=r.png), max_bytes=1 << 20)


async def test_steps_land_in_redis_and_reuse_the_cache(engine, store):
    rec = await new_session(store)
    hits0 = sample("worldserve_dynamics_context_cache_hits_total")
    r1 = await engine.step("t", rec.session_id, ["right"], {})
    r2 = await engine.step("t", rec.session_id, ["left"], {"mouse_x": 0.25})
    assert (r1.step, r2.step) == (1, 2)
    assert pixels(r2).shape == (64, 64, 3)
    assert (await store.get("t", rec.session_id)).step == 2
    win = await store.window("t", rec.session_id, end_step=2, frames=3)
    assert all(e.latent is not None for e in win)  # step 0 was encoded on first use and stored
    assert win[2].action == {"keys": ["left"], "mouse": {"mouse_x": 0.25}}
    assert sample("worldserve_dynamics_context_cache_hits_total") == hits0 + 1


async def test_same_seed_and_actions_give_same_frames(engine, store):
    a, b = await new_session(store, seed=4), await new_session(store, seed=4)
    c = await new_session(store, seed=5)
    fa = [pixels(await engine.step("t", a.session_id, ["right"], {})) for _ in range(3)]
    fb = [pixels(await engine.step("t", b.session_id, ["right"], {})) for _ in range(3)]
    fc = [pixels(await engine.step("t", c.session_id, ["right"], {})) for _ in range(3)]
    assert all(np.array_equal(x, y) for x, y in zip(fa, fb))
    assert not np.array_equal(fa[-1], fc[-1])


async def test_concurrent_sessions_are_batched(engine, store):
    recs = [await new_session(store, seed=i) for i in range(12)]
    for r in recs:  # warm the caches
        await engine.step("t", r.session_id, [], {})
    count0 = sample("worldserve_dynamics_batch_size_count")
    sum0 = sample("worldserve_dynamics_batch_size_sum")
    out = await asyncio.gather(*(engine.step("t", r.session_id, ["up"], {}) for r in recs))
    assert [o.step for o in out] == [2] * 12
    batches = sample("worldserve_dynamics_batch_size_count") - count0
    assert sample("worldserve_dynamics_batch_size_sum") - sum0 == 12
    assert batches < 12, "concurrent steps must share model calls"


async def test_racing_step_conflicts_and_expected_step(engine, store):
    rec = await new_session(store)
    res = await asyncio.gather(*(engine.step("t", rec.session_id, ["up"], {}) for _ in range(3)), return_exceptions=True)
    assert sum(not isinstance(r, Exception) for r in res) == 1
    assert sum(isinstance(r, Conflict) for r in res) == 2
    with pytest.raises(FailedPrecondition, match="at step 1"):
        await engine.step("t", rec.session_id, ["up"], {}, expected_step=0)
    assert (await engine.step("t", rec.session_id, ["up"], {}, expected_step=1)).step == 2


async def test_another_replica_moving_the_session_invalidates_the_cache(model, engine, store):
    other = Engine(model, store, Config.load({}, env={}))
    other.start()
    try:
        rec = await new_session(store)
        await engine.step("t", rec.session_id, ["up"], {})
        await other.step("t", rec.session_id, ["down"], {})  # the session moved on elsewhere
        r = await engine.step("t", rec.session_id, ["up"], {})  # stale cache: reload, not a wrong frame
        assert r.step == 3
    finally:
        await other.close()


async def test_bad_input(engine, store):
    rec = await new_session(store)
    with pytest.raises(InvalidArgument, match="'jmp'"):
        await engine.step("t", rec.session_id, ["jmp"], {})
    with pytest.raises(InvalidArgument, match="guidance"):
        await engine.step("t", rec.session_id, [], {}, guidance=50.0)
    with pytest.raises(NotFound):
        await engine.step("t", "s_none", [], {})
    with pytest.raises(NotFound):
        await engine.step("other", rec.session_id, [], {})


async def test_event_switch_is_recorded_and_kept(engine, store):
    rec = await new_session(store)
    await engine.step("t", rec.session_id, ["right"], {})
    await engine.step("t", rec.session_id, ["right"], {}, event="night falls")
    await engine.step("t", rec.session_id, ["left"], {})  # unset: the event stays in force
    engine._drop(("t", rec.session_id))  # as on another replica: the event comes back from Redis
    await engine.step("t", rec.session_id, [], {})
    await engine.step("t", rec.session_id, [], {}, event="")  # cleared
    win = await store.window("t", rec.session_id, end_step=5, frames=5)
    assert [(e.action or {}).get("event") for e in win] == [None, "night falls", "night falls", "night falls", None]
    with pytest.raises(InvalidArgument, match="event of 201 characters"):
        await engine.step("t", rec.session_id, [], {}, event="x" * 201)
    if engine.model.events_supported:  # longer than the model's event encoder takes: refused up front
        with pytest.raises(InvalidArgument, match="at most 64"):
            await engine.step("t", rec.session_id, [], {}, event="y" * 100)
        assert (await store.get("t", rec.session_id)).step == 5
