"""The shipped model through the engine: batch-invariant frames, deleted sessions' state released,
and the served step reports its runtime."""

import asyncio

import numpy as np
import pytest

from worldserve.common.codec import PNG, decode_frame, encode_frame
from worldserve.common.config import Config
from worldserve.dynamics.engine.core import Engine
from worldserve.dynamics.engine.types import StepRequest
from worldserve.dynamics.registry import load_model

from .test_engine import deletion_subscribers, wait_for_deletion_subscribers

MODEL = "platformer"
KEYS = [["right"], ["right", "jump"], ["left"], [], ["up"], ["right"]]


@pytest.fixture(scope="module")
def world_model():
    config = Config.load({}, env={})  # the served default: shipped weights, float32 on CPU
    return load_model(config.model_spec(MODEL), config, "cpu")


@pytest.fixture
async def make_engine(world_model, store):
    made = []

    def make(*, invariant: bool):
        e = Engine(
            world_model, store, Config.load({"max_batch_size": 32}, env={}), model_name=MODEL, batch_invariant=invariant
        )
        e.start()
        made.append(e)
        return e

    yield make
    for e in made:
        await e.close()


async def new_session(store, seed):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    return await store.create(
        "t", model=MODEL, prompt="p", seed=seed, width=64, height=64, first_frame=encode_frame(rgb, PNG).data
    )


async def play(engine, store, target_seed: int, neighbour_seeds: list[int]) -> list[np.ndarray]:
    """Step a fresh session of ``target_seed`` through KEYS, each step batched with fresh neighbours."""
    target = await new_session(store, target_seed)
    others = [await new_session(store, s) for s in neighbour_seeds]
    frames = []
    for i, keys in enumerate(KEYS):
        reqs = [StepRequest("t", target.session_id, tuple(keys))]
        reqs += [StepRequest("t", o.session_id, tuple(KEYS[(i + j + 1) % len(KEYS)])) for j, o in enumerate(others)]
        outs = await asyncio.gather(*(engine.step(r) for r in reqs))
        frames.append(decode_frame(outs[0].frame.to_pb(), max_bytes=1 << 20))
    return frames


async def test_frames_are_bitwise_independent_of_the_batch(make_engine, store, world_model):
    engine = make_engine(invariant=True)
    alone = await play(engine, store, 42, [])
    batched = await play(engine, store, 42, list(range(100, 107)))  # a batch of 8
    other = await play(engine, store, 42, list(range(200, 215)))  # 16, other neighbours
    for a, b, c in zip(alone, batched, other):
        assert np.array_equal(a, b) and np.array_equal(a, c)
    assert not np.array_equal(alone[0], alone[-1])  # frames do change
    assert engine.model.runtime.attention_backend == "sdpa"


async def test_batched_mode_shares_model_calls(make_engine, store, world_model):
    engine = make_engine(invariant=False)
    recs = [await new_session(store, s) for s in range(8)]
    await asyncio.gather(*(engine.step(StepRequest("t", r.session_id, ("right",))) for r in recs))
    assert len(engine.cache) == 8


async def test_deleting_a_session_releases_its_state(make_engine, store, world_model):
    before = await deletion_subscribers(store)
    engine = make_engine(invariant=True)
    await wait_for_deletion_subscribers(store, before + 1)  # a deletion before it subscribed would not reach it
    recs = [await new_session(store, s) for s in range(3)]
    for r in recs:
        await engine.step(StepRequest("t", r.session_id, ()))
    held = engine.cache.nbytes
    assert held == sum(world_model.state_nbytes(e.state) for e in engine.cache._entries.values()) > 0
    await store.delete("t", recs[0].session_id)
    for _ in range(50):
        if len(engine.cache) == 2:
            break
        await asyncio.sleep(0.05)
    assert len(engine.cache) == 2 and engine.cache.nbytes < held
