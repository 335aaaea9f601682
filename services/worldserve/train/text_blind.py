"""A THIRD held-out set for the text model, written on 2026-12-04 by someone who had seen neither
the training generator (``text_data``) nor the reading vocabulary (``text_words``, ``text.spec``):
the first two sets (``text_heldout``, ``text_fresh``) have been read while the model and its
reading rules were designed, this one has not. Run it once per shipped model, after the model is
chosen, and do not tune anything on its misses (read only its score).

Everything here is its own: object, ground, time and rain templates, request carriers, tails,
joiners, fillers, texts naming nothing, event carriers and phrasings, texts naming no event, and
the attribute words (the canonical word about half the time, everyday synonyms otherwise). Its
typo process is its own too: a letter typed twice, or a neighbouring key hit along with the
intended one. Like the first two, it imports nothing from the training generator, and a test
checks that its strings appear in none of the training lists.

``blind(seed=4127)``: 400 prompts and 200 event texts, each with its expected answer.
"""

from __future__ import annotations

import random

from .text_heldout import Item, Phrasing, generate_items

B_COLOURS = {
    "red": ("red", "red", "bright red", "cherry red"),
    "blue": ("blue", "blue", "dark blue", "royal blue"),
    "yellow": ("yellow", "yellow", "bright yellow", "pale yellow"),
    "purple": ("purple", "purple", "dark purple", "deep purple"),
    "pink": ("pink", "pink", "light pink", "baby pink"),
    "cyan": ("cyan", "cyan", "aqua", "bright cyan"),
}
B_KINDS = {
    "door": ("door", "door", "wooden door", "front door"),
    "box": ("box", "box", "cardboard box", "wooden crate"),
}
B_GROUND_WORDS = {
    "grass": ("grass", "grass", "green grass", "grassland"),
    "sand": ("sand", "sand", "desert sand", "beach sand"),
    "snow": ("snow", "snow", "deep snow", "snowdrifts"),
}
B_GROUND_ADJ = {"grass": ("grassy", "green"), "sand": ("sandy", "desert"), "snow": ("snowy", "snow-covered")}
B_TIME_WORDS = {
    "night": ("night", "night", "night time", "late night"),
    "day": ("day", "day", "day time", "midday"),
}
B_RAIN_WORDS = {True: ("rainy", "rainy", "wet", "drizzly"), False: ("dry", "dry", "clear", "bone dry")}

B_OBJECT = (
    "{d} {c} {k}, if you glance {s}",
    "{d} {c} {k} in the {s} half",
    "{d} {c} {k} stuck in the {s} corner",
    "{d} {c} {k} chilling on the {s}",
    "{s}: {d} {c} {k}",
    "glance {s} and spot {d} {c} {k}",
    "{d} {c} {k} waiting on the {s}",
    "{d} {c} {k} kept {s}",
)
B_GROUND = ("walking on {n}", "a floor of {n}", "lots of {n}", "{a} scenery", "knee-deep in {n}")
B_TIME = ("{t} setting", "when it's {t}", "it's gotta be {t}", "during {t}")
B_RAIN = ("{r} weather", "keep it {r}", "weather's {r}")
B_CARRIERS = ("here's my idea:", "i'm after", "request:", "i fancy", "my pitch:", "hoping for", "i'm dreaming of", "")
B_TAILS = ("", "", "no rush", "that'd be great", "appreciate it", "you're the best")
B_JOINERS = (" not forgetting ", " -- ", " and don't forget ", " not to mention ")
B_FILLERS = ("literally", "y'know", "hmmm", "awesome", "massive", "creepy", "seriously", "anyway")
B_NOTHING = (
    "write me a poem about cats",
    "what's two plus two",
    "set a timer for ten minutes",
    "a spaceship made of cheese",
    "can you do my maths homework",
    "play some jazz",
    "my dog ate my sandwich",
    "how tall is mount everest",
)
B_EVENTS: dict[str, tuple[str, ...]] = {
    "it starts to rain": (
        "make it start raining",
        "can we get some rain",
        "turn the rain on",
        "i want it to rain now",
        "start a rain shower",
        "add some rain please",
        "looks like it's starting to rain",
        "get some rain going",
        "it's raining now",
        "need rain here",
    ),
    "the rain stops": (
        "can you stop all this rain",
        "turn the rain off",
        "no more rain please",
        "make it stop raining",
        "i'm sick of the rain, end it",
        "get rid of the rain",
        "the rain has stopped",
        "switch off the rain",
        "can the rain stop now",
        "enough rain already",
    ),
    "night falls": (
        "let the sun go down",
        "change it over to night",
        "turn it into night time",
        "can it be night now",
        "it's getting dark now",
        "i want it to be nighttime",
        "set the time to night",
        "skip to night",
        "night time please",
        "make it dark outside",
    ),
    "day breaks": (
        "let the sun come up",
        "switch to daytime",
        "turn it into day time",
        "can it be morning now",
        "the sun is coming up",
        "i want it to be daytime",
        "set the time to day",
        "skip to morning",
        "daytime please",
        "make it light outside",
    ),
}
B_EVENT_CARRIERS = ("", "", "excuse me,", "mods,", "psst", "hiya", "folks,", "attention:")
B_EVENT_NONE = (
    "jump over the wall",
    "let me pause for a sec",
    "where's the exit",
    "mute the music please",
    "how do i sprint",
    "brb getting a snack",
    "good game everyone",
    "save and quit",
    "open my backpack",
    "who wants to team up",
)

# QWERTY neighbours of each letter (same row and the rows above and below)
_KEYS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _neighbours(ch: str) -> str:
    for r, row in enumerate(_KEYS):
        c = row.find(ch)
        if c < 0:
            continue
        near = [row[j] for j in (c - 1, c + 1) if 0 <= j < len(row)]
        for rr in (r - 1, r + 1):
            if 0 <= rr < len(_KEYS):
                near += [_KEYS[rr][j] for j in (c - 1, c, c + 1) if 0 <= j < len(_KEYS[rr])]
        return "".join(near)
    return ""


def _typo(word: str, rng: random.Random) -> str:
    """This set's typo process: a letter typed twice, or a neighbouring key hit along with the
    intended one (its letter slipped in right after it). Every letter of the word stays."""
    if len(word) < 4 or not word.isalpha():
        return word
    i = rng.randrange(1, len(word))
    if rng.random() < 0.5:
        return word[: i + 1] + word[i] + word[i + 1 :]
    near = _neighbours(word[i])
    return word[: i + 1] + rng.choice(near) + word[i + 1 :] if near else word


BLIND = Phrasing(
    B_OBJECT,
    B_GROUND,
    B_TIME,
    B_RAIN,
    B_CARRIERS,
    B_TAILS,
    B_JOINERS,
    B_FILLERS,
    B_NOTHING,
    B_EVENTS,
    B_EVENT_CARRIERS,
    B_EVENT_NONE,
    _typo,
    typo_rate=0.1,
    determiners=("a", "a", "the", "one", ""),
    shuffle=0.45,
    say_when_silent="ground",
    colours=B_COLOURS,
    kinds=B_KINDS,
    ground_words=B_GROUND_WORDS,
    ground_adj=B_GROUND_ADJ,
    time_words=B_TIME_WORDS,
    rain_words=B_RAIN_WORDS,
)


def blind(seed: int = 4127, n_prompts: int = 400, n_events: int = 200) -> list[Item]:
    """The third (blind) held-out set: ``n_prompts`` prompts then ``n_events`` event texts."""
    return generate_items(BLIND, seed, n_prompts, n_events)


def template_strings() -> list[str]:
    """Every template, carrier, joiner, filler and phrase (the disjointness test reads them)."""
    return BLIND.strings()
