"""What the fidelity evaluation (:mod:`worldserve.train.evaluate`) measures: its protocol constants,
the targets (``TARGETS``) and the metric functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from worldserve.worlds import WorldSpec, checks

GUIDANCE = 2.0
"""Guidance every evaluation step is served with."""
TRACK_PX = 4
"""A detected player counts when within this many pixels (Chebyshev) of the true position."""
EVENT_STEPS = 8
NOOP_STEPS = 24
MEMORY_STEPS = 8  # right, then as many left
OBJECT_STEP = 16
CONTROL_STEP = 8
TRACK_STEPS = (1, 8, 24)
PSNR_STEPS = (1, 2, 4, 8, 16, 24, 32)
JUMP_STEPS = 24

MEMORY_MOVE_PX = 16
"""Memory is scored only where the game's view moved at least this far and came back."""
RESUME_STEPS = 24
RESUME_WORLDS = 2

TARGETS: dict[str, tuple[str, float]] = {
    "player_within4_step8": (">=", 0.90),
    "player_within4_step24": (">=", 0.75),
    "player_airborne_within4": (">=", 0.80),
    "noop_psnr": (">=", 30.0),
    "noop_above_hold_db": (">=", 3.0),
    "objects_in_place_step16": (">=", 0.90),
    "rollout_above_hold_all_steps": (">=", 1.0),
    "control_delta_psnr_8": (">=", 8.0),
    "memory_view_moved": (">=", 0.90),
    "memory_psnr": (">=", 28.0),
    "prompt_objects_found": (">=", 0.85),
    "prompt_frames_all_found": (">=", 0.70),
    "event_night_brightness_error": ("<=", 0.1),
    "event_rain_brightness_error": ("<=", 0.1),
    "event_rain_streaks": (">=", 0.90),
    "event_dry_streaks": ("<=", 0.10),
    "event_night_stars_ratio": (">=", 0.40),
    "resume_bitwise": (">=", 1.0),
}
"""Figure -> (comparison, target). Every target compares the model with the game (never with its
own first frame), so a model that holds its first frame, or only dims it per event, fails."""


def pooled_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of the mean squared error over every pixel of every frame (capped at 100)."""
    mse = float(((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).mean())
    return float(min(100.0, 10 * np.log10(255.0**2 / max(mse, 1e-10))))


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame PSNR in dB of uint8 frames (..., H, W, 3); identical frames give 100 (capped)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mse = ((a - b) ** 2).mean(axis=(-3, -2, -1))
    return np.minimum(100.0, 10 * np.log10(255.0**2 / np.maximum(mse, 1e-10)))


def delta_psnr(true_psnr: np.ndarray, shuffled_psnr: np.ndarray) -> float:
    """Controllability: mean PSNR under the true actions minus mean PSNR under shuffled ones."""
    return float(np.mean(true_psnr) - np.mean(shuffled_psnr))


def brightness_ratio(frames: np.ndarray, reference: np.ndarray) -> float:
    """Mean intensity of ``frames`` over that of ``reference`` (< 1: darker)."""
    return float(np.asarray(frames, np.float64).mean() / max(np.asarray(reference, np.float64).mean(), 1e-9))


def adherence(frames: Sequence[np.ndarray], specs: Sequence[WorldSpec]) -> tuple[float, float]:
    """(fraction of described objects found in colour, kind and side; fraction of frames with all
    of them), read with :func:`worldserve.worlds.checks.check_objects`."""
    found = [checks.check_objects(f, s) for f, s in zip(frames, specs)]
    objects = [x for row in found for x in row]
    return float(np.mean(objects)) if objects else 1.0, float(np.mean([all(r) for r in found]))


def passed(r: dict[str, Any]) -> dict[str, bool]:
    """Target figure -> met (only the figures present in ``r``)."""
    out = {}
    for key, (op, target) in TARGETS.items():
        v = r.get(key)
        if isinstance(v, (int, float)) and np.isfinite(v):
            out[key] = bool(v >= target if op == ">=" else v <= target)
    return out
