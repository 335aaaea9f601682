"""The text model's HELD-OUT set, written apart from the training generator (``text_data``): nothing
here is imported from it, and a test checks that its templates, carriers and fillers appear in
none of ``text_data``'s phrase lists.

What is held out (what the model never saw in training):

* sentence templates: how objects, ground, time and rain are put into words (e.g. "a red door
  positioned towards the left", "on the left you'll find ...", "underfoot: snow", "weather-wise
  it's rainy", "the hour: night");
* carrier phrases (the request around a scene: "could you whip up", "my dream stage has",
  "design a stage featuring"...), clause joiners ("in addition to", "alongside", "together with"),
  filler words ("erm", "honestly", "rusty", "glowing"...) and texts that name nothing;
* for events: carriers ("i wish", "would you kindly", "hurry up and"...) and phrasings of the
  four events not in the training list;
* the typo process (its own: a vowel swapped for another vowel, the last letter dropped, two
  letters transposed at the end of a word).

What is shared: the attribute words (canonical ones and a subset of the training synonyms: a
model cannot guess that "scarlet" means red without seeing it) and the answer format.

``heldout(seed=2025)`` is fixed: 400 prompts (~5% naming nothing) and 200 event texts (~10%
naming no event), each with its expected answer (the ``text.spec`` JSON form).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from worldserve.common import caption as grammar
from worldserve.text.spec import prompt_answer

COLOURS = {
    "red": ("red", "red", "scarlet", "crimson"),
    "blue": ("blue", "blue", "navy", "azure"),
    "yellow": ("yellow", "yellow", "golden", "lemon"),
    "purple": ("purple", "purple", "violet", "lilac"),
    "pink": ("pink", "pink", "rose", "hot pink"),
    "cyan": ("cyan", "cyan", "teal", "turquoise"),
}
KINDS = {"door": ("door", "door", "doorway", "entrance"), "box": ("box", "box", "crate", "chest")}
GROUND = {
    "grass": ("grass", "grass", "lawn", "meadow"),
    "sand": ("sand", "sand", "desert", "beach", "dunes"),
    "snow": ("snow", "snow", "fresh snow", "snowfield"),
}
GROUND_ADJ = {"grass": ("grassy",), "sand": ("sandy",), "snow": ("snowy",)}
TIME = {
    "night": ("night", "nighttime", "after dark", "midnight"),
    "day": ("day", "daytime", "daylight", "noon", "morning"),
}
RAIN = {True: ("rainy", "raining", "stormy", "wet", "pouring"), False: ("dry", "not raining", "rain-free", "clear")}

HO_OBJECT = (
    "{d} {c} {k} positioned towards the {s}",
    "on the {s} you'll find {d} {c} {k}",
    "{d} {c} {k} off to the {s}",
    "{d} {c} {k} ({s})",
    "{d} {k}, {c}, way out {s}",
    "{d} {c} {k} located {s}",
    "{c} {k}, {s} corner",
    "{d} {c} {k} near the {s} border",
    "somewhere on the {s}, {d} {c} {k}",
)
HO_GROUND = ("underfoot: {n}", "the floor made of {n}", "terrain of {n}", "{a} terrain", "resting upon {n}")
HO_TIME = ("the hour: {t}", "{t}", "occurring during {t}", "it's {t}", "{t} hours")
HO_RAIN = ("weather-wise it's {r}", "{r}", "skies {r}", "{r} conditions")
HO_CARRIERS = (
    "could you whip up",
    "my dream stage has",
    "design a stage featuring",
    "i'm picturing",
    "picture this:",
    "construct",
    "craft",
    "we require",
    "yo, produce",
    "proceed to assemble",
    "",
)
HO_TAILS = ("", "", "cheers", "much appreciated", "ty", "if possible")
HO_JOINERS = (" in addition to ", " alongside ", " together with ", " / ", ", ")
HO_FILLERS = ("erm", "honestly", "sort of", "quite", "lovely", "neat", "rusty", "glowing", "ancient", "mysterious")
HO_NOTHING = (
    "a rocket launching into space",
    "bake me a chocolate cake",
    "calculate seven times nine",
    "hum a birthday tune",
    "a penguin wearing a hat",
    "recommend a good book",
    "stock market news",
    "blah blah blah",
)
HO_EVENTS = {
    "it starts to rain": (
        "rain immediately",
        "could it begin raining",
        "bring on a storm",
        "rain is coming",
        "rain for us",
        "rain time",
    ),
    "the rain stops": (
        "no further rain",
        "the rain should end",
        "the storm must stop",
        "rain be gone",
        "put a stop to the rain",
    ),
    "night falls": (
        "night should fall",
        "change to nighttime",
        "go to night",
        "darkness descends",
        "everything turns dark",
    ),
    "day breaks": ("change to daytime", "the morning arrives", "go to day", "sun rises", "bring daylight back"),
}
HO_EVENT_CARRIERS = ("", "", "i wish", "would you kindly", "hurry up and", "yo", "alright,", "it's time to")
HO_EVENT_NONE = ("crouch", "inventory screen", "climb the ladder", "quicksave", "bake bread")


@dataclass(frozen=True)
class Item:
    task: str  # "prompt" or "event"
    text: str
    answer: dict[str, Any]


def _typo(word: str, rng: random.Random) -> str:
    """The held-out typo process: a vowel swapped for another vowel, the last letter dropped, or
    the last two letters transposed."""
    if len(word) < 4 or not word.isalpha():
        return word
    op = rng.randrange(3)
    vowels = [i for i, ch in enumerate(word) if ch in "aeiou" and i > 0]
    if op == 0 and vowels:
        i = rng.choice(vowels)
        return word[:i] + rng.choice([v for v in "aeiou" if v != word[i]]) + word[i + 1 :]
    if op == 1:
        return word[:-1]
    return word[:-2] + word[-1] + word[-2]


@dataclass(frozen=True)
class Phrasing:
    """One held-out set's own words and habits (this module's, and ``text_fresh``'s)."""

    objects: tuple[str, ...]
    ground: tuple[str, ...]
    time: tuple[str, ...]
    rain: tuple[str, ...]
    carriers: tuple[str, ...]
    tails: tuple[str, ...]
    joiners: tuple[str, ...]
    fillers: tuple[str, ...]
    nothing: tuple[str, ...]
    events: dict[str, tuple[str, ...]]
    event_carriers: tuple[str, ...]
    event_none: tuple[str, ...]
    typo: Callable[[str, random.Random], str]
    typo_rate: float = 0.1
    determiners: tuple[str, ...] = ("a", "a", "one", "the")
    shuffle: float = 0.4
    say_when_silent: str = "ground"  # a world of no objects that says nothing else says this
    # the attribute words (default: this module's tables, shared by the first two sets)
    colours: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: COLOURS)
    kinds: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: KINDS)
    ground_words: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: GROUND)
    ground_adj: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: GROUND_ADJ)
    time_words: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: TIME)
    rain_words: Mapping[bool, tuple[str, ...]] = field(default_factory=lambda: RAIN)

    def strings(self) -> list[str]:
        """Every template, carrier, joiner, filler and phrase (the disjointness tests read them)."""
        groups = (self.objects, self.ground, self.time, self.rain, self.carriers, self.tails, self.joiners)
        out = [x for g in (*groups, self.fillers, self.nothing, *self.events.values()) for x in g]
        return [x for x in (*out, *self.event_carriers, *self.event_none) if x.strip()]


def _noise(text: str, rng: random.Random, ph: Phrasing) -> str:
    words = text.split(" ")
    if rng.random() < 0.3:
        words = [ph.typo(w, rng) if rng.random() < ph.typo_rate else w for w in words]
    if rng.random() < 0.2:
        words.insert(rng.randrange(len(words) + 1), rng.choice(ph.fillers))
    return " ".join(w for w in words if w)


def prompt_item(rng: random.Random, ph: Phrasing) -> Item:
    """One held-out prompt in ``ph``'s phrasing, with its expected answer."""
    if rng.random() < 0.05:
        text = rng.choice(ph.nothing)
        return Item("prompt", text, prompt_answer(None, ground=False, time=False, rain=False))
    n = rng.choice((0, 1, 1, 2, 2))
    sides = rng.sample(grammar.SIDES, n)
    objects = tuple(grammar.ObjectSpec(rng.choice(list(grammar.COLORS)), rng.choice(grammar.KINDS), s) for s in sides)
    spec = grammar.WorldSpec(objects, rng.choice(list(grammar.GROUNDS)), rng.random() < 0.5, rng.random() < 0.5)
    g, t, r = (rng.random() < 0.5 for _ in range(3))
    if not objects and not (g or t or r):
        g, t = ph.say_when_silent == "ground", ph.say_when_silent == "time"
    clauses = [
        rng.choice(ph.objects).format(
            d=rng.choice(ph.determiners),
            c=rng.choice(ph.colours[o.color]),
            k=rng.choice(ph.kinds[o.kind]),
            s=o.side,
        )
        for o in spec.objects
    ]
    if g:
        clauses.append(
            rng.choice(ph.ground).format(
                n=rng.choice(ph.ground_words[spec.ground]), a=rng.choice(ph.ground_adj[spec.ground])
            )
        )
    if t:
        clauses.append(rng.choice(ph.time).format(t=rng.choice(ph.time_words["night" if spec.night else "day"])))
    if r:
        clauses.append(rng.choice(ph.rain).format(r=rng.choice(ph.rain_words[spec.rain])))
    if rng.random() < ph.shuffle:
        rng.shuffle(clauses)
    body = clauses[0]
    for c in clauses[1:]:
        body += rng.choice(ph.joiners) + c
    text = " ".join(x for x in (rng.choice(ph.carriers), body, rng.choice(ph.tails)) if x)
    return Item("prompt", _noise(" ".join(text.split()), rng, ph), prompt_answer(spec, ground=g, time=t, rain=r))


def event_item(rng: random.Random, ph: Phrasing) -> Item:
    """One held-out event text in ``ph``'s phrasing, with its expected answer."""
    if rng.random() < 0.1:
        event, core = None, rng.choice(ph.event_none)
    else:
        event = rng.choice(list(grammar.EVENTS))
        core = rng.choice(ph.events[event])
    text = " ".join(x for x in (rng.choice(ph.event_carriers), core) if x)
    return Item("event", _noise(text, rng, ph), {"event": event})


def generate_items(ph: Phrasing, seed: int, n_prompts: int, n_events: int) -> list[Item]:
    """A held-out set in ``ph``'s phrasing: ``n_prompts`` prompts then ``n_events`` event texts, from ``seed``."""
    rng = random.Random(seed)
    return [prompt_item(rng, ph) for _ in range(n_prompts)] + [event_item(rng, ph) for _ in range(n_events)]


HELDOUT = Phrasing(
    HO_OBJECT,
    HO_GROUND,
    HO_TIME,
    HO_RAIN,
    HO_CARRIERS,
    HO_TAILS,
    HO_JOINERS,
    HO_FILLERS,
    HO_NOTHING,
    HO_EVENTS,
    HO_EVENT_CARRIERS,
    HO_EVENT_NONE,
    _typo,
)


def heldout(seed: int = 2025, n_prompts: int = 400, n_events: int = 200) -> list[Item]:
    """The fixed held-out set: ``n_prompts`` prompts then ``n_events`` event texts."""
    return generate_items(HELDOUT, seed, n_prompts, n_events)


def template_strings() -> list[str]:
    """Every held-out template, carrier, joiner, filler and phrase (the disjointness test reads them)."""
    return HELDOUT.strings()
