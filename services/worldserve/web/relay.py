"""A relay: a live session ticking on another gateway replica, played from this one.

The session's :class:`~worldserve.web.live.LiveRoom` ticks on the replica holding its lease; a
player that reaches another replica joins a :class:`RelayRoom` there. The relay is protocol-free
like the room: ``send`` carries its players' joins, messages and leaves to the owner in order
(``{"op": "join" | "leave" | "msg" | "alive", ...}``), and the owner's messages come back through
:meth:`RelayRoom.on_owner` (``F`` + a packed raw frame, or ``C`` + a JSON control: ``announce``,
``close``, ``refuse``). The gateway wires both ends to the session's Redis channels
(worldserve.web.rooms, worldserve.state.live); the unit tests wire them to each other in memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from worldserve.dynamics.interface import ActionSpace
from worldserve.web.live_metrics import LiveMetrics
from worldserve.web.live_players import Player, _Fanout
from worldserve.web.live_protocol import Held, LiveClosed, unpack_frame

log = logging.getLogger("worldserve.web")

RELAY_ALIVE_S = 2.0  # a relay says which of its players are still there this often
OWNER_SILENT_S = 5.0  # a relay that hears nothing from the room's owner for this long closes its players


class RelayRoom(_Fanout):
    """A live session ticking on another replica, played from here: its frames arrive from the
    owner (``on_owner``), its players' joins, messages and leaves go there (``send``)."""

    def __init__(
        self,
        *,
        session_id: str,
        model: str,
        fps: float,
        max_controllers: int,
        space: ActionSpace,
        event_max_bytes: int,
        metrics: LiveMetrics,
        replica: str,
        send: Callable[[dict], Awaitable[Any]],
        on_empty: Callable[[RelayRoom], None] | None = None,
    ):
        super().__init__(
            session_id=session_id,
            model=model,
            fps=fps,
            max_controllers=max_controllers,
            space=space,
            event_max_bytes=event_max_bytes,
            metrics=metrics,
            on_empty=on_empty,
        )
        self.replica, self._send = replica, send
        self.last_heard = time.monotonic()
        self._alive: asyncio.Task | None = None
        self._outq: asyncio.Queue[dict] = asyncio.Queue()  # to the owner, in order: join before a player's messages
        self._sender: asyncio.Task | None = None

    def rid(self, p: Player) -> str:
        return f"{self.replica}:{p.pid}"

    def _admit(self, role: str) -> None:
        if self.closed is not None:
            raise LiveClosed(self.closed.code, self.closed.reason)  # the owner counts controllers

    def _post(self, m: dict) -> None:
        """To the owner, after everything posted before (one sender: a publish never overtakes)."""
        self._outq.put_nowait(m)
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_in_order(), name=f"relay-send-{self.session_id}")

    async def _send_in_order(self) -> None:
        try:
            while True:
                m = await self._outq.get()
                try:
                    await self._send(m)
                except Exception as e:  # the heartbeat repairs a lost join
                    log.warning("live %s: relay message not sent: %s", self.session_id, e)
        except asyncio.CancelledError:
            pass

    def _joined(self, p: Player) -> None:
        self._post({"op": "join", "rid": self.rid(p), "role": p.role})
        if self._alive is None:
            self.last_heard = time.monotonic()
            self._alive = asyncio.create_task(self._keep_alive(), name=f"relay-{self.session_id}")

    def _left(self, p: Player) -> None:
        self._post({"op": "leave", "rid": self.rid(p)})

    def stop(self) -> None:
        if self._alive is not None:
            self._alive.cancel()
            self._alive = None
        if self._sender is not None:
            asyncio.get_running_loop().call_later(1.0, self._sender.cancel)  # the last leaves go out first
        super().stop()

    def receive(self, p: Player, kind: str, f: dict, raw: Any = None) -> None:
        """A controller's message: forwarded to the owner (checked here already)."""
        self._post({"op": "msg", "rid": self.rid(p), "m": raw})

    async def _keep_alive(self) -> None:
        try:
            while True:
                await asyncio.sleep(RELAY_ALIVE_S)
                self.metrics.refresh()
                self._post(
                    {"op": "alive", "r": self.replica, "rids": {self.rid(p): p.role for p in self.players.values()}}
                )
                if time.monotonic() - self.last_heard > max(OWNER_SILENT_S, 3.0 / self.fps):
                    await self._close_all(
                        LiveClosed(1013, "the gateway replica ticking this session went away; reconnect")
                    )
                    return
        except asyncio.CancelledError:
            pass

    async def on_owner(self, data: bytes) -> None:
        """A message from the owner: a frame (``F``) or a control (``C``)."""
        self.last_heard = time.monotonic()
        if data[:1] == b"F":
            h, raw = unpack_frame(data[1:])
            rgb = np.frombuffer(raw, dtype=np.uint8).reshape(h["height"], h["width"], 3)
            acks = {}
            for p in self.players.values():
                seq = h["acks"].get(self.rid(p))
                if seq:
                    acks[p.pid] = Held(seq=seq)  # key-to-frame is measured at the owner
            self.frames += 1
            self.deliver(h["tick"], h["step"], rgb, acks, h["late"])
            return
        c = json.loads(data[1:])
        op = c.get("op")
        if op == "announce":
            await self.announce(c["msg"])
        elif op == "close":
            await self._close_all(LiveClosed(int(c["code"]), str(c["reason"])))
        elif op == "refuse":
            for p in list(self.players.values()):
                if self.rid(p) == c.get("rid"):
                    await p.close(int(c["code"]), str(c["reason"]))


__all__ = ["OWNER_SILENT_S", "RELAY_ALIVE_S", "RelayRoom"]
