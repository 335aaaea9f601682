"""One independently written source of TRAINING phrasings for the text model (issue 25, v15).

Each module of this package was written by a separate writer who read neither the training
generator (``text_data``), nor its words, nor any held-out set: its own request openings, object
templates, side words, attribute synonyms, whole phrases for the ground, time of day and rain,
event phrasings, texts naming nothing and typo habit. ``text_data.sample`` draws a share of its
training pairs from them (``source_prompt`` / ``source_event`` here, then its own noise), so that
the model meets phrasing no single writer would produce.

Labels: an attribute the text does not mention is null in the answer; objects are listed in the
order the text names them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from worldserve.common import caption as grammar
from worldserve.text.spec import prompt_answer


@dataclass(frozen=True)
class Source:
    """One writer's phrasing. Templates use ``{d}`` (a determiner), ``{c}`` (a colour phrase),
    ``{k}`` (a kind phrase) and ``{s}`` (a side phrase); every other field holds whole phrases."""

    name: str
    colours: Mapping[str, tuple[str, ...]]  # every grammar colour -> phrases naming it
    kinds: Mapping[str, tuple[str, ...]]  # "door" / "box" -> phrases naming it
    sides: Mapping[str, tuple[str, ...]]  # "left" / "right" -> what fills {s}
    objects: tuple[str, ...]  # object templates: {c} {k} {s} each once, {d} optional
    determiners: tuple[str, ...]
    ground: Mapping[str, tuple[str, ...]]  # "grass" / "sand" / "snow" -> whole phrases
    time: Mapping[str, tuple[str, ...]]  # "day" / "night" -> whole phrases
    rain: Mapping[bool, tuple[str, ...]]  # True (raining) / False (not) -> whole phrases
    carriers: tuple[str, ...]  # request openings ("" allowed)
    tails: tuple[str, ...]  # endings ("" allowed)
    joiners: tuple[str, ...]  # between clauses, spaces included (", ", " and ")
    fillers: tuple[str, ...]  # words or short phrases that say nothing about a world
    nothing: tuple[str, ...]  # whole prompts that name nothing the world knows
    events: Mapping[str, tuple[str, ...]]  # every grammar event -> whole phrasings
    event_carriers: tuple[str, ...]  # openings of an event text ("" allowed)
    event_none: tuple[str, ...]  # texts during play that name no event
    typo: Callable[[str, random.Random], str]  # this writer's slip of the keyboard on one word

    def attribute_strings(self) -> list[str]:
        """Every phrase that names a value (colour, kind, side, ground, time, rain, event)."""
        tables = (self.colours, self.kinds, self.sides, self.ground, self.time, self.rain, self.events)
        return [p for t in tables for v in t.values() for p in v]

    def other_strings(self) -> list[str]:
        """Every phrase that names no value (templates, openings, endings, fillers, nothing)."""
        groups = (self.objects, self.carriers, self.tails, self.joiners, self.fillers, self.nothing)
        return [p for g in (*groups, self.event_carriers, self.event_none) for p in g]


def _clause(template: str, o: grammar.ObjectSpec, src: Source, rng: random.Random) -> str:
    return template.format(
        d=rng.choice(src.determiners),
        c=rng.choice(src.colours[o.color]),
        k=rng.choice(src.kinds[o.kind]),
        s=rng.choice(src.sides[o.side]),
    )


def source_prompt(rng: random.Random, src: Source) -> tuple[str, dict[str, Any]]:
    """(free text, answer) for one scene prompt in ``src``'s phrasing (before the trainer's noise)."""
    if rng.random() < 0.05:
        return rng.choice(src.nothing), prompt_answer(None, ground=False, time=False, rain=False)
    n = rng.choices((0, 1, 2), weights=(0.15, 0.4, 0.45))[0]
    sides = rng.sample(grammar.SIDES, n)
    objects = tuple(grammar.ObjectSpec(rng.choice(list(grammar.COLORS)), rng.choice(grammar.KINDS), s) for s in sides)
    spec = grammar.WorldSpec(objects, rng.choice(list(grammar.GROUNDS)), rng.random() < 0.5, rng.random() < 0.5)
    g, t, r = (rng.random() < 0.55 for _ in range(3))
    if not objects and not (g or t or r):
        which = rng.randrange(3)
        g, t, r = which == 0, which == 1, which == 2
    clauses: list[tuple[str, grammar.ObjectSpec | None]] = [
        (_clause(rng.choice(src.objects), o, src, rng), o) for o in objects
    ]
    if g:
        clauses.append((rng.choice(src.ground[spec.ground]), None))
    if t:
        clauses.append((rng.choice(src.time["night" if spec.night else "day"]), None))
    if r:
        clauses.append((rng.choice(src.rain[spec.rain]), None))
    if rng.random() < 0.5:
        rng.shuffle(clauses)
    body = clauses[0][0]
    for c, _ in clauses[1:]:
        body += rng.choice(src.joiners) + c
    words = body.split(" ")
    if rng.random() < 0.25:
        words.insert(rng.randrange(len(words) + 1), rng.choice(src.fillers))
    text = " ".join(x for x in (rng.choice(src.carriers), " ".join(words), rng.choice(src.tails)) if x)
    answer = prompt_answer(spec, ground=g, time=t, rain=r)
    named = [o for _, o in clauses if o is not None]
    answer["objects"] = [{"colour": o.color, "kind": o.kind, "side": o.side} for o in named]
    return " ".join(text.split()), answer


def source_event(rng: random.Random, src: Source) -> tuple[str, dict[str, Any]]:
    """(free text, answer) for one event text in ``src``'s phrasing (before the trainer's noise)."""
    if rng.random() < 0.12:
        event, core = None, rng.choice(src.event_none)
    else:
        event = rng.choice(list(grammar.EVENTS))
        core = rng.choice(src.events[event])
    text = " ".join(x for x in (rng.choice(src.event_carriers), core) if x)
    return " ".join(text.split()), {"event": event}


def check(src: Source) -> None:
    """Raise ValueError when ``src`` cannot label what it generates: a value missing from a
    table, a template without its slots, an empty table."""
    for table, keys in (
        (src.colours, tuple(grammar.COLORS)),
        (src.kinds, grammar.KINDS),
        (src.sides, grammar.SIDES),
        (src.ground, tuple(grammar.GROUNDS)),
        (src.time, grammar.TIMES),
        (src.rain, (True, False)),
        (src.events, tuple(grammar.EVENTS)),
    ):
        if set(table) != set(keys) or not all(table[k] for k in keys):
            raise ValueError(f"{src.name}: a table must name every one of {keys}, each with phrases")
    for t in src.objects:
        if not all(t.count(slot) == 1 for slot in ("{c}", "{k}", "{s}")):
            raise ValueError(f"{src.name}: object template {t!r} needs {{c}}, {{k}} and {{s}} once each")
    for name in ("determiners", "carriers", "tails", "joiners", "fillers", "nothing", "event_carriers", "event_none"):
        if not getattr(src, name):
            raise ValueError(f"{src.name}: {name} is empty")
