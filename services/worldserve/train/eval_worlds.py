"""The held-out worlds of the fidelity evaluation (:mod:`worldserve.train.evaluate`), the episodes
played in them and the game's truth (what the checks need per frame), and the held-out captions.

Two sets of worlds, kept apart (:mod:`worldserve.worlds.splits`): **test** worlds (seeds
``HELDOUT_SEED + i``, captions of the test split) are the only ones reported on; **validation**
worlds (seeds ``HELDOUT_SEED + VAL_OFFSET + i``, captions of the validation split) choose
checkpoints. No trainer draws a caption of either split or a seed from ``HELDOUT_SEED`` on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from worldserve.worlds import Game, WorldSpec, checks
from worldserve.worlds.platformer import GROUND_Y, random_actions
from worldserve.worlds.splits import check_split, random_spec_in

from .data import HELDOUT_SEED

VAL_OFFSET = 500_000
"""Validation world ``i`` is seed ``HELDOUT_SEED + VAL_OFFSET + i`` (test world ``i``: ``HELDOUT_SEED + i``)."""
EVAL_SPLITS = ("test", "val")


def check_eval_split(split: str) -> str:
    """``split`` if it is held out ("test" or "val"), else ValueError naming the value."""
    if check_split(split) not in EVAL_SPLITS:
        raise ValueError(f"split {split!r} is not held out; expected one of {', '.join(EVAL_SPLITS)}")
    return split


def world_seed(i: int, split: str = "test") -> int:
    """The seed of held-out world ``i`` of ``split`` ("test" or "val")."""
    return HELDOUT_SEED + i + (VAL_OFFSET if check_eval_split(split) == "val" else 0)


def _world(i: int, split: str) -> tuple[np.random.Generator, WorldSpec, int]:
    seed = world_seed(i, split)
    rng = np.random.default_rng([seed, 2])
    return rng, random_spec_in(rng, split), seed


def heldout_world(i: int, steps: int, split: str = "test") -> tuple[WorldSpec, int, list[tuple[str, ...]]]:
    """Held-out world ``i`` of ``split``: its caption's spec, its seed and ``steps`` actions of the
    random policy (the same world and actions as :func:`episode` ``(i, steps, split=split)``)."""
    rng, spec, seed = _world(i, split)
    return spec, seed, random_actions(rng, steps)


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
    i: int,
    steps: int,
    *,
    event: str | None = None,
    event_step: int = 1,
    spec: WorldSpec | None = None,
    split: str = "test",
) -> tuple[np.ndarray, list[tuple[str, ...]], list[str]]:
    """Held-out world ``i`` of ``split`` played with the random policy: frames (steps + 1, H, W, 3),
    the keys of steps 1..steps, and the event text in force for each of those frames (``event``
    switched on at ``event_step``; ``spec`` replaces the world's caption)."""
    rng, own, seed = _world(i, split)
    spec = spec if spec is not None else own
    game = Game(spec, seed)
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


def heldout_prompts(n: int, split: str = "test") -> list[WorldSpec]:
    """``n`` captions of ``split`` ("test" or "val"), each with at least one object (drawn with
    repeats when ``n`` is more than the split holds)."""
    rng = np.random.default_rng([world_seed(0, split), 4])
    specs: list[WorldSpec] = []
    while len(specs) < n:
        s = random_spec_in(rng, split)
        if s.objects:
            specs.append(s)
    return specs
