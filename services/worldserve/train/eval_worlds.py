"""The held-out worlds of the fidelity evaluation (:mod:`worldserve.train.evaluate`), the episodes
played in them and the game's truth (what the checks need per frame), and the held-out captions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from worldserve.worlds import Game, WorldSpec, checks, random_spec
from worldserve.worlds.platformer import GROUND_Y, random_actions

from .data import HELDOUT_SEED


def heldout_world(i: int, steps: int) -> tuple[WorldSpec, int, list[tuple[str, ...]]]:
    """Held-out world ``i``: its caption's spec, its seed and ``steps`` actions of the random policy
    (the same world and actions as :func:`episode` ``(i, steps)``)."""
    rng = np.random.default_rng([HELDOUT_SEED + i, 2])
    spec = random_spec(rng)
    return spec, HELDOUT_SEED + i, random_actions(rng, steps)


_JUMPY: tuple[tuple[tuple[str, ...], float], ...] = (
    (("jump",), 0.25),
    (("right", "jump"), 0.2),
    (("left", "jump"), 0.15),
    (("up",), 0.1),
    (("right", "up"), 0.05),
    (("right",), 0.1),
    (("left",), 0.05),
    (("fire",), 0.05),
    ((), 0.05),
)


def jump_actions(rng: np.random.Generator, n: int, hold: float = 0.6) -> list[tuple[str, ...]]:
    """``n`` actions of a jump-heavy sticky policy (most of its frames are in the air)."""
    keys = [k for k, _ in _JUMPY]
    p = np.asarray([w for _, w in _JUMPY])
    p = p / p.sum()
    cur = keys[int(rng.choice(len(keys), p=p))]
    out = []
    for _ in range(n):
        if rng.random() > hold:
            cur = keys[int(rng.choice(len(keys), p=p))]
        out.append(cur)
    return out


def episode(
    seed: int, steps: int, *, event: str | None = None, event_step: int = 1, spec: WorldSpec | None = None
) -> tuple[np.ndarray, list[tuple[str, ...]], list[str]]:
    """Held-out world ``seed`` played with the random policy: frames (steps + 1, H, W, 3), the keys
    of steps 1..steps, and the event text in force for each of those frames (``event`` switched on
    at ``event_step``)."""
    rng = np.random.default_rng([HELDOUT_SEED + seed, 2])
    spec = spec if spec is not None else random_spec(rng)
    game = Game(spec, HELDOUT_SEED + seed)
    frames = [game.reset()]
    keys = random_actions(rng, steps)
    events = []
    for s, k in enumerate(keys, start=1):
        frames.append(game.step(k, event if s == event_step and event else None))
        events.append(game.event)
    return np.stack(frames), keys, events


@dataclass
class Played:
    """The game's truth for one session: frames 0..S and, per frame, what the checks need."""

    spec: WorldSpec
    frames: np.ndarray  # (S + 1, H, W, 3)
    position: list[tuple[int, int]] = field(default_factory=list)  # checks.player_position
    camera: list[int] = field(default_factory=list)
    night: list[bool] = field(default_factory=list)
    rain: list[bool] = field(default_factory=list)
    shown: list[list[bool]] = field(default_factory=list)  # checks.objects_shown

    def airborne(self, t: int) -> bool:
        return self.position[t][1] < GROUND_Y


def play(spec: WorldSpec, seed: int, keys: Sequence[Sequence[str]], events: Sequence[str] | None = None) -> Played:
    """Play the game: ``keys[s - 1]`` and the event text in force ``events[s - 1]`` ("" = none) make
    frame s."""
    game = Game(spec, seed)
    frames = [game.reset()]
    p = Played(spec, np.empty(0))

    def note() -> None:
        p.position.append(checks.player_position(game))
        p.camera.append(game.camera)
        p.night.append(game.night)
        p.rain.append(game.rain)
        p.shown.append(checks.objects_shown(game))

    note()
    for s, k in enumerate(keys):
        ev = events[s] if events is not None and events[s] else None
        frames.append(game.step(list(k), ev))
        note()
    p.frames = np.stack(frames)
    return p


def heldout_prompts(n: int) -> list[WorldSpec]:
    """``n`` held-out captions' specs, each with at least one object."""
    rng = np.random.default_rng([HELDOUT_SEED, 4])
    specs: list[WorldSpec] = []
    while len(specs) < n:
        s = random_spec(rng)
        if s.objects:
            specs.append(s)
    return specs
