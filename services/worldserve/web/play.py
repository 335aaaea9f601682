"""Live play over a WebSocket: ``WS /v1/sessions/{id}/play?role=controller|spectator&fps=N&format=jpeg|png|raw``.

The connection's protocol around a room (worldserve.web.rooms): its credential (``Authorization:
Bearer <key or token>``, or the subprotocol ``worldserve.token.<token>`` beside ``worldserve``;
never the URL), its query, the ``hello`` that opens it, then its messages (JSON text, checked and
rate limited) into the room until it leaves. Errors close it with a WebSocket close code:
4401 (credentials), 4400 (a bad query or message), 4404 (no such session), 4409 (controllers
full), 1013 (try again), 1011 (a bug), 1000 (bye).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from worldserve.common.errors import InvalidArgument, NotFound, Unauthenticated, status_of
from worldserve.web.api import bearer
from worldserve.web.live_metrics import LiveMetrics
from worldserve.web.live_protocol import (
    CONTROLLER,
    FORMATS,
    MAX_MESSAGE_BYTES,
    SPECTATOR,
    LiveClosed,
    RateLimit,
    parse_message,
)
from worldserve.web.relay import RelayRoom

SUBPROTOCOL = "worldserve"
TOKEN_SUBPROTOCOL = "worldserve.token."


class LivePlay:
    """Plays WebSocket connections into this replica's rooms.

    ``tenant``: a credential -> its tenant (``HttpApi.tenant``: an API key or a live token);
    ``store``: the session store (the session's model and step); ``rooms``: a
    :class:`~worldserve.web.rooms.Rooms`.
    """

    def __init__(
        self, *, config, store, rooms, tenant: Callable[[str | None], Awaitable[str]], metrics: LiveMetrics
    ) -> None:
        self.config, self.store, self.rooms = config, store, rooms
        self._tenant = tenant
        self.live = metrics

    async def play(self, ws: WebSocket, session_id: str) -> None:
        offered = ws.scope.get("subprotocols") or []
        await ws.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        closed = False

        async def close(code: int, reason: str) -> None:
            nonlocal closed
            if not closed and ws.application_state != WebSocketState.DISCONNECTED:
                closed = True
                try:
                    await ws.close(code=code, reason=reason[:120])
                except Exception:  # already gone
                    pass

        room = player = None
        try:
            q = ws.query_params
            try:
                cred = bearer(ws.headers.get("authorization"))
                if cred is None:
                    cred = next((p[len(TOKEN_SUBPROTOCOL) :] for p in offered if p.startswith(TOKEN_SUBPROTOCOL)), None)
                if "key" in q or "token" in q or "api_key" in q:
                    raise Unauthenticated(
                        "credentials go in the Authorization header or the subprotocol, never in the URL"
                    )
                tenant = await self._tenant(cred)
            except Unauthenticated as e:
                raise LiveClosed(4401, str(e)) from None
            role = q.get("role", CONTROLLER)
            if role not in (CONTROLLER, SPECTATOR):
                raise LiveClosed(4400, f"role must be {CONTROLLER!r} or {SPECTATOR!r}")
            fmt = FORMATS.get(q.get("format", "jpeg"))
            if fmt is None:
                raise LiveClosed(4400, f"format must be one of {sorted(FORMATS)}")
            try:
                fps = float(q.get("fps", self.config.live_default_fps))
            except ValueError:
                fps = -1.0
            if not 0 < fps <= 1000:
                raise LiveClosed(4400, "fps must be a number in (0, 1000]")
            try:
                rec = await self.store.get(tenant, session_id, touch=True)
            except NotFound as e:
                raise LiveClosed(4404, str(e)) from None
            except InvalidArgument as e:
                raise LiveClosed(4400, str(e)) from None
            max_fps = await self.rooms.max_fps(rec.model)
            room = await self.rooms.open(tenant, session_id, rec.model, min(fps, max_fps))
            limit = RateLimit(self.config.live_client_msgs_per_s, 2 * self.config.live_client_msgs_per_s)
            player = room.join(role, fmt, ws.send_bytes, ws.send_json, close, limit, open_=False)
            await ws.send_json(
                {
                    "type": "hello",
                    "session_id": session_id,
                    "model": rec.model,
                    "role": role,
                    "player": player.pid,
                    "fps": room.fps,
                    "max_fps": max_fps,
                    "step": rec.step,
                    "keys": sorted(room.space.keys),
                    "mouse_axes": sorted(room.space.mouse_axes),
                    "events_supported": room.event_max_bytes > 0,
                    "max_controllers": room.max_controllers,
                    "merge": "keys: union; mouse: mean; event: last",
                    "relayed": isinstance(room, RelayRoom),  # the session ticks on another gateway replica
                }
            )
            player.opened.set()  # frames from here on
            await room.announce(room.roster())
            await self._receive(ws, room, player)
        except LiveClosed as e:
            await close(e.code, e.reason)
        except WebSocketDisconnect:
            pass
        except Exception as e:  # a bug: logged by status_of, the player told
            code, msg = status_of(e)
            await close(1011, msg)
        finally:
            if room is not None and player is not None:
                room.leave(player)
                if room.players:
                    await room.announce(room.roster())
            await close(1000, "bye")

    async def _receive(self, ws: WebSocket, room, player) -> None:
        notice_t = 0.0
        while True:
            m = await ws.receive()
            if m["type"] == "websocket.disconnect":
                return
            text = m.get("text")
            if text is None:
                raise LiveClosed(4400, "binary messages are not accepted; send JSON text")
            if not player.limit.take():  # a flood: this client's messages are dropped, no one else's
                self.live.messages_dropped.inc(reason="rate")
                now = time.monotonic()
                if now - notice_t > 1.0:
                    notice_t = now
                    await ws.send_json(
                        {
                            "type": "notice",
                            "reason": "rate limited: messages dropped "
                            f"(at most {self.config.live_client_msgs_per_s}/s)",
                        }
                    )
                continue
            if len(text) > MAX_MESSAGE_BYTES:
                raise LiveClosed(4400, f"message exceeds {MAX_MESSAGE_BYTES} bytes")
            try:
                raw = json.loads(text)
                kind, fields = parse_message(raw, room.space, room.event_max_bytes)
            except json.JSONDecodeError:
                raise LiveClosed(4400, "malformed message: not JSON") from None
            except InvalidArgument as e:
                raise LiveClosed(4400, f"malformed message: {e}") from None
            if kind == "ping":
                await ws.send_json({"type": "pong", "t": fields["t"]})
            elif player.role != CONTROLLER:
                self.live.messages_dropped.inc(reason="spectator")
                await ws.send_json({"type": "notice", "reason": "spectators watch; join as a controller to play"})
            else:
                room.receive(player, kind, fields, raw)


__all__ = ["SUBPROTOCOL", "TOKEN_SUBPROTOCOL", "LivePlay"]
