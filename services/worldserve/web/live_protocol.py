"""The live player protocol: what players and relays exchange with a room, with no room in it.

- the client messages (:func:`parse_message`: an ``action``, an ``event`` or a ``ping``, checked
  against the model's :class:`~worldserve.dynamics.interface.ActionSpace`) and a controller's
  latest held action (:class:`Held`);
- the frame messages (:func:`pack_frame` / :func:`unpack_frame`: a JSON header, then the image);
- the roles, the frame formats a player may ask for, the size and rate limits of its messages
  (:class:`RateLimit`), and the WebSocket closes (:class:`LiveClosed`, :func:`too_many`).

The room that ticks is :mod:`worldserve.web.live`; its players here, :mod:`worldserve.web.live_players`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from worldserve.common.codec import JPEG, PNG, RAW
from worldserve.common.errors import InvalidArgument
from worldserve.dynamics.interface import ActionError, ActionSpace
from worldserve.text.spec import MAX_TEXT_CHARS

CONTROLLER, SPECTATOR = "controller", "spectator"
FORMATS = {"jpeg": JPEG, "png": PNG, "raw": RAW}
FORMAT_NAMES = {v: k for k, v in FORMATS.items()}
MAX_MESSAGE_BYTES = 4096


class LiveClosed(Exception):
    """Ends a player's connection with a WebSocket close code and a one-line reason."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


def too_many(session_id: str, n: int) -> LiveClosed:
    return LiveClosed(
        4409, f"session {session_id!r} already has {n} controllers (the most this model takes); join as a spectator"
    )


def event_max_bytes(info: Mapping[str, Any]) -> int:
    """The longest event text a model takes in UTF-8 bytes, from its info as plain data: 0 when it
    takes no events; 256 when it takes them without saying how long; at least the free-text bound
    (``MAX_TEXT_CHARS``) when it declares its events (free text is mapped to one of them)."""
    if not info["events_supported"]:
        return 0
    n = int(info.get("event_max_bytes") or 256)
    return max(n, MAX_TEXT_CHARS) if info.get("events") else n


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


def pack_frame(header: dict, data: bytes) -> bytes:
    """A frame message: 4-byte big-endian header length, the JSON header, the encoded image."""
    h = json.dumps(header, separators=(",", ":")).encode()
    return len(h).to_bytes(4, "big") + h + data


def unpack_frame(msg: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(msg[:4], "big")
    return json.loads(msg[4 : 4 + n]), msg[4 + n :]


__all__ = [
    "CONTROLLER",
    "SPECTATOR",
    "FORMATS",
    "FORMAT_NAMES",
    "MAX_MESSAGE_BYTES",
    "LiveClosed",
    "too_many",
    "event_max_bytes",
    "Held",
    "parse_message",
    "RateLimit",
    "pack_frame",
    "unpack_frame",
]
