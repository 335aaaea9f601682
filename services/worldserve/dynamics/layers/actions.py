"""Action and event validation shared by the dynamics model kinds (keys + mouse axes, event text).

Every message is one line quoting the bad value, for INVALID_ARGUMENT.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch


def normalize_event(text: str) -> str:
    """Case and whitespace do not matter: ``"  Night  FALLS "`` is ``"night falls"``."""
    return " ".join(text.lower().split())


def action_vector(
    keys: Sequence[str], mouse: Mapping[str, float] | None, key_names: Sequence[str], mouse_axes: Sequence[str]
) -> torch.Tensor:
    """(len(key_names) + len(mouse_axes),) float32 on CPU: multi-hot of the held ``keys``, then the
    mouse axes (missing = 0)."""
    if isinstance(keys, (str, bytes)):
        raise ValueError(f"keys must be a sequence of key names, not the string {keys!r}")
    key_names, mouse_axes = tuple(key_names), tuple(mouse_axes)
    vec = torch.zeros(len(key_names) + len(mouse_axes), dtype=torch.float32)
    for key in keys:
        if not isinstance(key, str) or key not in key_names:
            raise ValueError(f"unknown key {key!r}; expected one of {key_names!r}")
        vec[key_names.index(key)] = 1.0
    for axis, value in (mouse or {}).items():
        if not isinstance(axis, str) or axis not in mouse_axes:
            raise ValueError(f"unknown mouse axis {axis!r}; expected one of {mouse_axes!r}")
        try:
            fv = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"mouse axis {axis!r} must be a number in [-1, 1], got {value!r}") from None
        if not (math.isfinite(fv) and -1.0 <= fv <= 1.0):
            raise ValueError(f"mouse axis {axis!r} must be a finite number in [-1, 1], got {value!r}")
        vec[len(key_names) + mouse_axes.index(axis)] = fv
    return vec


def check_actions(actions: torch.Tensor, n: int, n_keys: int, a_dim: int) -> torch.Tensor:
    """Validate an (n, a_dim) action batch (keys in [0, 1], mouse in [-1, 1]); returns it as a
    float32 CPU tensor."""
    if not isinstance(actions, torch.Tensor) or tuple(actions.shape) != (n, a_dim):
        shape = tuple(actions.shape) if isinstance(actions, torch.Tensor) else type(actions).__name__
        raise ValueError(f"actions must be a tensor of shape ({n}, {a_dim}), got {shape}")
    a = actions.detach().to("cpu", torch.float32)
    bad = ~torch.isfinite(a)
    bad[:, :n_keys] |= (a[:, :n_keys] < 0) | (a[:, :n_keys] > 1)
    bad[:, n_keys:] |= a[:, n_keys:].abs() > 1
    if bad.any():
        r, c = (int(x) for x in bad.nonzero()[0])
        raise ValueError(f"actions[{r}, {c}] = {a[r, c].item()!r} out of range (keys in [0, 1], mouse in [-1, 1])")
    return a


def check_events(events: Sequence[str] | None, n: int, max_bytes: int) -> list[str] | None:
    """Validate n event texts ("" = none); returns them normalized (None stays None)."""
    if events is None:
        return None
    if isinstance(events, (str, bytes)) or not isinstance(events, Sequence):
        raise ValueError(f"events must be a sequence of {n} strings, got {events!r}")
    if len(events) != n:
        raise ValueError(f"events must hold {n} strings (one per frame), got {len(events)}")
    out = []
    for i, e in enumerate(events):
        if not isinstance(e, str):
            raise ValueError(f"events[{i}] must be a string, got {type(e).__name__}")
        e = normalize_event(e)
        if len(e.encode("utf-8")) > max_bytes:
            raise ValueError(f"events[{i}] is {len(e.encode('utf-8'))} bytes; at most {max_bytes} allowed: {e[:80]!r}")
        out.append(e)
    return out
