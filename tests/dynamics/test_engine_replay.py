"""Exact replay through the engine: two Engines ("replicas", each with its own model instance) on
one real Redis step one session alternately, its state evicted from both before every step, and
its frames are bitwise those of a warm twin stepped on one replica; with the archive on, chunks
move to a file:// archive and Redis is trimmed under the window while it plays."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from worldserve.common.codec import PNG, decode_frame, encode_frame
from worldserve.common.config import DEFAULT_MODELS, TRANSFORMER_MODEL, Config
from worldserve.dynamics.engine.core import Engine
from worldserve.dynamics.engine.types import Priority, StepRequest
from worldserve.dynamics.registry import load_model
from worldserve.dynamics.testkit import away_and_back
from worldserve.state.archive import Archive
from worldserve.state.archiver import ArchivePolicy, Archiver
from worldserve.state.store import SessionStore

from .toy_model import ToyModel


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: on a loaded 2-core box two threads spin against each other (a 10x
    slower run); warm and resumed sessions run alike either way."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CHUNK = 8


def replicas(name: str) -> list:
    """Two instances of a served model, as two replicas load it."""
    if name == "toy":
        return [ToyModel(context_frames=4), ToyModel(context_frames=4)]
    config = Config.load({"models": [*DEFAULT_MODELS, TRANSFORMER_MODEL]}, env={})  # the transformer: tests only
    return [load_model(config.model_spec(name), config, "cpu") for _ in range(2)]


@pytest.fixture
async def astore(redis_server, redis_flush, tmp_path):
    s = SessionStore.from_url(
        redis_server.url, default_ttl_s=600, archive=Archive.from_url(f"file://{tmp_path}/a"), max_tail=256
    )
    await redis_flush(s.r)
    yield s
    await s.close()


async def replay(store: SessionStore, name: str, steps: int, archiver: Archiver | None = None) -> tuple[int, int]:
    """Step a warm session and its evicted-every-step twin; returns (frames compared, frames that changed)."""
    models = replicas(name)
    info = models[0].info
    cfg = {"archive_chunk_steps": CHUNK, "hot_window_steps": info.context_frames}
    engines = [Engine(m, store, Config.load(cfg, env={}), model_name=name, batch_invariant=True) for m in models]
    for e in engines:
        e.start()
    try:
        rgb = np.random.default_rng(4).integers(0, 255, (info.frame_height, info.frame_width, 3), dtype=np.uint8)
        png = encode_frame(rgb, PNG).data
        sids = []
        for _ in range(2):
            rec = await store.create(
                "t", model=name, prompt="p", seed=21, width=info.frame_width, height=info.frame_height, first_frame=png
            )
            sids.append(rec.session_id)
        warm, cold = sids
        changed, prev = 0, rgb
        for i, (keys, mouse) in enumerate(away_and_back(info.action_space, steps)):
            event = "night falls" if info.events_supported and i == steps // 3 else None
            ow = await engines[0].step(StepRequest("t", warm, tuple(keys), dict(mouse), event=event))
            for e in engines:
                e.evict("t", cold)
            oc = await engines[i % 2].step(StepRequest("t", cold, tuple(keys), dict(mouse), event=event))
            fw = decode_frame(ow.frame.to_pb(), max_bytes=1 << 20)
            fc = decode_frame(oc.frame.to_pb(), max_bytes=1 << 20)
            assert np.array_equal(fw, fc), f"{name}: step {i + 1} differs after a forced miss"
            changed += int(not np.array_equal(fw, prev))
            prev = fw
            if archiver is not None:
                await archiver.run_once()
        return steps, changed
    finally:
        for e in engines:
            await e.close()


async def resume_fields(store: SessionStore, sid: str) -> list[int]:
    keys = await store.r.hkeys(store._log("t", sid))
    return sorted(int(k[2:]) for k in keys if k.startswith(b"k:"))


async def test_the_toy_model_replays_exactly_across_replicas(store):
    n, changed = await replay(store, "toy", 64)
    assert changed == n


@pytest.mark.parametrize("name, steps", [("platformer", 72), ("platformer-fast", 72), ("platformer-transformer", 64)])
async def test_a_shipped_model_replays_exactly_across_replicas_with_the_archive_on(astore, name, steps):
    policy = ArchivePolicy(chunk_steps=CHUNK, hot_window=replicas(name)[0].info.context_frames, rid_keep=16)
    n, changed = await replay(astore, name, steps, Archiver(astore, astore.archive, policy))
    assert changed >= n - 2
    sids = [rec.session_id for rec in (await astore.list("t"))[0]]
    context = policy.hot_window
    for sid in sids:
        rec = await astore.get("t", sid)
        assert rec.step == steps and rec.archived >= steps - CHUNK and rec.trimmed > 0  # archived and trimmed
        kept = await resume_fields(astore, sid)
        assert (
            kept
            and kept[0] >= steps - context + 2
            and kept[-1] == steps - steps % (context - 1) * (name != "platformer-transformer")
        )
        # Redis keeps resume data for the last context_frames - 1 steps only (bounded)


async def test_twins_on_batched_replicas_replay_exactly(store):
    """The transformer on two replicas that batch (``batch_invariant`` off): sessions and their twins
    step concurrently on replica A beside other sessions, then the twins go on on replica B (a
    cache miss there, other neighbours in every batch); every frame of a twin is bitwise its warm
    session's (issue 27: while the model's frames depended on its batch, they did not)."""
    name, pairs, fillers, steps, move = "platformer-transformer", 2, 2, 12, 4
    models = replicas(name)
    info = models[0].info
    sizes: list[list[int]] = [[], []]  # every step call's batch, per replica
    for m, seen in zip(models, sizes):
        m.step = lambda states, *a, _step=m.step, _seen=seen, **kw: _seen.append(len(states)) or _step(states, *a, **kw)
    cfg = Config.load({"max_batch_wait_s": 0.05}, env={})  # bulk steps: a batch fills while the model is free
    engines = [Engine(m, store, cfg, model_name=name, batch_invariant=False) for m in models]
    for e in engines:
        e.start()
    keys, events = info.action_space.keys, info.events
    try:
        sids = []  # warm 0, twin 0, warm 1, twin 1, ..., then the fillers (replica A only)
        for p in range(pairs + fillers):
            rgb = np.random.default_rng(p).integers(0, 255, (info.frame_height, info.frame_width, 3), dtype=np.uint8)
            png = encode_frame(rgb, PNG).data
            for _ in range(2 if p < pairs else 1):
                rec = await store.create(
                    "t",
                    model=name,
                    prompt="p",
                    seed=21 + p,
                    width=info.frame_width,
                    height=info.frame_height,
                    first_frame=png,
                )
                sids.append(rec.session_id)
        frames: dict[str, list[np.ndarray]] = {sid: [] for sid in sids}

        async def play(k: int) -> None:
            sid, p, twin = sids[k], k // 2 if k < 2 * pairs else k - pairs, k < 2 * pairs and k % 2 == 1
            for i in range(1, steps + 1):
                engine = engines[1] if twin and i > move else engines[0]
                ev = events[p % len(events)] if 3 <= i < 7 else None
                req = StepRequest("t", sid, (keys[(3 * i + p) % len(keys)],), {}, event=ev, priority=Priority.BULK)
                out = await engine.step(req)
                frames[sid].append(decode_frame(out.frame.to_pb(), max_bytes=1 << 20))

        await asyncio.gather(*(play(k) for k in range(len(sids))))
        assert max(sizes[0]) > pairs and max(sizes[1]) > 1, sizes  # both replicas batched, A beside the fillers
        for p in range(pairs):
            warm, twin = frames[sids[2 * p]], frames[sids[2 * p + 1]]
            differ = [i + 1 for i in range(steps) if not np.array_equal(warm[i], twin[i])]
            assert differ == [], f"pair {p}: steps {differ} differ"
    finally:
        for e in engines:
            await e.close()
