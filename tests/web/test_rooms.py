"""The gateway's live rooms (worldserve.web.rooms) on a real redis-server, without a Ray cluster:
two Rooms stand for two gateway replicas; the steps go through a real StepFront to an in-memory
model deployment."""

from __future__ import annotations

import time

import numpy as np
import pytest
from _webtest_util import Handle, ModelServer, Player, info
from waiting import until

from worldserve.common.codec import RAW
from worldserve.common.config import Config
from worldserve.common.metrics import ServiceMetrics
from worldserve.common.quotas import Quotas
from worldserve.dynamics.engine.types import Priority
from worldserve.dynamics.front import StepFront
from worldserve.state.live import LiveState
from worldserve.state.quotas import QuotaEnforcer
from worldserve.web.live import LiveRoom
from worldserve.web.live_metrics import LiveMetrics
from worldserve.web.live_protocol import SPECTATOR
from worldserve.web.relay import RelayRoom
from worldserve.web.rooms import STEP_OVERHEAD_S, Rooms

METRICS = LiveMetrics(ServiceMetrics("webrooms"))
T = "acme"


class Charges:
    """A QuotaEnforcer's charge_steps, recorded."""

    def __init__(self):
        self.calls: list[tuple] = []

    async def charge_steps(self, tenant, q, n=1, **kw):
        self.calls.append((tenant, q, n))


def rooms_of(
    store,
    replica: str,
    model: ModelServer | None = None,
    *,
    enforcer=None,
    quotas=None,
    front=None,
    lease_s: float = 15.0,
    **config,
) -> Rooms:
    model = model or ModelServer("m")
    step_front = StepFront(store, {"m": Handle(model)}, ["m"], "m")

    async def get_front():
        if front is not None:
            return await front()
        return step_front

    async def model_info(name: str) -> dict:
        return info(name)

    q = quotas or Quotas()
    return Rooms(
        config=Config.load({"live_max_fps": 60, **config}),
        state=LiveState(store),
        front=get_front,
        model_info=model_info,
        enforcer=enforcer or Charges(),
        quotas=lambda tenant: q,
        metrics=METRICS,
        replica=replica,
        lease_s=lease_s,
    )


async def session(store, tenant: str = T) -> str:
    rec = await store.create(tenant, model="m", prompt="", seed=0, width=8, height=6, first_frame=b"png")
    return rec.session_id


async def test_the_first_replica_ticks_a_session_and_another_plays_it_through_a_relay(store):
    sid = await session(store)
    model = ModelServer("m")
    charges = Charges()
    r1, r2 = rooms_of(store, "r1", model, enforcer=charges), rooms_of(store, "r2", model)
    owner = await r1.open(T, sid, "m", 20.0)
    relay = await r2.open(T, sid, "m", 50.0)
    assert isinstance(owner, LiveRoom) and isinstance(relay, RelayRoom)
    assert relay.fps == owner.fps == 20.0  # the owner's clock, whatever the relay's player asked
    assert await r1.open(T, sid, "m", 5.0) is owner and r1.rooms == {(T, sid): owner}
    assert await LiveState(store).lease(LiveState.names((T, sid))[0]) == ("r1", 20.0)

    here, there, watcher = Player(), Player(), Player()
    here.join(owner)
    pt = there.join(relay)
    watcher.join(relay, SPECTATOR)
    await until(lambda: owner.roster() == {"type": "players", "controllers": 2, "spectators": 1}, what="remote joins")
    relay.receive(pt, "action", {}, {"type": "action", "seq": 1, "keys": ["jump"]})

    def shown() -> bool:
        mine = {h["tick"] for h, _ in here.frames}
        return (
            len([h for h, _ in there.frames if h["tick"] in mine]) >= 3
            and there.frames[-1][0]["ack"] == 1
            and watcher.frames
            and any(t.get("type") == "players" for t in there.texts)
        )

    await until(shown, what="the remote controller's action shown on both replicas")
    owner.stop()
    relay.stop()
    mine = {h["tick"]: (h["step"], data) for h, data in here.frames}
    assert all(mine[h["tick"]] == (h["step"], data) for h, data in there.frames if h["tick"] in mine)
    h, data = there.frames[-1]
    assert np.frombuffer(data, np.uint8).reshape(h["height"], h["width"], 3).max() == h["step"] % 256

    reqs = model.requests
    assert any(r.keys == ("jump",) for r in reqs)  # through Redis to the owner, into the world
    assert {(r.tenant, r.session_id, r.fmt, r.priority, r.rate) for r in reqs} == {
        (T, sid, RAW, Priority.INTERACTIVE, None)
    }
    assert all(r.deadline and abs(r.deadline - time.time()) < 5 for r in reqs)
    assert len(charges.calls) >= len(reqs) and {c[0] for c in charges.calls} == {T}  # charged before each step


async def test_the_owner_releases_its_lease_when_its_last_player_leaves_and_the_next_replica_takes_it(store):
    sid = await session(store)
    r1, r2 = rooms_of(store, "r1"), rooms_of(store, "r2")
    lease = LiveState.names((T, sid))[0]
    room = await r1.open(T, sid, "m", 10.0)
    p = Player().join(room)
    room.leave(p)
    assert r1.rooms == {}

    async def released() -> bool:
        return await LiveState(store).lease(lease) is None

    await until(released, what="the lease released")
    again = await r2.open(T, sid, "m", 10.0)
    assert isinstance(again, LiveRoom) and await LiveState(store).lease(lease) == ("r2", 10.0)
    again.stop()


async def test_a_relay_that_empties_leaves_the_owners_lease_alone(store):
    sid = await session(store)
    r1, r2 = rooms_of(store, "r1"), rooms_of(store, "r2")
    owner = await r1.open(T, sid, "m", 10.0)
    Player().join(owner)
    relay = await r2.open(T, sid, "m", 10.0)
    p = Player().join(relay)
    await until(lambda: len(owner.remote) == 1, what="the remote join")
    relay.leave(p)
    assert r2.rooms == {}
    await until(lambda: not owner.remote, what="the remote leave")
    assert await LiveState(store).lease(LiveState.names((T, sid))[0]) == ("r1", 10.0)
    owner.stop()


async def test_the_lease_is_renewed_while_the_room_ticks(store):
    sid = await session(store)
    r1 = rooms_of(store, "r1", lease_s=0.3)
    room = await r1.open(T, sid, "m", 10.0)
    Player().join(room)
    lease = LiveState.names((T, sid))[0]
    t0 = time.monotonic()
    await until(lambda: time.monotonic() - t0 > 0.9, what="three lease periods")  # the lease outlives its TTL
    assert await LiveState(store).lease(lease) == ("r1", 10.0)
    assert not (await rooms_of(store, "r2").state.take_lease(lease, "r2", 10.0, 0.3))[0]
    room.stop()


async def test_max_fps_is_the_configs_bound_or_what_the_models_step_time_allows(store):
    sid = await session(store)
    assert await rooms_of(store, "r1", ModelServer("m", step_s=0.0)).max_fps("m") == 60.0  # no estimate
    slow = rooms_of(store, "r1", ModelServer("m", step_s=0.08))
    assert await slow.max_fps("m") == pytest.approx(1.0 / (0.08 + STEP_OVERHEAD_S))
    assert await rooms_of(store, "r1", ModelServer("m", step_s=5.0)).max_fps("m") == 1.0  # never below 1 fps
    assert await rooms_of(store, "r1", live_max_fps=12).max_fps("m") == 12.0
    assert await rooms_of(store, "r1").max_fps("unserved") == 60.0  # the front refuses it: the config's bound

    async def down():
        raise ConnectionError("dynamics away")

    assert await rooms_of(store, "r1", front=down).max_fps("m") == 60.0

    measured = rooms_of(store, "r1", ModelServer("m", step_s=5.0))
    assert await measured.max_fps("m") == 1.0
    assert (await measured.front()).measured_step_s("m") is None  # nothing stepped yet: the model's 5 s
    room = await measured.open(T, sid, "m", 1.0)
    Player().join(room)
    await until(lambda: room.frames >= 1, what="a live step")
    room.stop()
    step_s = (await measured.front()).measured_step_s("m")  # measured (in memory: fast), no longer the model's 5 s
    assert step_s < 1.0 and await measured.max_fps("m") == pytest.approx(min(60.0, 1.0 / step_s))


async def test_the_stepper_charges_the_step_rate_and_a_refusal_is_noticed(store):
    sid = await session(store)
    r1 = rooms_of(
        store, "r1", enforcer=QuotaEnforcer(store), quotas=Quotas(steps_per_s=0.5, step_burst=1, max_step_batch=1)
    )
    room = await r1.open(T, sid, "m", 50.0)
    p = Player()
    p.join(room)
    await until(
        lambda: any(t["type"] == "notice" and "RESOURCE_EXHAUSTED" in t["reason"] for t in p.texts),
        what="the quota refusal noticed",
    )
    room.stop()
    assert room.frames == 1  # the burst of one, then refused


async def test_a_deleted_session_closes_the_room_with_4404(store):
    sid = await session(store)
    r1 = rooms_of(store, "r1")
    await store.delete(T, sid)
    room = await r1.open(T, sid, "m", 20.0)
    p = Player()
    p.join(room)
    await until(lambda: p.closed is not None, what="the close")
    assert p.closed[0] == 4404
    room.stop()


async def test_a_free_text_event_in_live_play_is_mapped_and_announced_and_a_refused_one_is_dropped(store):
    sid = await session(store)
    model = ModelServer("m", events=("it starts to rain", "night falls"))
    asked: list[str] = []

    async def parse_event(text, events):
        asked.append(text)
        if "rain" in text:
            return "it starts to rain"
        from worldserve.common.errors import InvalidArgument

        raise InvalidArgument(f"{text!r} names none of the events: {', '.join(map(repr, events))}")

    front = StepFront(store, {"m": Handle(model)}, ["m"], "m", parse_event=parse_event)

    async def get_front():
        return front

    room = await rooms_of(store, "r1", model, front=get_front).open(T, sid, "m", 20.0)
    p = Player()
    pl = p.join(room)
    room.receive(pl, "event", {"event": "sing a song", "seq": 1})
    await until(lambda: any("names none of the events" in t.get("reason", "") for t in p.texts), what="a notice")
    room.receive(pl, "event", {"event": "let it rain", "seq": 2})
    await until(lambda: {"type": "event", "event": "it starts to rain", "text": "let it rain"} in p.texts, what="event")
    room.stop()
    assert asked == ["sing a song", "let it rain"]  # the refused text was dropped, not retried each tick
    # the model saw the declared event once, with its text; the refused text never reached it
    assert [(r.event, r.event_text) for r in model.requests if r.event is not None] == [
        ("it starts to rain", "let it rain")
    ]
