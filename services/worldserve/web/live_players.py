"""A live room's players on this gateway replica: each connection's outbox of one frame and its
sender (:class:`Player`), and the fan-out (:class:`_Fanout`) that admits players, keeps the roster
and hands every frame to every player (encoded once per format, with that player's ack).

The room that ticks (:class:`~worldserve.web.live.LiveRoom`) and a relay of one ticking on another
replica (:class:`~worldserve.web.relay.RelayRoom`) are both fan-outs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from worldserve.common.codec import EncodedFrame, encode_rgb
from worldserve.dynamics.interface import ActionSpace
from worldserve.web.live_metrics import LiveMetrics
from worldserve.web.live_protocol import CONTROLLER, FORMAT_NAMES, Held, LiveClosed, RateLimit, pack_frame, too_many


class Player:
    """One connection: its role, its outbox of one frame, and (a controller) its held action."""

    def __init__(
        self,
        pid: int,
        role: str,
        fmt: int,
        send_bytes: Callable[[bytes], Awaitable[None]],
        send_json: Callable[[dict], Awaitable[None]],
        close: Callable[[int, str], Awaitable[None]],
        limit: RateLimit,
    ):
        self.pid, self.role, self.fmt = pid, role, fmt
        self._send_bytes, self.send_json, self.close = send_bytes, send_json, close
        self.limit = limit
        self.held = Held()
        self.acked = 0  # the last seq of this player's that a frame has shown
        self._outbox: bytes | None = None
        self._ready = asyncio.Event()
        self.opened = asyncio.Event()  # frames flow once the player has had its hello
        self.dropped = 0
        self.sent = 0

    def offer(self, data: bytes) -> bool:
        """Put a frame in the outbox; False when it replaced one the client had not taken yet."""
        replaced = self._outbox is not None
        self._outbox = data
        self._ready.set()
        if replaced:
            self.dropped += 1
        return not replaced

    async def pump(self) -> None:
        """Send frames as the client takes them (runs as the player's sender task)."""
        await self.opened.wait()
        while True:
            await self._ready.wait()
            self._ready.clear()
            data, self._outbox = self._outbox, None
            if data is not None:
                await self._send_bytes(data)
                self.sent += 1


class _Fanout:
    """A room's players on this gateway replica: joining, leaving, rosters, and each frame to
    every player's outbox (encoded once per format, with that player's ack)."""

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
        on_empty: Callable[[Any], None] | None = None,
    ):
        self.session_id, self.model, self.fps = session_id, model, fps
        self.max_controllers, self.space = max_controllers, space
        self.event_max_bytes = event_max_bytes  # the longest event the model takes (0: none)
        self.metrics, self._on_empty = metrics, on_empty
        self.players: dict[int, Player] = {}
        self._senders: dict[int, asyncio.Task] = {}
        self._next_pid = 1
        self.closed: LiveClosed | None = None
        self.frames = 0

    @property
    def controllers(self) -> int:
        return sum(p.role == CONTROLLER for p in self.players.values())

    def _admit(self, role: str) -> None:
        """Refuse a player the room cannot take (LiveClosed)."""
        if self.closed is not None:
            raise LiveClosed(self.closed.code, self.closed.reason)
        if role == CONTROLLER and self.controllers >= self.max_controllers:
            raise too_many(self.session_id, self.max_controllers)

    def join(self, role: str, fmt: int, send_bytes, send_json, close, limit: RateLimit, open_: bool = True) -> Player:
        """A new player; ``open_=False``: no frames go to it before ``player.opened.set()`` (its hello first)."""
        self._admit(role)
        p = Player(self._next_pid, role, fmt, send_bytes, send_json, close, limit)
        if open_:
            p.opened.set()
        self._next_pid += 1
        self.players[p.pid] = p
        self._senders[p.pid] = asyncio.create_task(p.pump(), name=f"live-send-{p.pid}")
        self.metrics.players(self.model, role, +1)
        self._joined(p)
        return p

    def _joined(self, p: Player) -> None:
        pass

    def leave(self, p: Player) -> None:
        if self.players.pop(p.pid, None) is None:
            return
        t = self._senders.pop(p.pid, None)
        if t is not None:
            t.cancel()
        self.metrics.players(self.model, p.role, -1)
        self._left(p)
        if self._empty():
            self.stop()

    def _left(self, p: Player) -> None:
        pass

    def _empty(self) -> bool:
        return not self.players

    def stop(self) -> None:
        for t in self._senders.values():
            t.cancel()
        if self._on_empty is not None:
            cb, self._on_empty = self._on_empty, None
            cb(self)

    def roster(self) -> dict:
        return {"type": "players", "controllers": self.controllers, "spectators": len(self.players) - self.controllers}

    async def announce(self, msg: dict) -> None:
        await asyncio.gather(*(p.send_json(msg) for p in list(self.players.values())), return_exceptions=True)

    def deliver(self, tick: int, step_no: int, rgb: np.ndarray, acks: dict[int, Held], late: bool) -> None:
        """A tick's frame to every player here; ``acks``: pid -> the held action the frame used."""
        now = time.monotonic()
        encoded: dict[int, EncodedFrame] = {}
        for p in list(self.players.values()):
            frame = encoded.get(p.fmt)
            if frame is None:
                frame = encoded[p.fmt] = encode_rgb(rgb, p.fmt)
            h = acks.get(p.pid)
            if h is not None and h.seq > p.acked:
                p.acked = h.seq
                if h.received:
                    self.metrics.key_to_frame(self.model, now - h.received)
            header = {
                "tick": tick,
                "step": step_no,
                "ack": p.acked,
                "late": late,
                "dropped": p.dropped,
                "format": FORMAT_NAMES[p.fmt],
                "width": frame.width,
                "height": frame.height,
                "t": round(time.time() * 1000),
            }
            if not p.offer(pack_frame(header, frame.data)):
                self.metrics.dropped(self.model)

    async def _close_all(self, closed: LiveClosed) -> None:
        self.closed = closed
        await asyncio.gather(
            *(p.close(closed.code, closed.reason) for p in list(self.players.values())), return_exceptions=True
        )


__all__ = ["Player"]  # and _Fanout, for the relay (worldserve.web.relay)
