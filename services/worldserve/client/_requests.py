"""The SDK's request builders: actions (:func:`action`, and the ``"left+jump"`` shorthand of
:data:`ActionLike`), frame formats, request ids, and the CreateSession, Step and Rollout requests
the clients send. Public names are re-exported by :mod:`worldserve.client`."""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import numpy as np

from worldserve.v1 import common_pb2, dynamics_pb2, sessions_pb2

FORMATS = {
    "png": common_pb2.FRAME_FORMAT_PNG,
    "jpeg": common_pb2.FRAME_FORMAT_JPEG,
    "raw": common_pb2.FRAME_FORMAT_RAW_RGB8,
}

ActionLike = common_pb2.Action | str | Sequence[str]
"""An action of a rollout or play: an Action, ``"left+jump"`` (keys joined by ``+``; ``"noop"``:
none) or a sequence of keys."""


def action(
    keys: Sequence[str] = (), mouse: Mapping[str, float] | None = None, event: str | None = None
) -> common_pb2.Action:
    """An action; ``event`` switches the world event from this step on ("" clears it)."""
    a = common_pb2.Action(keys=list(keys), mouse=dict(mouse or {}))
    if event is not None:
        a.event = event
    return a


def _fmt(fmt: str | int) -> common_pb2.FrameFormat:
    if isinstance(fmt, int):  # the number: protoc's stubs type it as the enum class, the message takes it
        return cast(common_pb2.FrameFormat, fmt)
    try:
        return FORMATS[fmt.lower()]
    except KeyError:
        raise ValueError(f"unknown frame format {fmt!r}; expected one of {sorted(FORMATS)}") from None


def to_actions(actions: Iterable[ActionLike]) -> list[common_pb2.Action]:
    """Action messages from what the SDK accepts: an Action, "right+jump" ("noop": none) or a key list."""
    out = []
    for a in actions:
        if isinstance(a, common_pb2.Action):
            out.append(a)
        elif isinstance(a, str):
            out.append(action([k for k in a.split("+") if k and k != "noop"]))
        else:
            out.append(action(a))
    return out


def text_embedding(embeds: Any) -> bytes:
    """A precomputed prompt embedding as ``create_session(text_embedding=...)`` takes it: a
    float32 array-like (numpy, or a CPU tensor's ``.numpy()``) of shape ``(tokens, text_dim)`` or
    ``(1, tokens, text_dim)``, e.g. the ``prompt_embeds`` of diffusers' ``WanPipeline.encode_prompt``,
    as a safetensors blob of one tensor named ``prompt_embeds`` (what
    ``safetensors.torch.save({"prompt_embeds": embeds})`` writes)."""
    a = np.ascontiguousarray(np.asarray(embeds, dtype="<f4"))
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2 or 0 in a.shape:
        raise ValueError(f"text embedding of shape {a.shape}: expected (tokens, text_dim) or (1, tokens, text_dim)")
    header = json.dumps({"prompt_embeds": {"dtype": "F32", "shape": list(a.shape), "data_offsets": [0, a.nbytes]}})
    raw = header.encode() + b" " * (-len(header) % 8)  # safetensors pads its header to 8 bytes
    return struct.pack("<Q", len(raw)) + raw + a.tobytes()


def new_request_id() -> str:
    """A fresh idempotency key for a step (32 hex characters)."""
    return uuid.uuid4().hex


def create_request(
    prompt: str | None,
    image: common_pb2.Frame | None,
    seed: int,
    ttl_s: int,
    include_first_frame: bool,
    fmt: str | int,
    image_steps: int,
    image_guidance: float,
    model: str = "",
    text_embedding: bytes = b"",
) -> sessions_pb2.CreateSessionRequest:
    req = sessions_pb2.CreateSessionRequest(
        seed=seed,
        ttl_s=ttl_s,
        include_first_frame=include_first_frame,
        format=_fmt(fmt),
        image_steps=image_steps,
        image_guidance=image_guidance,
        model=model,
        text_embedding=text_embedding,
    )
    if image is not None:
        req.image.CopyFrom(image)
    else:
        req.prompt = prompt or ""
    return req


def step_request(
    session_id: str,
    keys: Sequence[str],
    mouse: Mapping[str, float] | None,
    expected_step: int | None,
    fmt: str | int,
    guidance: float | None,
    event: str | None = None,
    request_id: str | None = None,
    deadline_ms: float | None = None,
) -> dynamics_pb2.StepRequest:
    req = dynamics_pb2.StepRequest(
        session_id=session_id,
        action=action(keys, mouse, event),
        format=_fmt(fmt),
        request_id=request_id or new_request_id(),
    )
    if deadline_ms is not None:
        req.deadline_ms = int(deadline_ms)
    if expected_step is not None:
        req.expected_step = expected_step
    if guidance is not None:
        req.guidance = guidance
    return req


def rollout_request(
    session_id: str,
    actions: Iterable[ActionLike],
    fmt: str | int,
    request_id: str | None = None,
    expected_step: int | None = None,
) -> dynamics_pb2.RolloutRequest:
    req = dynamics_pb2.RolloutRequest(
        session_id=session_id,
        actions=to_actions(actions),
        format=_fmt(fmt),
        request_id=request_id or new_request_id(),
    )
    if expected_step is not None:
        req.expected_step = expected_step
    return req


__all__ = ["FORMATS", "ActionLike", "action", "new_request_id", "create_request", "step_request", "rollout_request"]
