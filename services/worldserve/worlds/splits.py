"""The caption splits: which of the grammar's captions a model may train on, which choose checkpoints
and which are only ever reported on.

A caption belongs to ``"test"`` when it holds one of ``TEST_RULES``' combinations, else to
``"val"`` when it holds one of ``VAL_RULES``', else to ``"train"``. Each rule is a combination of
colour, kind, side, ground, time and rain that never occurs in a training caption, while each of
its parts does (pink boxes and snow are both trained on, a pink box on snow never is): the held-out
captions test composition, not recall. Over the grammar's 2,028 captions (13 choices per side x 3
grounds x day/night x dry/rain) the test split is 11.1% and the validation split 8.3%.

Trainers draw their worlds with :func:`random_spec_in` ``(rng, "train")``; the fidelity evaluation
reports on test worlds (seeds from ``HELDOUT_SEED``, test captions) and chooses checkpoints on
validation worlds (other seeds, validation captions)::

    from worldserve.worlds.splits import split_of, random_spec_in
    split_of(parse_caption("a pink box on the left, snow"))      # "test"
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .platformer import COLORS, GROUNDS, KINDS, SIDES, ObjectSpec, WorldSpec, random_spec

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Rule:
    """A held-out combination: a caption holds it when one of its objects and its world match."""

    text: str
    match: Callable[[ObjectSpec, WorldSpec], bool]


TEST_RULES: tuple[Rule, ...] = (
    Rule("a pink box on snow", lambda o, w: o.color == "pink" and o.kind == "box" and w.ground == "snow"),
    Rule(
        "a cyan door on the right at night",
        lambda o, w: o.color == "cyan" and o.kind == "door" and o.side == "right" and w.night,
    ),
    Rule(
        "anything yellow on the left, on sand, in the rain",
        lambda o, w: o.color == "yellow" and o.side == "left" and w.ground == "sand" and w.rain,
    ),
)
"""Combinations only test captions hold."""

VAL_RULES: tuple[Rule, ...] = (
    Rule("a purple door on grass", lambda o, w: o.color == "purple" and o.kind == "door" and w.ground == "grass"),
    Rule(
        "a blue box on the left in the rain",
        lambda o, w: o.color == "blue" and o.kind == "box" and o.side == "left" and w.rain,
    ),
)
"""Combinations only validation captions hold (a test caption may hold them too)."""


def _holds(spec: WorldSpec, rules: tuple[Rule, ...]) -> bool:
    return any(r.match(o, spec) for o in spec.objects for r in rules)


def split_of(spec: WorldSpec) -> str:
    """``"train"``, ``"val"`` or ``"test"``: the split the caption of ``spec`` belongs to."""
    if _holds(spec, TEST_RULES):
        return "test"
    if _holds(spec, VAL_RULES):
        return "val"
    return "train"


def check_split(split: str) -> str:
    """``split`` if it names a split, else ValueError naming the value and the choices."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return split


def random_spec_in(rng: np.random.Generator, split: str) -> WorldSpec:
    """A random spec (:func:`~worldserve.worlds.platformer.random_spec`'s distribution) drawn again
    until its caption is in ``split``."""
    check_split(split)
    while True:
        spec = random_spec(rng)
        if split_of(spec) == split:
            return spec


def all_specs() -> list[WorldSpec]:
    """Every caption the grammar can produce (one spec per caption: 2,028)."""
    choices: list[tuple[str, str] | None] = [None, *((c, k) for c in COLORS for k in KINDS)]
    out = []
    for left, right, ground, night, rain in itertools.product(choices, choices, GROUNDS, (False, True), (False, True)):
        objects = tuple(ObjectSpec(*o, side) for o, side in ((left, SIDES[0]), (right, SIDES[1])) if o is not None)
        out.append(WorldSpec(objects, ground, night, rain))
    return out


def split_specs(split: str) -> list[WorldSpec]:
    """Every caption of ``split``, in the grammar's order."""
    check_split(split)
    return [s for s in all_specs() if split_of(s) == split]
