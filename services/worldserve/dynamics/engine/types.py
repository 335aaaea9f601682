"""Typed requests and results of the dynamics engine: what the servicer converts protobufs into
and out of. The engine never sees a protobuf."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from worldserve.common.codec import PNG, EncodedFrame


class Priority(enum.IntEnum):
    """Lower runs first. A player waiting for a frame (Play, a Step with a frame deadline) goes
    first, earliest deadline first; then plain Steps; then bulk evaluation traffic (StepBatch,
    Rollout). The last two go round-robin across tenants."""

    INTERACTIVE = 0
    NORMAL = 1
    BULK = 2


@dataclass(frozen=True)
class RateCharge:
    """The tenant's step-rate quota as a step carries it to the model replica, which charges it in
    the Redis round trip that reads the session (``QuotaEnforcer.charge_steps`` semantics)."""

    steps_per_s: float
    burst: int
    wait_s: float = 0.0
    """Sleep for room as long as the wait for it is at most this (a short wait is paced)."""
    hold_s: float = 0.0
    """Hold a refusal this long before answering it (a client looping on refusals loops slowly)."""


@dataclass(frozen=True)
class StepRequest:
    """One step of one session, validated at the edge only for shape (the engine checks values)."""

    tenant: str
    session_id: str
    keys: tuple[str, ...] = ()
    mouse: Mapping[str, float] = field(default_factory=dict)
    event: str | None = None
    """Switch the world event from this step on ("" clears it); None keeps the event in force."""
    event_text: str = ""
    """The free text ``event`` was given as, when the text app mapped it to a declared event (the
    step log records it beside the event); "" otherwise."""
    expected_step: int | None = None
    """Compare-and-set: the step the session must be at; otherwise FAILED_PRECONDITION."""
    guidance: float | None = None
    """Action guidance scale; None = the model's default."""
    fmt: int = PNG
    """Encoding of the returned frame."""
    priority: Priority = Priority.NORMAL
    deadline: float | None = None
    """Wall-clock time (``time.time()``) by which the frame is wanted (interactive steps)."""
    request_id: str = ""
    """Idempotency key: a step already recorded under it is returned again, not re-applied."""
    rate: RateCharge | None = None
    """The step-rate quota to charge one step against before the step (None: charged already, or
    unlimited)."""


@dataclass(frozen=True)
class StepOutput:
    session_id: str
    step: int
    """The session's step after this one: the index of ``frame``."""
    frame: EncodedFrame
    event: str = ""
    """The world event in force for ``frame`` ("" = none)."""
