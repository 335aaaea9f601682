"""The live room's clock, merge rule, outboxes and message checks (no cluster: a stepper function
stands where the gateway puts the model deployment's handle)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from waiting import until

from worldserve.common.codec import JPEG, PNG, RAW
from worldserve.common.errors import InvalidArgument, NotFound
from worldserve.common.metrics import ServiceMetrics
from worldserve.dynamics.interface import ActionSpace
from worldserve.web.live import LiveRoom, merge
from worldserve.web.live_metrics import LiveMetrics
from worldserve.web.live_protocol import (
    CONTROLLER,
    SPECTATOR,
    Held,
    LiveClosed,
    RateLimit,
    pack_frame,
    parse_message,
    unpack_frame,
)

SPACE = ActionSpace(keys=("left", "right", "jump"), mouse_axes=("x",))
EVENT_BYTES = 16
METRICS = LiveMetrics(ServiceMetrics("webtest"))


class Stepper:
    """Counts steps, records the actions it was given, takes ``delay`` seconds a step."""

    def __init__(self, delay: float = 0.0, fail: BaseException | None = None):
        self.delay, self.fail = delay, fail
        self.calls: list[tuple] = []

    async def __call__(self, keys, mouse, event, deadline, tick):
        self.calls.append((keys, mouse, event))
        await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        rgb = np.full((8, 8, 3), len(self.calls) % 256, dtype=np.uint8)
        return len(self.calls), rgb, event or ""


class Client:
    def __init__(self, send_delay: float = 0.0):
        self.frames: list[tuple[dict, bytes]] = []
        self.texts: list[dict] = []
        self.closed: tuple[int, str] | None = None
        self.send_delay = send_delay

    async def send_bytes(self, b: bytes) -> None:
        await asyncio.sleep(self.send_delay)
        self.frames.append(unpack_frame(b))

    async def send_json(self, m: dict) -> None:
        self.texts.append(m)

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def join(self, room: LiveRoom, role: str = CONTROLLER, fmt: int = RAW):
        return room.join(role, fmt, self.send_bytes, self.send_json, self.close, RateLimit(100, 100))


def room_of(step, fps: float = 50.0, max_controllers: int = 2) -> LiveRoom:
    return LiveRoom(
        session_id="s_test",
        model="m",
        fps=fps,
        max_controllers=max_controllers,
        space=SPACE,
        event_max_bytes=EVENT_BYTES,
        step=step,
        metrics=METRICS,
    )


def test_messages_are_checked_against_the_models_action_space():
    assert parse_message(
        {"type": "action", "seq": 3, "keys": ["right", "left", "right"], "mouse": {"x": 0.5}}, SPACE, EVENT_BYTES
    ) == ("action", {"keys": ("left", "right"), "mouse": {"x": 0.5}, "seq": 3})
    assert parse_message({"type": "action", "mouse": {"x": -1}}, SPACE, EVENT_BYTES) == (
        "action",
        {"keys": (), "mouse": {"x": -1.0}, "seq": 0},
    )
    assert parse_message({"type": "event", "event": "night"}, SPACE, EVENT_BYTES) == (
        "event",
        {"event": "night", "seq": 0},
    )
    assert parse_message({"type": "ping", "t": 5}, SPACE, EVENT_BYTES) == ("ping", {"t": 5})
    for bad, words in [
        ([1, 2], "JSON object"),
        ({"type": "fly"}, "unknown message type"),
        (
            {"type": "action", "keys": ["warp"]},
            "unknown keys ['warp']; this model's keys are ['jump', 'left', 'right']",
        ),
        ({"type": "action", "keys": ["warp", "left"], "mouse": 5}, "unknown keys ['warp']"),  # keys first
        ({"type": "action", "mouse": 5}, "mouse must be an object"),
        ({"type": "action", "keys": "left"}, "list of key names"),
        ({"type": "action", "mouse": {"y": 0.1}}, "unknown mouse axis 'y'; this model's axes are ['x']"),
        ({"type": "action", "mouse": {"x": 3}}, "mouse 'x' must be a number in [-1, 1]"),
        ({"type": "action", "mouse": {"x": True}}, "mouse 'x' must be a number in [-1, 1]"),  # JSON numbers only
        ({"type": "action", "mouse": {"x": "0.5"}}, "mouse 'x' must be a number in [-1, 1]"),
        ({"type": "action", "mouse": {"x": float("nan")}}, "mouse 'x' must be a number in [-1, 1]"),
        ({"type": "action", "mouse": {"x": 10**400}}, "mouse 'x' must be a number in [-1, 1]"),
        ({"type": "action", "seq": -1}, "seq"),
        ({"type": "event", "event": "x" * 17}, "exceeds 16 bytes"),
        ({"type": "event"}, "event must be a string"),
    ]:
        with pytest.raises(InvalidArgument, match=words.replace("[", r"\[").replace("]", r"\]")):
            parse_message(bad, SPACE, EVENT_BYTES)
    with pytest.raises(InvalidArgument, match="does not take world events"):
        parse_message({"type": "event", "event": "rain"}, SPACE, 0)  # 0: the model takes no events
    assert parse_message({"type": "event", "event": ""}, SPACE, 0) == ("event", {"event": "", "seq": 0})


def test_the_merge_rule_unions_keys_and_averages_mouse_axes():
    assert merge([Held(("left",), {"x": 1.0}), Held(("jump", "left"), {"x": 0.0}), Held((), {})]) == (
        ("jump", "left"),
        {"x": 0.5},
    )
    assert merge([]) == ((), {})


def test_frames_pack_and_unpack():
    h, data = unpack_frame(pack_frame({"tick": 3, "step": 9}, b"\x00img"))
    assert h == {"tick": 3, "step": 9} and data == b"\x00img"


async def test_the_room_ticks_on_its_clock_and_everyone_sees_the_same_frame_at_a_tick():
    step = Stepper()
    room = room_of(step, fps=50)
    a, b, watcher = Client(), Client(), Client()
    pa = a.join(room)
    b.join(room)
    watcher.join(room, SPECTATOR, fmt=PNG)
    room.receive(pa, "action", {"keys": ("left",), "mouse": {}, "seq": 1})
    t0 = asyncio.get_running_loop().time()
    await until(lambda: len(step.calls) >= 10 and a.frames and b.frames and watcher.frames, what="ten ticks")
    room.stop()
    elapsed = asyncio.get_running_loop().time() - t0
    n = len(step.calls)
    assert 8 <= n <= 27, n  # 50 fps: about 25 ticks in 0.5 s (fewer on a loaded machine), never more
    assert n <= 50 * elapsed + 2, (n, elapsed)  # never faster than its clock
    assert all(c[0] == ("left",) for c in step.calls)  # the held key stays held tick after tick
    by_tick = {h["tick"]: h["step"] for h, _ in a.frames}
    for c in (b, watcher):
        for h, _ in c.frames:
            assert by_tick.get(h["tick"], h["step"]) == h["step"]
    assert {h["format"] for h, _ in watcher.frames} == {"png"} and {h["format"] for h, _ in a.frames} == {"raw"}
    assert a.frames[-1][0]["ack"] == 1 and b.frames[-1][0]["ack"] == 0  # a's own action, shown


async def test_the_latest_action_per_tick_wins_and_an_event_is_sent_once():
    step = Stepper()
    room = room_of(step, fps=5)
    p = Client().join(room)
    await until(lambda: len(step.calls) >= 1, what="the first tick")  # the first tick has gone
    for seq, keys in enumerate([("left",), ("jump",), ("right",)], start=1):
        room.receive(p, "action", {"keys": keys, "mouse": {}, "seq": seq})
    room.receive(p, "action", {"keys": ("left",), "mouse": {}, "seq": 2})  # late (older seq): ignored
    room.receive(p, "event", {"event": "night", "seq": 4})
    await until(lambda: len(step.calls) >= 3, what="two more ticks")
    room.stop()
    assert step.calls[1] == (("right",), {}, "night")
    assert all(c[2] is None for c in step.calls[2:]) and len(step.calls) >= 3


async def test_a_slow_step_skips_ticks_instead_of_queueing_them():
    step = Stepper(delay=0.12)  # each step overruns 20 ms ticks by ~5 ticks
    room = room_of(step, fps=50)
    c = Client()
    c.join(room)
    await until(lambda: len(step.calls) >= 4 and len(c.frames) >= 3, what="four slow steps")
    room.stop()
    assert 3 <= len(step.calls) <= 6, len(step.calls)
    assert room.misses >= 4 * (len(step.calls) - 1)
    assert all(h["late"] for h, _ in c.frames)


async def test_a_slow_client_gets_frames_dropped_for_it_alone():
    room = room_of(Stepper(), fps=50)
    slow, fast = Client(send_delay=0.2), Client()
    ps = slow.join(room)
    pf = fast.join(room)
    await until(lambda: len(fast.frames) >= 12 and ps.dropped >= 5, what="twelve frames at the fast client")
    room.stop()
    assert ps.dropped >= 5 and len(slow.frames) <= 4
    assert pf.dropped == 0 and len(fast.frames) >= 12  # the tick never waited for the slow one
    assert len(fast.frames) >= len(slow.frames) + ps.dropped - 1


async def test_controllers_beyond_the_limit_are_refused_spectators_are_not():
    room = room_of(Stepper(), max_controllers=2)
    Client().join(room)
    Client().join(room)
    with pytest.raises(LiveClosed) as e:
        Client().join(room)
    assert e.value.code == 4409 and "2 controllers" in e.value.reason
    Client().join(room, SPECTATOR)
    assert room.roster() == {"type": "players", "controllers": 2, "spectators": 1}
    room.stop()


async def test_a_deleted_session_closes_everyone_with_4404_and_failures_are_noticed():
    room = room_of(Stepper(fail=NotFound("session 's_test' not found")))
    c = Client()
    c.join(room)
    await until(lambda: c.closed is not None, what="the close")
    assert c.closed == (4404, "session 's_test' not found")
    room.stop()

    room = room_of(Stepper(fail=RuntimeError("boom")), fps=100)
    c = Client()
    c.join(room)
    await until(lambda: c.closed is not None, what="the close")  # 20 failures, each skipping a tick: ~0.4 s
    assert c.closed is not None and c.closed[0] == 1011 and "steps keep failing" in c.closed[1]
    assert any(t["type"] == "notice" and "INTERNAL" in t["reason"] for t in c.texts)
    room.stop()


async def test_the_room_stops_when_the_last_player_leaves():
    step = Stepper()
    left = []
    room = LiveRoom(
        session_id="s",
        model="m",
        fps=50,
        max_controllers=1,
        space=SPACE,
        event_max_bytes=EVENT_BYTES,
        step=step,
        metrics=METRICS,
        on_empty=left.append,
    )
    c = Client()
    p = c.join(room)
    await until(lambda: len(step.calls) >= 2, what="the room ticking")
    ticking = room._task
    room.leave(p)
    n = len(step.calls)
    await until(ticking.done, what="the clock to stop")  # stopped: no tick can come after this
    assert len(step.calls) == n and left == [room]


def test_a_flooding_client_is_limited():
    limit = RateLimit(rate=10, burst=5)
    assert sum(limit.take() for _ in range(50)) == 5


def test_formats():
    from worldserve.web.live_protocol import FORMATS

    assert FORMATS == {"jpeg": JPEG, "png": PNG, "raw": RAW}


class Bus:
    """The gateway's two Redis channels of one session, in memory: owner -> relays, relays -> owner."""

    def __init__(self):
        self.owner = None
        self.relays: list = []
        self.lost_joins = False

    async def to_relays(self, data: bytes) -> None:
        for r in self.relays:
            await r.on_owner(data)

    async def to_owner(self, m: dict) -> None:
        if self.lost_joins and m["op"] == "join":
            return
        await self.owner.from_relay(json.loads(json.dumps(m)))


def owner_and_relay(step, fps=20.0, max_controllers=2):
    from worldserve.web.relay import RelayRoom

    bus = Bus()
    bus.owner = LiveRoom(
        session_id="s_test",
        model="m",
        fps=fps,
        max_controllers=max_controllers,
        space=SPACE,
        event_max_bytes=EVENT_BYTES,
        step=step,
        metrics=METRICS,
        publish=bus.to_relays,
    )
    relay = RelayRoom(
        session_id="s_test",
        model="m",
        fps=fps,
        max_controllers=max_controllers,
        space=SPACE,
        event_max_bytes=EVENT_BYTES,
        metrics=METRICS,
        replica="r2",
        send=bus.to_owner,
    )
    bus.relays.append(relay)
    return bus, bus.owner, relay


async def test_players_on_another_replica_play_through_a_relay():
    step = Stepper()
    bus, owner, relay = owner_and_relay(step)
    here, there, watcher = Client(), Client(), Client()
    here.join(owner)
    pt = there.join(relay)
    watcher.join(relay, SPECTATOR, fmt=PNG)
    await until(lambda: owner.roster() == {"type": "players", "controllers": 2, "spectators": 1}, what="the joins")
    assert owner.roster() == {"type": "players", "controllers": 2, "spectators": 1}
    raw = {"type": "action", "seq": 1, "keys": ["jump"]}
    relay.receive(pt, *parse_message(raw, SPACE, EVENT_BYTES), raw)

    def shown() -> bool:
        mine = {h["tick"] for h, _ in here.frames}
        return (
            len([h for h, _ in there.frames if h["tick"] in mine]) >= 4
            and there.frames[-1][0]["ack"] == 1
            and watcher.frames
            and any(t.get("type") == "players" for t in there.texts)
        )

    await until(shown, what="the remote controller's action shown")
    owner.stop()
    assert any(c[0] == ("jump",) for c in step.calls)  # the remote controller's key reached the world
    mine = {h["tick"]: (h["step"], data) for h, data in here.frames}
    common = [(h, data) for h, data in there.frames if h["tick"] in mine]
    assert len(common) >= 4 and all(mine[h["tick"]] == (h["step"], data) for h, data in common)
    assert there.frames[-1][0]["ack"] == 1 and {h["format"] for h, _ in watcher.frames} == {"png"}
    assert any(t.get("type") == "players" for t in there.texts)  # rosters reach relayed players too


async def test_the_owner_refuses_a_remote_controller_beyond_the_limit_and_closes_relays_with_the_room():
    bus, owner, relay = owner_and_relay(Stepper(), max_controllers=1)
    Client().join(owner)
    extra = Client()
    extra.join(relay)
    await until(lambda: extra.closed is not None, what="the refusal")
    assert extra.closed is not None and extra.closed[0] == 4409
    owner.stop()

    bus, owner, relay = owner_and_relay(Stepper(fail=NotFound("session 's_test' not found")))
    a, b = Client(), Client()
    a.join(owner)
    b.join(relay, SPECTATOR)
    await until(lambda: a.closed is not None and b.closed is not None, what="both closed")
    assert a.closed == b.closed == (4404, "session 's_test' not found")


async def test_a_lost_join_is_recovered_by_the_relays_heartbeat_and_a_silent_owner_closes_the_relay(monkeypatch):
    import worldserve.web.relay as relay_mod

    monkeypatch.setattr(relay_mod, "RELAY_ALIVE_S", 0.1)
    monkeypatch.setattr(relay_mod, "OWNER_SILENT_S", 0.3)
    bus, owner, relay = owner_and_relay(Stepper(), fps=20)
    bus.lost_joins = True
    Client().join(owner)
    c = Client()
    c.join(relay)
    await until(lambda: owner.controllers == 2 and c.frames, what="the heartbeat's join")
    assert owner.controllers == 2 and c.frames  # joined by the heartbeat, frames flowing
    owner.stop()  # the owner replica goes away: nothing more comes
    bus.relays.clear()
    await until(lambda: c.closed is not None, what="the relay to give up on its owner")
    assert c.closed is not None and c.closed[0] == 1013


def test_a_model_declaring_its_events_takes_free_text_up_to_the_text_bound():
    from worldserve.text.spec import MAX_TEXT_CHARS
    from worldserve.web.live_protocol import event_max_bytes

    assert event_max_bytes({"events_supported": False}) == 0
    assert event_max_bytes({"events_supported": True, "event_max_bytes": 64}) == 64
    declares = {"events_supported": True, "event_max_bytes": 64, "events": ["night falls"]}
    assert event_max_bytes(declares) == MAX_TEXT_CHARS
