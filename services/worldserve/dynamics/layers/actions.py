"""Action-batch and event validation shared by the dynamics model kinds (action vectors, event text).

Key and mouse-axis names and values are checked once, by
:meth:`worldserve.dynamics.interface.ActionSpace.check` (a model's ``action_vector``).
Every message is one line quoting the bad value, for INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def normalize_event(text: str) -> str:
    """Case and whitespace do not matter: ``"  Night  FALLS "`` is ``"night falls"``."""
    return " ".join(text.lower().split())


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
