"""A live session: one world ticking on its own clock, played by several people at once.

Protocol-free (the gateway turns WebSocket messages into calls here). One :class:`LiveRoom` per
session per gateway replica:

- the room ticks at a target fps fixed when it opens; each tick takes the controllers' latest
  held actions (the latest message per controller wins; nothing queues) and steps the world once;
- merge rule (every controller shares the model's one player): the keys are the union of what
  the controllers hold, each mouse axis the mean over the controllers that set it, and the event
  the last one any controller sent before the tick;
- a step that ends after its tick's deadline makes the ticks it overran deadline misses: they are
  skipped, not queued, and the clock goes on from the next free tick;
- every player gets every tick's frame through an outbox of one: a client that has not taken the
  previous frame yet has it replaced (counted as dropped for that client); the tick never waits
  for a client;
- players that reach another gateway replica play through a relay there
  (:class:`worldserve.web.relay.RelayRoom`): the room publishes each frame to its relays and takes
  their players' joins, messages and leaves (:meth:`LiveRoom.from_relay`).

This module is the room: its clock, its steps, the merge rule and its players on other replicas.
Its siblings: :mod:`worldserve.web.live_protocol` (the player protocol's messages and frames),
:mod:`worldserve.web.live_players` (the players here: outboxes and fan-out) and
:mod:`worldserve.web.live_metrics`; their public names are re-exported here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from worldserve.common.errors import InvalidArgument, NotFound, status_of
from worldserve.dynamics.interface import ActionSpace
from worldserve.web.live_metrics import FPS_WINDOW_S, LiveMetrics
from worldserve.web.live_players import Player, _Fanout
from worldserve.web.live_protocol import (
    CONTROLLER,
    FORMATS,
    SPECTATOR,
    Held,
    LiveClosed,
    RateLimit,
    event_max_bytes,
    pack_frame,
    parse_message,
    too_many,
    unpack_frame,
)

log = logging.getLogger("worldserve.web")

MAX_ERRORS_IN_A_ROW = 20  # steps failing one after another: the room closes (1011)
REFUSED_EVENT = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)
"""A step failing with these carried an event that will be refused again (e.g. free text naming
none of the model's events): the event is dropped, not retried next tick."""


def merge(held: Iterable[Held]) -> tuple[tuple[str, ...], dict[str, float]]:
    """The merge rule: the union of held keys; each mouse axis the mean over those that set it."""
    keys: set[str] = set()
    sums: dict[str, list[float]] = {}
    for h in held:
        keys.update(h.keys)
        for a, v in h.mouse.items():
            sums.setdefault(a, []).append(v)
    return tuple(sorted(keys)), {a: float(np.mean(v)) for a, v in sorted(sums.items())}


Stepper = Callable[[tuple[str, ...], dict[str, float], str | None, float, int], Awaitable[tuple[int, np.ndarray, str]]]
"""(keys, mouse, event or None, frame deadline as time.time(), tick) -> (the session's step, (H, W, 3)
frame, the world event in force for it: a free-text event is mapped to one of the model's)."""


@dataclass
class Remote:
    """A player on another gateway replica (its relay forwards what it sends)."""

    role: str
    held: Held = field(default_factory=Held)
    seen: float = 0.0  # time.monotonic() of its relay's last word
    acked: int = 0


REMOTE_TIMEOUT_S = 6.0  # a remote player whose relay has not spoken for this long is gone


class LiveRoom(_Fanout):
    """One live session, ticking here (this replica holds its lease): its clock, its steps, its
    players here and (through their relays, worldserve.web.relay) its players on other replicas."""

    def __init__(
        self,
        *,
        session_id: str,
        model: str,
        fps: float,
        max_controllers: int,
        space: ActionSpace,
        event_max_bytes: int,
        step: Stepper,
        metrics: LiveMetrics,
        on_empty: Callable[[LiveRoom], None] | None = None,
        publish: Callable[[bytes], Awaitable[Any]] | None = None,
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
        self._step, self._publish = step, publish
        self.remote: dict[str, Remote] = {}  # "<replica>:<pid>" -> its player
        self._event: str | None = None  # the last event sent since the previous tick
        self._task: asyncio.Task | None = None
        self.tick = 0
        self.step_no = -1
        self.misses = 0

    @property
    def controllers(self) -> int:
        return super().controllers + sum(r.role == CONTROLLER for r in self.remote.values())

    def roster(self) -> dict:
        n = len(self.players) + len(self.remote)
        return {"type": "players", "controllers": self.controllers, "spectators": n - self.controllers}

    def _joined(self, p: Player) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"live-{self.session_id}")
            self.metrics.sessions(self.model, +1)

    def _empty(self) -> bool:
        return not self.players and not self.remote

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
            self.metrics.sessions(self.model, -1)
        super().stop()

    async def announce(self, msg: dict) -> None:
        await super().announce(msg)
        if self.remote and self._publish is not None:
            await self._send_relays({"op": "announce", "msg": msg})

    async def _send_relays(self, control: dict) -> None:
        try:
            await self._publish(b"C" + json.dumps(control).encode())
        except Exception as e:
            log.warning("live %s: relays not reached: %s", self.session_id, e)

    def receive(self, p: Player | Remote, kind: str, f: dict, raw: Any = None) -> None:
        """A parsed message of a controller: the latest wins at the next tick."""
        if kind == "action":
            if f["seq"] >= p.held.seq:
                p.held = Held(f["keys"], f["mouse"], f["seq"], time.monotonic())
        elif kind == "event":
            self._event = f["event"]
            if f["seq"] > p.held.seq:
                p.held = Held(p.held.keys, p.held.mouse, f["seq"], time.monotonic())

    # -- players on other replicas (their relays' messages) -------------------------------------
    async def from_relay(self, m: dict) -> None:
        """A relay's message: ``join`` / ``leave`` / ``msg`` of one of its players, or ``alive``
        (every player it has: one whose join was lost joins then)."""
        now = time.monotonic()
        op, rid = m.get("op"), str(m.get("rid", ""))
        if op == "join":
            role = m.get("role")
            if role not in (CONTROLLER, SPECTATOR) or rid in self.remote:
                return
            if self.closed is not None:
                await self._send_relays(
                    {"op": "refuse", "rid": rid, "code": self.closed.code, "reason": self.closed.reason}
                )
                return
            if role == CONTROLLER and self.controllers >= self.max_controllers:
                c = too_many(self.session_id, self.max_controllers)
                await self._send_relays({"op": "refuse", "rid": rid, "code": c.code, "reason": c.reason})
                return
            self.remote[rid] = Remote(role, seen=now)
            self._joined_remote()
            await self.announce(self.roster())
        elif op == "leave":
            if self.remote.pop(rid, None) is not None:
                await self._after_remote_left()
        elif op == "msg":
            r = self.remote.get(rid)
            if r is not None and r.role == CONTROLLER:
                r.seen = now
                try:
                    kind, fields = parse_message(m.get("m"), self.space, self.event_max_bytes)
                except InvalidArgument:
                    return  # the relay checked it already
                self.receive(r, kind, fields)
        elif op == "alive":
            replica = str(m.get("r", ""))
            alive = m.get("rids") or {}
            for k, r in list(self.remote.items()):
                if k.startswith(replica + ":"):
                    if k in alive:
                        r.seen = now
                    else:
                        del self.remote[k]
            for k, role in alive.items():
                if k not in self.remote and k.startswith(replica + ":"):
                    await self.from_relay({"op": "join", "rid": k, "role": role})
            if self._empty():
                self.stop()

    def _joined_remote(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"live-{self.session_id}")
            self.metrics.sessions(self.model, +1)

    async def _after_remote_left(self) -> None:
        if self._empty():
            self.stop()
        else:
            await self.announce(self.roster())

    def _expire_remote(self) -> None:
        now = time.monotonic()
        gone = [k for k, r in self.remote.items() if now - r.seen > REMOTE_TIMEOUT_S]
        for k in gone:
            del self.remote[k]
        if gone and self._empty():
            self.stop()

    # -- the clock -------------------------------------------------------------------------------
    async def _run(self) -> None:
        period = 1.0 / self.fps
        loop = asyncio.get_running_loop()
        next_t = loop.time()
        errors = 0
        window_t, window_frames = loop.time(), 0
        try:
            while True:
                delay = next_t - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                tick_start = next_t
                self.tick += 1
                self._expire_remote()
                used: dict[Any, Held] = {p.pid: p.held for p in self.players.values() if p.role == CONTROLLER}
                used.update({k: r.held for k, r in self.remote.items() if r.role == CONTROLLER})
                keys, mouse = merge(used.values())
                event, self._event = self._event, None
                deadline = time.time() + max(0.0, tick_start + period - loop.time())
                try:
                    step_no, rgb, applied = await self._step(keys, mouse, event, deadline, self.tick)
                    errors = 0
                    if event is not None:  # what the event was understood as, for every player
                        await self.announce({"type": "event", "event": applied, "text": event})
                except NotFound as e:
                    await self._close_all(LiveClosed(4404, str(e)))
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    code, msg = status_of(e)
                    errors += 1
                    self.metrics.step_error(self.model, code.name)
                    if errors >= MAX_ERRORS_IN_A_ROW:
                        await self._close_all(LiveClosed(1011, f"steps keep failing: {msg}"))
                        return
                    if event is not None and code not in REFUSED_EVENT:
                        self._event = self._event if self._event is not None else event  # retried next tick
                    await self.announce({"type": "notice", "reason": f"step failed ({code.name}): {msg}"})
                    rgb = None
                    step_no = self.step_no
                done = loop.time()
                if rgb is not None:
                    self.step_no = step_no
                    await self._broadcast(step_no, rgb, used, late=done > tick_start + period)
                    window_frames += 1
                # the ticks this step overran are deadline misses: skipped, not queued
                overran = max(0, math.ceil((done - (tick_start + period)) / period - 1e-9))
                if rgb is None:
                    overran = max(overran, 1)
                if overran:
                    self.misses += overran
                    self.metrics.missed(self.model, overran)
                next_t = tick_start + period * (1 + overran)
                if done - window_t >= FPS_WINDOW_S:
                    self.metrics.fps(self.model, window_frames / (done - window_t))
                    self.metrics.refresh()
                    window_t, window_frames = done, 0
        except asyncio.CancelledError:
            pass

    async def _broadcast(self, step_no: int, rgb: np.ndarray, used: dict[Any, Held], late: bool) -> None:
        self.frames += 1
        self.metrics.frame(self.model)
        self.deliver(self.tick, step_no, rgb, {k: h for k, h in used.items() if isinstance(k, int)}, late)
        if self.remote and self._publish is not None:
            now = time.monotonic()
            acks = {}
            for k, r in self.remote.items():
                h = used.get(k)
                if h is not None and h.seq:
                    acks[k] = h.seq
                    if h.received and h.seq > r.acked:
                        r.acked = h.seq
                        self.metrics.key_to_frame(self.model, now - h.received)
            header = {
                "tick": self.tick,
                "step": step_no,
                "late": late,
                "acks": acks,
                "height": int(rgb.shape[0]),
                "width": int(rgb.shape[1]),
            }
            try:
                await self._publish(b"F" + pack_frame(header, np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()))
            except Exception as e:
                log.warning("live %s: frame not published: %s", self.session_id, e)

    async def _close_all(self, closed: LiveClosed) -> None:
        await super()._close_all(closed)
        if self.remote and self._publish is not None:
            await self._send_relays({"op": "close", "code": closed.code, "reason": closed.reason})


__all__ = [
    "LiveRoom",
    "LiveClosed",
    "LiveMetrics",
    "Player",
    "RateLimit",
    "event_max_bytes",
    "parse_message",
    "merge",
    "pack_frame",
    "unpack_frame",
    "CONTROLLER",
    "SPECTATOR",
    "FORMATS",
]
