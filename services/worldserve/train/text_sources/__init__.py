"""Independently written training phrasings for the text model (v15: six, v16: ten, v18: thirteen,
v19: nineteen, v21: twenty-six): each module holds one writer's ``base.Source``, written blind to
the training generator (``text_data``) and to every held-out set. ``text_data.sample`` draws
``text_data.SOURCE_SHARE`` of its pairs from them."""

from __future__ import annotations

import functools
import importlib

from .base import Source, check

NAMES = (
    "gamer",
    "designer",
    "terse",
    "storyteller",
    "learner",
    "voice",
    "social",
    "coder",
    "oldtimer",
    "friend",
    "forecaster",
    "hedger",
    "planner",
    "reporter",
    "tester",
    "novelist",
    "scientist",
    "traveler",
    "regional",
    "poet",
    "director",
    "realtor",
    "lawyer",
    "chef",
    "radio",
    "farmer",
)
"""The writers' modules, one persona each (their docstrings say who)."""


@functools.cache
def sources() -> tuple[Source, ...]:
    """Every writer's ``Source``, checked (``base.check``)."""
    out = []
    for name in NAMES:
        src: Source = importlib.import_module(f"{__name__}.{name}").SOURCE
        check(src)
        out.append(src)
    return tuple(out)


@functools.cache
def attribute_words() -> frozenset[str]:
    """Every word of the writers' phrases that name a value (colours, kinds, sides, grounds,
    times, rain, events)."""
    return frozenset(w for s in sources() for p in s.attribute_strings() for w in p.replace("-", " ").lower().split())
