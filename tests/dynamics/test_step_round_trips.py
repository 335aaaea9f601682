"""A warm Step costs at most one Redis round trip before the model and one after, quota included:
counted on the wire (every round trip is one write of packed commands on a connection)."""

import numpy as np
import pytest
from redis.asyncio.connection import AbstractConnection

from worldserve.common.codec import PNG, encode_frame
from worldserve.common.config import Config
from worldserve.common.quotas import QuotaExceeded
from worldserve.dynamics.engine.core import Engine
from worldserve.dynamics.engine.types import RateCharge, StepRequest

from .toy_model import ToyModel


class Trips:
    """Counts round trips to Redis, split at the moment the model runs."""

    def __init__(self) -> None:
        self.before = self.after = 0
        self.model_ran = False
        self.on = False


@pytest.fixture
def trips(monkeypatch):
    t = Trips()
    send = AbstractConnection.send_packed_command

    async def counted(self, command, check_health=True):
        if t.on:
            if t.model_ran:
                t.after += 1
            else:
                t.before += 1
        return await send(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
    return t


@pytest.fixture
async def archived_store(redis_server, tmp_path):
    from worldserve.state.archive import Archive
    from worldserve.state.store import ARCHIVE_DUE, SessionStore

    s = SessionStore.from_url(redis_server.url, default_ttl_s=600, archive=Archive.from_url(f"file://{tmp_path}"))
    await s.r.flushall()
    yield s
    assert await s.r.zcard(ARCHIVE_DUE) == 1  # the chunk-filling step queued the session for the archiver
    await s.close()


async def test_a_warm_step_is_one_round_trip_before_the_model_and_one_after(archived_store, trips):
    store = archived_store
    config = Config.load({"archive_chunk_steps": 4}, env={})
    engine = Engine(ToyModel(), store, config, model_name="toy", batch_invariant=True)
    run = engine.runner.run

    def run_and_mark(jobs):
        trips.model_ran = True
        return run(jobs)

    engine.runner.run = run_and_mark  # type: ignore[method-assign]
    engine.start()
    try:
        rgb = np.zeros((16, 16, 3), np.uint8)
        rec = await store.create(
            "t", model="toy", prompt="p", seed=1, width=16, height=16, first_frame=encode_frame(rgb, PNG).data
        )
        rate = RateCharge(steps_per_s=1000.0, burst=64)
        await engine.step(StepRequest(tenant="t", session_id=rec.session_id, keys=("right",), rate=rate))  # cold
        for i in range(6):  # warm steps, one of them filling an archive chunk
            trips.before = trips.after = 0
            trips.model_ran, trips.on = False, True
            out = await engine.step(
                StepRequest(tenant="t", session_id=rec.session_id, keys=("right",), rate=rate, request_id=f"r{i}")
            )
            trips.on = False
            assert out.step == i + 2
            assert (trips.before, trips.after) == (1, 1), f"step {out.step}: {trips.before} before, {trips.after} after"
        # the quota is charged in that same round trip: a tenant over its rate is refused
        with pytest.raises(QuotaExceeded):
            for _ in range(4):
                await engine.step(
                    StepRequest(
                        tenant="t",
                        session_id=rec.session_id,
                        keys=("right",),
                        rate=RateCharge(steps_per_s=0.5, burst=2),
                    )
                )
    finally:
        await engine.close()
