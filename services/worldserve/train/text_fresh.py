"""A SECOND held-out set for the text model, written on 2026-12-04 after the reading rules
(``text.spec.read_words``: typo correction, unknown words) were designed from the first held-out
set's misses: that set (``text_heldout``) is no longer blind, this one was run once, after the
model it reports on was chosen.

Like the first, it imports nothing from the training generator (``text_data``), and a test checks
that its templates, carriers, joiners, fillers and phrasings appear in none of the training lists.
It shares the attribute words with the first held-out set (``text_heldout.COLOURS`` ...): a model
cannot guess that "scarlet" means red without seeing it. Its own typo process drops a letter from
the middle of a word.

``fresh(seed=77)``: 400 prompts and 200 event texts, each with its expected answer.
"""

from __future__ import annotations

import random

from .text_heldout import Item, Phrasing, generate_items

F_OBJECT = (
    "{d} {c} {k} resides on the {s}",
    "{d} {c} {k} hugging the {s} wall",
    "{s} flank: {d} {c} {k}",
    "{d} {k} in {c} tucked away {s}",
    "{d} {c} {k} leaning {s}",
    "toward the {s} stands {d} {c} {k}",
    "{d} {c} {k} (on your {s})",
)
F_GROUND = ("with {n} below", "{n} covering everything", "a {a} landscape", "the land is {n}")
F_TIME = ("happening at {t}", "{t} vibes", "timing: {t}", "around {t}")
F_RAIN = ("{r} outside", "sky looks {r}", "forecast {r}")
F_CARRIERS = ("spin up", "kindly conjure", "i adore", "fabricate", "fetch a map:", "dream up", "dear bot, sketch", "")
F_TAILS = ("", "", "thx", "cheers mate", "alrighty?")
F_JOINERS = (" furthermore ", " besides, ", " adjacent: ", " ~ ", " moreover ")
F_FILLERS = ("totally", "weird", "fancy", "uhh", "gigantic")
F_NOTHING = (
    "order a pizza",
    "what is the capital of peru",
    "translate hello into french",
    "a dragon made of glass",
    "tell me a joke",
)
F_EVENTS = {
    "it starts to rain": ("rain down on us", "start up the rain", "open the skies", "rain please begin"),
    "the rain stops": ("rain, quit it", "shut off the rain", "rain no longer", "the rain is finished"),
    "night falls": ("turn it to night", "bring on the night", "night now", "darkness please"),
    "day breaks": ("turn it to day", "bring on the day", "day now", "sunshine please"),
}
F_EVENT_CARRIERS = ("", "", "listen,", "could we", "dear universe,", "time to")
F_EVENT_NONE = ("reload my weapon", "open the map", "take a screenshot", "wave hello")


def _typo(word: str, rng: random.Random) -> str:
    """This set's typo process: one letter from the middle of the word dropped."""
    if len(word) < 5 or not word.isalpha():
        return word
    i = rng.randrange(2, len(word) - 1)
    return word[:i] + word[i + 1 :]


FRESH = Phrasing(
    F_OBJECT,
    F_GROUND,
    F_TIME,
    F_RAIN,
    F_CARRIERS,
    F_TAILS,
    F_JOINERS,
    F_FILLERS,
    F_NOTHING,
    F_EVENTS,
    F_EVENT_CARRIERS,
    F_EVENT_NONE,
    _typo,
    typo_rate=0.12,
    determiners=("a", "one", "the", ""),
    shuffle=0.5,
    say_when_silent="time",
)


def fresh(seed: int = 77, n_prompts: int = 400, n_events: int = 200) -> list[Item]:
    """The second held-out set: ``n_prompts`` prompts then ``n_events`` event texts."""
    return generate_items(FRESH, seed, n_prompts, n_events)


def template_strings() -> list[str]:
    """Every template, carrier, joiner, filler and phrase (the disjointness test reads them)."""
    return FRESH.strings()
