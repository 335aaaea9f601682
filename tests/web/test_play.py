"""Live play over the gateway's WebSocket route (worldserve.web.play), driven in process through
the real FastAPI app with a real Redis and no Ray cluster: the credentials, the query's checks and
their close codes, the hello, frames, messages; and two gateway replicas, the second playing
through a relay."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from _webtest_util import KEY, OTHER_KEY, WebSocketClient, http, make_gateway
from ray import serve
from waiting import until

from worldserve.dynamics.engine.types import Priority
from worldserve.web import gateway
from worldserve.web.live import LiveRoom
from worldserve.web.relay import RelayRoom


def auth(cred: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {cred}")]


async def new_session(gw) -> str:
    status, rec = await http(gateway.app, "POST", "/v1/sessions", headers=auth(KEY), body={"prompt": "x"})
    assert status == 200, rec
    return rec["session_id"]


def connect(sid: str, query: str = "format=raw&fps=20", headers=(), subprotocols=()) -> WebSocketClient:
    return WebSocketClient(gateway.app, f"/v1/sessions/{sid}/play", query, headers, subprotocols)


@pytest.fixture
def gw(store, tmp_path, monkeypatch):
    return make_gateway(store, tmp_path, monkeypatch, live_max_fps=60)


async def test_a_player_with_a_token_in_the_subprotocol_gets_a_hello_then_frames(gw):
    sid = await new_session(gw)
    _, minted = await http(gateway.app, "POST", "/v1/tokens", headers=auth(KEY))
    c = connect(sid, subprotocols=["worldserve", "worldserve.token." + minted["token"]])
    await until(lambda: c.of_type("hello") and len(c.frames) >= 3, what="the hello and three frames")
    assert c.accepted and c.subprotocol == "worldserve"
    hello = c.of_type("hello")[0]
    assert {
        k: hello[k]
        for k in (
            "session_id",
            "model",
            "role",
            "player",
            "fps",
            "step",
            "keys",
            "mouse_axes",
            "events_supported",
            "relayed",
        )
    } == {
        "session_id": sid,
        "model": "m",
        "role": "controller",
        "player": 1,
        "fps": 20.0,
        "step": 0,
        "keys": ["jump", "left", "right"],
        "mouse_axes": ["x"],
        "events_supported": True,
        "relayed": False,
    }
    assert c.texts.index(hello) == 0  # nothing before the hello
    assert hello["max_fps"] == 60.0 and gw.dynamics_stub.list_calls == 1  # the front, built once
    c.send({"type": "action", "seq": 4, "keys": ["left"]})
    c.send({"type": "ping", "t": 12.5})
    await until(lambda: c.frames[-1][0]["ack"] == 4 and c.of_type("pong"), what="the action shown and the pong")
    assert c.of_type("pong") == [{"type": "pong", "t": 12.5}]
    reqs = gw.model_stubs["m"].requests
    assert any(r.keys == ("left",) for r in reqs) and {(r.tenant, r.session_id, r.priority) for r in reqs} == {
        ("acme", sid, Priority.INTERACTIVE)
    }
    await c.disconnect()
    assert c.closed == (1000, "bye") and gw.rooms.rooms == {}
    assert gw.dynamics_stub.list_calls == 1


async def test_a_key_in_the_header_plays_and_a_spectator_only_watches(gw):
    sid = await new_session(gw)
    watcher = connect(sid, "role=spectator&format=png&fps=10", headers=auth(KEY))
    await until(lambda: watcher.of_type("hello") and watcher.frames, what="the spectator's frames")
    assert watcher.subprotocol is None and watcher.frames[0][0]["format"] == "png"
    watcher.send({"type": "action", "keys": ["left"]})
    await until(lambda: watcher.of_type("notice"), what="the spectator's notice")
    assert "spectators watch" in watcher.of_type("notice")[0]["reason"]
    await watcher.disconnect()


@pytest.mark.parametrize(
    "query, headers, subprotocols, code, words",
    [
        ("format=raw", [], [], 4401, ""),
        ("format=raw", auth("sk-wrong"), [], 4401, ""),
        ("format=raw", [], ["worldserve", "worldserve.token.wst_expired"], 4401, "unknown or expired token"),
        (f"format=raw&key={KEY}", auth(KEY), [], 4401, "never in the URL"),
        ("role=pilot", auth(KEY), [], 4400, "role must be"),
        ("format=gif", auth(KEY), [], 4400, "format must be one of"),
        ("fps=0", auth(KEY), [], 4400, "fps must be a number"),
        ("fps=fast", auth(KEY), [], 4400, "fps must be a number"),
    ],
)
async def test_a_bad_connection_is_closed_with_its_code(gw, query, headers, subprotocols, code, words):
    sid = await new_session(gw)
    c = connect(sid, query, headers, subprotocols)
    await until(lambda: c.closed is not None, what="the close")
    assert c.closed[0] == code and words in c.closed[1] and not c.frames and not c.of_type("hello")
    await c.task


async def test_another_tenants_or_a_missing_session_is_4404(gw):
    sid = await new_session(gw)
    for s, headers in ((sid, auth(OTHER_KEY)), ("s_missing", auth(KEY))):
        c = connect(s, headers=headers)
        await until(lambda c=c: c.closed is not None, what="the close")
        assert c.closed[0] == 4404


@pytest.mark.parametrize(
    "msg, words",
    [
        ("{not json", "not JSON"),
        (b"\x00", "binary messages are not accepted"),
        ({"type": "action", "keys": ["warp"]}, "unknown keys"),
        ("x" * 5000, "exceeds 4096 bytes"),
    ],
)
async def test_a_malformed_message_closes_its_player_4400(gw, msg, words):
    sid = await new_session(gw)
    c = connect(sid, headers=auth(KEY))
    await until(lambda: c.of_type("hello"), what="the hello")
    c.send(msg)
    await until(lambda: c.closed is not None, what="the close")
    assert c.closed[0] == 4400 and words in c.closed[1]
    await c.task
    assert gw.rooms.rooms == {}


async def test_a_flooding_player_is_told_and_its_messages_dropped(store, tmp_path, monkeypatch):
    gw = make_gateway(store, tmp_path, monkeypatch, live_client_msgs_per_s=1)
    sid = await new_session(gw)
    c = connect(sid, headers=auth(KEY))
    await until(lambda: c.of_type("hello"), what="the hello")
    for seq in range(1, 10):
        c.send({"type": "action", "seq": seq, "keys": ["left"]})
    await until(lambda: c.of_type("notice"), what="the rate notice")
    assert "rate limited" in c.of_type("notice")[0]["reason"] and c.closed is None
    await c.disconnect()


async def test_a_player_on_the_second_gateway_replica_plays_through_a_relay(store, tmp_path, monkeypatch):
    gw1 = make_gateway(store, tmp_path, monkeypatch, live_max_fps=60)
    gw2 = make_gateway(store, tmp_path, monkeypatch, live_max_fps=60, serve_it=False)
    sid = await new_session(gw1)
    ctx = SimpleNamespace(servable_object=gw1)
    monkeypatch.setattr(serve, "get_replica_context", lambda: ctx)
    a = connect(sid, headers=auth(KEY))
    await until(lambda: a.of_type("hello"), what="the owner's hello")
    ctx.servable_object = gw2  # Serve routes the next connection to the other replica
    b = connect(sid, "format=raw&fps=5", headers=auth(KEY))
    await until(lambda: b.of_type("hello"), what="the relay's hello")
    assert a.of_type("hello")[0]["relayed"] is False and b.of_type("hello")[0]["relayed"] is True
    assert b.of_type("hello")[0]["fps"] == 20.0  # the owner's clock
    b.send({"type": "action", "seq": 1, "keys": ["jump"]})
    await until(lambda: len(b.frames) >= 3 and b.frames[-1][0]["ack"] == 1, what="relayed frames showing b's action")
    await until(lambda: any(t.get("controllers") == 2 for t in a.of_type("players")), what="a's roster")
    assert isinstance(gw1.rooms.rooms[("acme", sid)], LiveRoom) and isinstance(
        gw2.rooms.rooms[("acme", sid)], RelayRoom
    )
    assert any(r.keys == ("jump",) for r in gw1.model_stubs["m"].requests)
    assert gw2.model_stubs["m"].requests == []  # only the owner steps the session
    await b.disconnect()
    await until(lambda: all(t.get("controllers") != 2 for t in a.of_type("players")[-1:]), what="b's leave")
    await a.disconnect()
    assert gw1.rooms.rooms == {} and gw2.rooms.rooms == {}
