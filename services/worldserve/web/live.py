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
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from worldserve.common.codec import JPEG, PNG, RAW, EncodedFrame, encode_rgb
from worldserve.common.errors import InvalidArgument, NotFound, status_of
from worldserve.dynamics.interface import ActionError, ActionSpace

log = logging.getLogger("worldserve.web")

CONTROLLER, SPECTATOR = "controller", "spectator"
FORMATS = {"jpeg": JPEG, "png": PNG, "raw": RAW}
FORMAT_NAMES = {v: k for k, v in FORMATS.items()}
MAX_MESSAGE_BYTES = 4096
MAX_ERRORS_IN_A_ROW = 20  # steps failing one after another: the room closes (1011)
FPS_WINDOW_S = 2.0  # achieved fps is observed over windows this long


class LiveClosed(Exception):
    """Ends a player's connection with a WebSocket close code and a one-line reason."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


def event_max_bytes(info: Mapping[str, Any]) -> int:
    """The longest event text a model takes in UTF-8 bytes, from its info as plain data: 0 when it
    takes no events; 256 when it takes them without saying how long."""
    return int(info.get("event_max_bytes") or 256) if info["events_supported"] else 0


@dataclass
class Held:
    """A controller's latest action (held keys and mouse), and when it arrived."""

    keys: tuple[str, ...] = ()
    mouse: dict[str, float] = field(default_factory=dict)
    seq: int = 0
    received: float = 0.0  # time.monotonic() of the message that set it


def _action_problem(e: ActionError, space: ActionSpace) -> str:
    """The live protocol's words for an action :meth:`ActionSpace.check` refused."""
    if e.what == "keys":
        return f"unknown keys {sorted(set(e.names))[:4]}; this model's keys are {sorted(space.keys)}"
    if e.what == "axis":
        return f"unknown mouse axis {e.names[0]!r}; this model's axes are {sorted(space.mouse_axes)}"
    if e.what == "value":
        return f"mouse {e.names[0]!r} must be a number in [-1, 1]"
    return str(e)


def parse_message(msg: Any, space: ActionSpace, event_max_bytes: int) -> tuple[str, dict]:
    """A decoded client message -> (kind, fields); InvalidArgument names what is wrong. The action's
    keys and mouse are checked by :meth:`ActionSpace.check`; ``event_max_bytes``: the longest event
    the model takes (0: it takes none).

    ``{"type": "action", "seq": 7, "keys": ["left"], "mouse": {"x": 0.5}}``: the keys held from now on;
    ``{"type": "event", "seq": 8, "event": "night"}``: switch the world event ("" clears it);
    ``{"type": "ping", "t": 123.4}``: answered by a pong carrying ``t``.
    """
    if not isinstance(msg, dict):
        raise InvalidArgument("a message must be a JSON object")
    kind = msg.get("type")
    seq = msg.get("seq", 0)
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 2**53:
        raise InvalidArgument("seq must be a non-negative integer")
    if kind == "action":
        keys = msg.get("keys", [])
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise InvalidArgument("keys must be a list of key names")
        mouse = msg.get("mouse", {})
        try:  # the keys first, then (an object) the mouse axis by axis
            _, values = space.check(keys, mouse if isinstance(mouse, dict) else None, numbers_only=True)
        except ActionError as e:
            raise InvalidArgument(_action_problem(e, space)) from None
        if not isinstance(mouse, dict):
            raise InvalidArgument("mouse must be an object of axis -> value")
        return "action", {"keys": tuple(sorted(set(keys))), "mouse": values, "seq": seq}
    if kind == "event":
        ev = msg.get("event")
        if not isinstance(ev, str):
            raise InvalidArgument('event must be a string ("" clears it)')
        if ev and not event_max_bytes:
            raise InvalidArgument("this model does not take world events")
        if len(ev.encode()) > event_max_bytes:
            raise InvalidArgument(f"event exceeds {event_max_bytes} bytes")
        return "event", {"event": ev, "seq": seq}
    if kind == "ping":
        return "ping", {"t": msg.get("t")}
    raise InvalidArgument(f"unknown message type {str(kind)[:40]!r}; expected action, event or ping")


def merge(held: Iterable[Held]) -> tuple[tuple[str, ...], dict[str, float]]:
    """The merge rule: the union of held keys; each mouse axis the mean over those that set it."""
    keys: set[str] = set()
    sums: dict[str, list[float]] = {}
    for h in held:
        keys.update(h.keys)
        for a, v in h.mouse.items():
            sums.setdefault(a, []).append(v)
    return tuple(sorted(keys)), {a: float(np.mean(v)) for a, v in sorted(sums.items())}


class RateLimit:
    """A token bucket per client: ``rate`` messages a second, ``burst`` at once."""

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = rate, burst
        self.tokens, self.t = burst, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


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


Stepper = Callable[[tuple[str, ...], dict[str, float], str | None, float, int], Awaitable[tuple[int, np.ndarray]]]
"""(keys, mouse, event or None, frame deadline as time.time(), tick) -> (the session's step, (H, W, 3) frame)."""


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


def too_many(session_id: str, n: int) -> LiveClosed:
    return LiveClosed(
        4409, f"session {session_id!r} already has {n} controllers (the most this model takes); join as a spectator"
    )


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
                    step_no, rgb = await self._step(keys, mouse, event, deadline, self.tick)
                    errors = 0
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
                    if event is not None:
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


def pack_frame(header: dict, data: bytes) -> bytes:
    """A frame message: 4-byte big-endian header length, the JSON header, the encoded image."""
    h = json.dumps(header, separators=(",", ":")).encode()
    return len(h).to_bytes(4, "big") + h + data


def unpack_frame(msg: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(msg[:4], "big")
    return json.loads(msg[4 : 4 + n]), msg[4 + n :]


class LiveMetrics:
    """Per-session playout, exported with bounded labels (model, role, outcome; never a session id)."""

    def __init__(self, metrics) -> None:
        m = metrics
        self._frames = m.counter("live_frames", "Frames a live session produced (rate: achieved frames/s)", ("model",))
        self._missed = m.counter(
            "live_deadline_misses",
            "Live ticks skipped: their step ended after the tick's deadline (or failed)",
            ("model",),
        )
        self._dropped = m.counter(
            "live_frames_dropped",
            "Frames a slow client had not taken when the next came (dropped for that client alone)",
            ("model",),
        )
        self._k2f = m.histogram(
            "live_key_to_frame_seconds",
            "From a controller's action arriving to the first frame that shows it",
            ("model",),
            (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0),
        )
        self._fps = m.histogram(
            "live_session_fps",
            f"Achieved frames/s of a live session (one observation per session each {FPS_WINDOW_S:g} s)",
            ("model",),
            (1, 2, 5, 8, 10, 12, 15, 20, 24, 30, 60),
        )
        self._sessions = m.gauge("live_sessions", "Live sessions this gateway replica ticks", ("model",))
        self._players = m.gauge("live_players", "Players connected to this gateway replica", ("model", "role"))
        self._errors = m.counter("live_step_errors", "Live steps that failed, by status", ("model", "code"))
        self.messages_dropped = m.counter("live_messages_dropped", "Player messages dropped, by reason", ("reason",))
        self._n_sessions: dict[str, int] = {}
        self._n_players: dict[tuple[str, str], int] = {}

    def frame(self, model: str) -> None:
        self._frames.inc(model=model)

    def missed(self, model: str, n: int) -> None:
        self._missed.inc(n, model=model)

    def dropped(self, model: str) -> None:
        self._dropped.inc(model=model)

    def key_to_frame(self, model: str, s: float) -> None:
        self._k2f.observe(s, model=model)

    def fps(self, model: str, v: float) -> None:
        self._fps.observe(v, model=model)

    def step_error(self, model: str, code: str) -> None:
        self._errors.inc(model=model, code=code)

    def sessions(self, model: str, d: int) -> None:
        n = self._n_sessions[model] = self._n_sessions.get(model, 0) + d
        self._sessions.set(n, model=model)

    def players(self, model: str, role: str, d: int) -> None:
        n = self._n_players[(model, role)] = self._n_players.get((model, role), 0) + d
        self._players.set(n, model=model, role=role)

    def refresh(self) -> None:
        """Set the gauges again: Ray exports a gauge only while it is being set (it drops one left
        alone for about two export intervals), and players may stay for hours."""
        for model, n in self._n_sessions.items():
            self._sessions.set(n, model=model)
        for (model, role), n in self._n_players.items():
            self._players.set(n, model=model, role=role)


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
