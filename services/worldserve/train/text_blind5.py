"""A SEVENTH held-out set for the text model, written by a helper who was blind to the training
generator (``text_data``), the reading vocabulary (``text_words``, the aliases), the trainer, the
training sources and the text app, and who neither ran the model nor read its card. The helper
read only the world's vocabulary (``common.caption``), the ``Phrasing`` machinery of the first set
(``text_heldout``), the third to sixth sets (``text_blind``, ``text_blind2``, ``text_blind3``,
``text_blind4``) for their interface and to keep clear of their words, and the tests; everything
below is written fresh. The only word the helper could learn about the training phrases was from
the test's clash message (a word of these templates that is also a word of the training ones), and
such words were replaced. Run it once per shipped model, after the model is chosen, and do not
tune anything on its misses.

Its own: object, ground, time and rain frames, request carriers, tails, joiners, extra words,
texts naming nothing, event carriers and phrasings (at least twelve per event), texts naming no
event, and the attribute words (the canonical word about half the time, otherwise plain everyday
synonyms whose value nobody would dispute; only two times of day, and rain said or denied as a
phrase of circumstance, "in the rain" or "without rain", negations included). Its typo process is
its own too: the space bar struck inside a longer word, splitting it in two (no letter lost,
added, changed or moved, each piece at least two letters long), never leaving a piece that is an
attribute word, a side or a word of weather, time or negation. Like the earlier sets it imports
nothing from the training generator nor its words, and a test checks that its strings appear in
none of the training lists.

``blind5(seed=7411)``: 400 prompts (about 5% naming nothing) and 200 event texts (about 10%
naming no event), each with its expected answer. Its tables: 13 object, 7 ground, 5 time and
5 rain frames; 10 request carriers (and none), 5 tails (and none), 6 joiners, 10 extra words,
13 texts naming nothing; 14 phrasings per event, 8 event carriers (and none), 14 texts naming no
event; per colour, kind, ground, time of day and rain value 4 distinct attribute words (the
canonical one weighted to half), 2 ground adjectives.
"""

from __future__ import annotations

import random

from .text_heldout import Item, Phrasing, generate_items

B5_COLOURS = {
    "red": ("red", "red", "red", "poppy red", "ketchup red", "pure red"),
    "blue": ("blue", "blue", "blue", "classic blue", "true blue", "pure blue"),
    "yellow": ("yellow", "yellow", "yellow", "taxi yellow", "custard yellow", "pure yellow"),
    "purple": ("purple", "purple", "purple", "regal purple", "heather purple", "pure purple"),
    "pink": ("pink", "pink", "pink", "peony pink", "marshmallow pink", "pure pink"),
    "cyan": ("cyan", "cyan", "cyan", "strong cyan", "cyan-hued", "pure cyan"),
}
B5_KINDS = {
    "door": ("door", "door", "door", "back door", "iron door", "panelled door"),
    "box": ("box", "box", "box", "moving box", "plastic box", "shoebox"),
}
B5_GROUND_WORDS = {
    "grass": ("grass", "grass", "grass", "lush grass", "springy grass", "trimmed grass"),
    "sand": ("sand", "sand", "sand", "shifting sand", "grainy sand", "seaside sand"),
    "snow": ("snow", "snow", "snow", "untouched snow", "fallen snow", "heaped snow"),
}
B5_GROUND_ADJ = {
    "grass": ("grassy", "grassy", "grass-lined"),
    "sand": ("sandy", "sandy", "sand-swept"),
    "snow": ("snowy", "snowy", "snow-laden"),
}
B5_TIME_WORDS = {
    "night": ("night", "night", "night", "moonlit night", "starlit night", "the wee hours"),
    "day": ("day", "day", "day", "mid-morning", "high noon", "early afternoon"),
}
# phrases of circumstance (the rain frames read "played out {r}", "all of it {r}"...): the rain
# said or denied
B5_RAIN_WORDS = {
    True: ("in the rain", "in the rain", "in the rain", "amid showers", "under a downpour", "in fine drizzle"),
    False: (
        "without rain",
        "without rain",
        "without rain",
        "under cloudless skies",
        "in dry weather",
        "with no rain at all",
    ),
}

B5_OBJECT = (
    "{d} {c} {k} dwelling on the {s}",
    "{s} lane: {d} {c} {k}",
    "{d} {c} {k} hovering by the {s} wing",
    "{d} {c} {k} snoozing on the {s}",
    "{d} {c} {k} nudged toward the {s} quarter",
    "skewed {s}: {d} {c} {k}",
    "{d} {c} {k} on guard duty on the {s}",
    "{d} {c} {k} squeezed in at the {s}",
    "{d} {c} {k} for the {s} part of the display",
    "{d} {c} {k} popping into view on the {s}",
    "{d} {c} {k} anchored to the {s}",
    "{d} {c} {k}, camera {s}",
    "glimpse {d} {c} {k} on the {s}",
)
B5_GROUND = (
    "a sea of {n}",
    "{n} wall to wall",
    "feet sinking into {n}",
    "a {a} locale",
    "somewhere {a} and quiet",
    "{a} surroundings, {n} in every direction",
    "paved with {n}",
)
B5_TIME = ("{t} on the dial", "{t} for backdrop", "picked hour: {t}", "{t} all through it", "settle on {t}")
B5_RAIN = ("all of it {r}", "played out {r}", "the action unfolds {r}", "staged {r}", "{r} the whole way through")
B5_CARRIERS = (
    "spin up",
    "piece together",
    "my vision:",
    "bring to life",
    "sculpt me",
    "kit me out with",
    "forge me",
    "stitch together",
    "here goes:",
    "cobble together",
    "",
)
B5_TAILS = ("", "", "much gratitude", "ball's in your court", "run wild with it", "kudos", "mwah")
B5_JOINERS = (" moreover, ", " furthermore ", " w/ ", " ++ ", " and likewise ", " complete with ")
B5_FILLERS = ("sorta", "essentially", "meh", "gee", "hrmm", "quirky", "squeaky", "adorbs", "grand", "nifty")
B5_NOTHING = (
    "recommend a board game for a family",
    "how do bees make honey",
    "a hamster driving a tractor",
    "spell the word necessary",
    "suggest a gift for my aunt",
    "a koala playing drums",
    "describe the taste of mango",
    "who painted the mona lisa",
    "give me a fun fact about sloths",
    "help me plan a road trip",
    "a walrus in a tuxedo",
    "how do you fold a paper plane",
    "what's the best way to learn chess",
)
B5_EVENTS: dict[str, tuple[str, ...]] = {
    "it starts to rain": (
        "let the clouds burst open",
        "kick off the rain",
        "get a drizzle going",
        "soak everything in rain",
        "the sky should pour with rain",
        "cue up a rain shower",
        "set the rain falling",
        "start the showers up",
        "whistle up some rain",
        "how about some rain",
        "trigger a downpour",
        "wet the place with rain",
        "bring down a shower of rain",
        "raindrops, begin falling",
    ),
    "the rain stops": (
        "stop the rain already",
        "shut off the downpour",
        "the showers are ending",
        "let the rain clear off",
        "stop it raining",
        "bring the rain to a stop",
        "the rain should clear now",
        "stop the storm",
        "the rain is ending at last",
        "shut the rain down",
        "the drizzle can stop",
        "make the rain cease",
        "clear the sky of rain",
        "time to end the showers",
    ),
    "night falls": (
        "send us into the night",
        "it's getting late, make it night",
        "switch on the night",
        "bring the moon up",
        "let the darkness come",
        "dusk is falling",
        "push the clock forward to evening",
        "nighttime now",
        "hide the sun for the night",
        "let the stars shine out",
        "roll into the night",
        "the sun is setting",
        "evening, please",
        "plunge everything into night",
    ),
    "day breaks": (
        "let the sun rise",
        "the sun is rising",
        "morning, please",
        "wake us up at dawn",
        "bring back the day",
        "switch on the day",
        "push the clock forward to morning",
        "daytime now",
        "chase the night away",
        "light the world up, it's day",
        "let the sun climb",
        "dawn is breaking",
        "up comes the sun",
        "roll into the day",
    ),
}
B5_EVENT_CARRIERS = ("", "", "snap to it,", "howdy,", "okie,", "sup,", "crew,", "pal,", "gang,", "hmph,")
B5_EVENT_NONE = (
    "stand on top of the box",
    "push open the door",
    "lift the crate",
    "peek to the right",
    "bust out a somersault",
    "bring a blizzard",
    "get the breeze blowing",
    "open settings",
    "load my save",
    "lol that was close",
    "who made this game",
    "toggle subtitles",
    "pick up the pace, little guy",
    "restart the level",
)

# every word of the attribute tables, the sides, and the words of weather, time and negation: no
# piece of a split word is one of them
_GUARDED = (
    frozenset(
        w
        for table in (B5_COLOURS, B5_KINDS, B5_GROUND_WORDS, B5_GROUND_ADJ, B5_TIME_WORDS)
        for words in table.values()
        for phrase in words
        for w in phrase.replace("-", " ").split()
    )
    | frozenset(w for words in B5_RAIN_WORDS.values() for phrase in words for w in phrase.split())
    | {"left", "right", "rain", "sun", "day", "night", "dark", "light", "moon", "star", "dawn", "dusk"}
    | {"no", "not", "out", "less", "off", "on", "end", "stop", "marsh", "ass"}
)


def _typo(word: str, rng: random.Random) -> str:
    """This set's typo process: the space bar struck inside a word of five letters or more,
    splitting it in two ("gra ss" for "grass"): no letter is lost, added, changed or moved, each
    piece has at least two letters, and neither piece is a guarded word (an attribute word, a side,
    a word of weather, time or negation)."""
    if len(word) < 5 or not word.isalpha():
        return word
    spots = [i for i in range(2, len(word) - 1) if word[:i] not in _GUARDED and word[i:] not in _GUARDED]
    if not spots:
        return word
    i = rng.choice(spots)
    return word[:i] + " " + word[i:]


BLIND5 = Phrasing(
    B5_OBJECT,
    B5_GROUND,
    B5_TIME,
    B5_RAIN,
    B5_CARRIERS,
    B5_TAILS,
    B5_JOINERS,
    B5_FILLERS,
    B5_NOTHING,
    B5_EVENTS,
    B5_EVENT_CARRIERS,
    B5_EVENT_NONE,
    _typo,
    typo_rate=0.12,
    determiners=("a", "a", "a", "one", "the", "a single"),
    shuffle=0.35,
    say_when_silent="ground",
    colours=B5_COLOURS,
    kinds=B5_KINDS,
    ground_words=B5_GROUND_WORDS,
    ground_adj=B5_GROUND_ADJ,
    time_words=B5_TIME_WORDS,
    rain_words=B5_RAIN_WORDS,
)


def blind5(seed: int = 7411, n_prompts: int = 400, n_events: int = 200) -> list[Item]:
    """The seventh (blind) held-out set: ``n_prompts`` prompts then ``n_events`` event texts."""
    return generate_items(BLIND5, seed, n_prompts, n_events)


def template_strings() -> list[str]:
    """Every template, carrier, joiner, filler and phrase (the disjointness test reads them)."""
    return BLIND5.strings()
