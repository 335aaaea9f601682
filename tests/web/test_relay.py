"""A relay (worldserve.web.relay.RelayRoom) on its own: what it sends the owner, in what order, and
what it does with the owner's frames and controls (no Redis, no owner: the test is both)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from _webtest_util import Player
from waiting import until

import worldserve.web.relay as relay_mod
from worldserve.common.codec import PNG, RAW
from worldserve.common.metrics import ServiceMetrics
from worldserve.dynamics.interface import ActionSpace
from worldserve.web.live_metrics import LiveMetrics
from worldserve.web.live_protocol import SPECTATOR, LiveClosed, pack_frame
from worldserve.web.relay import RelayRoom

SPACE = ActionSpace(keys=("left", "right", "jump"), mouse_axes=("x",))
EVENT_BYTES = 16
METRICS = LiveMetrics(ServiceMetrics("webrelay"))


class Owner:
    """What the relay sends, as the owner would get it off the channel (JSON), and a send that
    can fail."""

    def __init__(self):
        self.got: list[dict] = []
        self.fail_next = 0

    async def send(self, m: dict) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("redis away")
        self.got.append(json.loads(json.dumps(m)))

    def ops(self) -> list[tuple]:
        return [(m["op"], m.get("rid")) for m in self.got if m["op"] != "alive"]


def relay_of(owner: Owner, fps: float = 20.0, replica: str = "r2", on_empty=None) -> RelayRoom:
    return RelayRoom(
        session_id="s_test",
        model="m",
        fps=fps,
        max_controllers=2,
        space=SPACE,
        event_max_bytes=EVENT_BYTES,
        metrics=METRICS,
        replica=replica,
        send=owner.send,
        on_empty=on_empty,
    )


def frame(tick: int, step: int, acks: dict, late: bool = False, h: int = 4, w: int = 5) -> bytes:
    rgb = np.full((h, w, 3), step, dtype=np.uint8)
    header = {"tick": tick, "step": step, "late": late, "acks": acks, "height": h, "width": w}
    return b"F" + pack_frame(header, rgb.tobytes())


def control(**c) -> bytes:
    return b"C" + json.dumps(c).encode()


async def test_joins_messages_and_leaves_reach_the_owner_in_order():
    owner = Owner()
    left = []
    relay = relay_of(owner, on_empty=left.append)
    a, b = Player(), Player()
    pa = a.join(relay)
    pb = b.join(relay, SPECTATOR)
    for seq in (1, 2, 3):
        raw = {"type": "action", "seq": seq, "keys": ["left"]}
        relay.receive(pa, "action", {}, raw)
    relay.leave(pb)
    await until(lambda: len(owner.ops()) == 6, what="six messages to the owner")
    assert owner.ops() == [
        ("join", "r2:1"),
        ("join", "r2:2"),
        ("msg", "r2:1"),
        ("msg", "r2:1"),
        ("msg", "r2:1"),
        ("leave", "r2:2"),
    ]
    assert [m["m"]["seq"] for m in owner.got if m["op"] == "msg"] == [1, 2, 3]  # the player's raw message, in order
    assert owner.got[1]["role"] == SPECTATOR
    relay.leave(pa)
    assert left == [relay]  # empty: the gateway forgets it
    await until(lambda: owner.ops()[-1] == ("leave", "r2:1"), what="the last leave sent before the sender stops")


async def test_a_failed_send_is_skipped_and_the_heartbeat_repairs_it(monkeypatch):
    monkeypatch.setattr(relay_mod, "RELAY_ALIVE_S", 0.05)
    owner = Owner()
    owner.fail_next = 1  # the join is lost
    relay = relay_of(owner)
    Player().join(relay)
    await relay.on_owner(control(op="announce", msg={"type": "players"}))  # the owner is there
    await until(lambda: any(m["op"] == "alive" for m in owner.got), what="a heartbeat")
    alive = next(m for m in owner.got if m["op"] == "alive")
    assert alive == {"op": "alive", "r": "r2", "rids": {"r2:1": "controller"}}
    relay.stop()


async def test_the_owners_frames_reach_every_player_in_its_format_with_its_own_ack():
    relay = relay_of(Owner())
    a, b, w = Player(), Player(), Player()
    a.join(relay)
    b.join(relay)
    w.join(relay, SPECTATOR, fmt=PNG)
    await relay.on_owner(frame(tick=7, step=41, acks={"r2:1": 5, "r9:1": 3}, late=True))
    await until(lambda: a.frames and b.frames and w.frames, what="the frame at every player")
    (ha, da), (hb, db), (hw, _) = a.frames[0], b.frames[0], w.frames[0]
    assert (ha["tick"], ha["step"], ha["ack"], ha["late"], ha["format"]) == (7, 41, 5, True, "raw")
    assert hb["ack"] == 0 and hw["format"] == "png" and hw["ack"] == 0  # another replica's ack is not theirs
    assert da == db == bytes([41]) * (4 * 5 * 3) and (ha["width"], ha["height"]) == (5, 4)
    assert relay.frames == 1
    relay.stop()


async def test_a_slow_player_of_a_relay_has_frames_dropped_for_it_alone():
    relay = relay_of(Owner())
    fast, slow = Player(), Player()
    fast.join(relay)
    ps = slow.join(relay)
    gate = asyncio.Event()
    sent = []

    async def stuck(b: bytes) -> None:
        await gate.wait()
        sent.append(b)

    ps._send_bytes = stuck  # this player's client takes nothing until the gate opens
    for tick in range(1, 6):
        await relay.on_owner(frame(tick, tick, {}))
        await until(lambda t=tick: len(fast.frames) == t, what=f"frame {tick} at the fast player")
    assert ps.dropped >= 3 and fast.frames[-1][0]["tick"] == 5
    gate.set()
    await until(lambda: len(sent) == 2, what="the slow player's two frames: the one in flight and the latest")
    relay.stop()


async def test_the_owners_controls_announce_refuse_one_player_or_close_them_all():
    relay = relay_of(Owner())
    a, b = Player(), Player()
    a.join(relay)
    b.join(relay)
    await relay.on_owner(control(op="announce", msg={"type": "players", "controllers": 2, "spectators": 0}))
    assert a.texts == b.texts == [{"type": "players", "controllers": 2, "spectators": 0}]
    await relay.on_owner(control(op="refuse", rid="r2:2", code=4409, reason="full"))
    assert b.closed == (4409, "full") and a.closed is None
    await relay.on_owner(control(op="close", code=4404, reason="session 's_test' not found"))
    assert a.closed == (4404, "session 's_test' not found")
    with pytest.raises(LiveClosed) as e:
        Player().join(relay)
    assert e.value.code == 4404
    relay.stop()


async def test_a_relay_whose_owner_falls_silent_closes_its_players_1013(monkeypatch):
    monkeypatch.setattr(relay_mod, "RELAY_ALIVE_S", 0.05)
    monkeypatch.setattr(relay_mod, "OWNER_SILENT_S", 0.2)
    relay = relay_of(Owner(), fps=50)
    p = Player()
    p.join(relay, fmt=RAW)
    await until(lambda: p.closed is not None, what="the relay to give up on its owner")
    assert p.closed[0] == 1013 and "went away" in p.closed[1]
