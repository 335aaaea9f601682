"""The text model's TRAINING data: free-text paraphrases of world specs and events, with the answers
the model must write (``worldserve.text.spec``: ``lm_prompt`` in, ``answer_json`` out).

``sample(rng)`` draws one (lm_prompt, answer_json) pair: ~70% scene prompts, ~30% event texts.

Prompts describe a random ``WorldSpec`` (0, 1 or 2 objects, ground / time / rain each mentioned or
not: an unmentioned field is null in the answer, ``prompt_answer``) in many phrasings: synonyms a
reader would accept (navy -> blue, crate -> box, dunes -> sand, after dark -> night, drizzle ->
rain; negations "no rain", "dry", "clear skies" -> rain false), any clause order, colloquial
carriers ("gimme", "put a ..."), filler words, made-up words and real English words that say
nothing (``text_words``; the model learns to skip what it has no use for), typos (swapped, dropped, doubled or replaced letters, vocabulary words included),
punctuation noise. ~5% of prompts name nothing (the all-null answer).

Events: paraphrases of each declared event (``common.caption.EVENTS``) with fillers and typos;
~10% unrelated texts answer ``{"event":null}``.

v15 on: ``SOURCE_SHARE`` (40%) of the pairs are drawn from independently written phrasing
sources (``text_sources``: one writer and persona each, blind to this module and to every held-out
set), with this module's noise on top; their words are read as they are (``known_words``). v21
changes only the sources: 26 writers instead of 19 (``text_sources.NAMES``), and with them the
filler words (``text_words``) and aliases (``text_aliases``) rebuilt for their words. v22 adds
everyday time words (``TIME_EVERYDAY``: meals, bed, "tonite", "crack of dawn") as a share of the time
phrases, rain said as past ("the rain has ended") as no rain, sides in more words than their own
(``SIDE_WORDS``: "leftmost", "right-hand") and a few more synonyms (fuchsia, trunk, prairie). v23 adds
everyday phrasal verbs of starting and stopping to the event texts (``EVENT_PHRASAL``: "kick off the
rain" starts it, "shut the rain down" stops it, "end the night" is day breaking).

The held-out set (``text_heldout``) is written separately with its own templates and carrier words.
"""

from __future__ import annotations

import functools
import json
import random
import re
import string
from collections.abc import Callable, Iterator
from typing import Any

from worldserve.common import caption as grammar
from worldserve.text.spec import Vocabulary, answer_json, lm_prompt, prompt_answer, read_words

from . import text_aliases, text_sources, text_words
from .text_sources.base import source_event, source_prompt

# --------------------------------------------------------------------------------------------------
# Attribute words (canonical word first)

COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "scarlet", "crimson", "cherry red", "ruby"),
    "blue": ("blue", "navy", "azure", "cobalt", "navy blue", "sky blue"),
    "yellow": ("yellow", "golden", "gold", "lemon", "mustard"),
    "purple": ("purple", "violet", "lilac", "lavender", "plum"),
    "pink": ("pink", "rose", "rosy", "hot pink", "bubblegum pink", "fuchsia"),  # v22: fuchsia
    "cyan": ("cyan", "teal", "turquoise", "aqua", "aquamarine"),
}
KIND_WORDS: dict[str, tuple[str, ...]] = {
    "door": ("door", "doorway", "entrance", "portal", "exit door"),
    "box": ("box", "crate", "chest", "cube", "carton", "trunk", "parcel"),  # v22: trunk, parcel
}
SIDE_WORDS: dict[str, tuple[str, ...]] = {
    "left": ("left", "leftmost", "left-hand", "lefthand", "far left", "left hand"),
    "right": ("right", "rightmost", "right-hand", "righthand", "far right", "right hand"),
}
"""v22: a side said in more than its own word (the word itself half the time): "the leftmost door"."""
GROUND_NOUNS: dict[str, tuple[str, ...]] = {
    "grass": ("grass", "lawn", "meadow", "grassland", "green grass", "turf", "prairie"),  # v22: prairie
    "sand": ("sand", "beach", "desert", "dunes", "sand dunes"),
    "snow": ("snow", "snowfield", "fresh snow", "deep snow", "snowdrifts", "snowbank"),  # v22: snowbank
}
GROUND_ADJS: dict[str, tuple[str, ...]] = {
    "grass": ("grassy", "grass-covered", "green grassy"),
    "sand": ("sandy", "desert", "beach"),
    "snow": ("snowy", "snow-covered", "snowbound"),
}
TIME_PHRASES: dict[str, tuple[str, ...]] = {
    "night": (
        "night",
        "at night",
        "nighttime",
        "night time",
        "after dark",
        "at midnight",
        "in the dark",
        "under the stars",
        "by moonlight",
        "in the night",
        "during the night",
        "dark sky",
        # v11: evening and its edges, the dark, the moon and stars, the small hours, clock times
        "in the evening",
        "evening",
        "at dusk",
        "twilight",
        "at sunset",
        "after sunset",
        "after nightfall",
        "the sun has set",
        "the sun is down",
        "the moon is out",
        "the stars are out",
        "under a full moon",
        "by the light of the moon",
        "starry sky",
        "starlit",
        "tonight",
        "late at night",
        "overnight",
        "nocturnal",
        "when it's dark",
        "it is dark outside",
        "in the small hours",
        "in the wee hours",
        "at 11 pm",
        "at 10pm",
        "at 2 am",
        "at 3am",
    ),
    "day": (
        "day",
        "daytime",
        "during the day",
        "in daylight",
        "at noon",
        "in the morning",
        "sunny",
        "in broad daylight",
        "by day",
        "in the afternoon",
        "bright day",
        "midday",
        # v11: dawn and the morning, the sun out, lunchtime, clock times
        "at dawn",
        "dawn",
        "at sunrise",
        "sunrise",
        "early morning",
        "the sun is out",
        "the sun is up",
        "sunshine",
        "in the sunshine",
        "sunlit",
        "lunchtime",
        "at lunchtime",
        "high noon",
        "in the light of day",
        "daylight hours",
        "during daylight",
        "at 2 pm",
        "at 10am",
        "at 9 am",
        "at 3pm",
    ),
}
# v22 (issue 25): everyday time words a player types, many of them around meals and bed, which
# neither the writers nor WordNet's synonyms supplied ("after dinner", "at brunch", "tonite"): a
# held-out set's audit found time of day its largest miss, from words never seen or seen once.
TIME_EVERYDAY: dict[str, tuple[str, ...]] = {
    "night": (
        "at dinnertime",
        "dinnertime",
        "dinner time",
        "at dinner time",
        "around dinnertime",
        "after dinner",
        "at dinner",
        "over dinner",
        "at suppertime",
        "suppertime",
        "supper time",
        "after supper",
        "at supper",
        "at bedtime",
        "bedtime",
        "before bed",
        "just before bed",
        "bed time",
        "tonite",
        "at nite",
        "nite time",
        "late tonight",
        "by starlight",
        "in the starlight",
        "starlight",
        "on a moonless night",
        "moonless",
        "in the gloaming",
        "at eventide",
        "at sundown",
        "sundown",
        "after sundown",
        "at nightfall",
        "nightfall",
        "at moonrise",
        "after the sun goes down",
        "once the sun sets",
        "when the sun goes down",
        "evening time",
        "evenings",
        "late evening",
        "this evening",
        "in the dead of night",
        "at the witching hour",
        "past midnight",
        "after midnight",
        "at 9 pm",
        "at 8pm",
        "at 11 at night",
        "at 9 in the evening",
        "at half past ten at night",
    ),
    "day": (
        "at breakfast",
        "breakfast time",
        "at breakfast time",
        "over breakfast",
        "after breakfast",
        "at brunch",
        "brunch",
        "brunch time",
        "over brunch",
        "at lunch",
        "lunch time",
        "over lunch",
        "after lunch",
        "before lunch",
        "around lunch",
        "at noontime",
        "noontime",
        "noonday",
        "in the forenoon",
        "at sunup",
        "sunup",
        "at daybreak",
        "daybreak",
        "at first light",
        "first light",
        "at the crack of dawn",
        "crack of dawn",
        "in the sunlight",
        "sunlight",
        "daylit",
        "in the morn",
        "mid-morning",
        "mid-afternoon",
        "late morning",
        "this morning",
        "this afternoon",
        "mornings",
        "afternoons",
        "good morning",
        "rise and shine",
        "on a bright morning",
        "the sun is shining",
        "while the sun shines",
        "the sun's out",
        "sun's up",
        "under the sun",
        "at 7 am",
        "at 11 in the morning",
        "at 4 in the afternoon",
        "at half past nine in the morning",
    ),
}
EVERYDAY_TIME_SHARE = 0.3
"""v22: of the time phrases, this share is one of ``TIME_EVERYDAY`` (each then in ~1 of 2,000-3,000 pairs)."""
TIME_NOUNS: dict[str, tuple[str, ...]] = {
    "night": ("night", "midnight", "nighttime", "moonlit night", "evening", "dusk", "twilight", "starry night"),
    "day": ("day", "morning", "afternoon", "noon", "sunny day", "daytime", "midday", "sunrise"),
}
RAIN_PHRASES: dict[bool, tuple[str, ...]] = {
    True: (
        "rain",
        "rainy",
        "raining",
        "in the rain",
        "stormy",
        "drizzle",
        "a downpour",
        "wet weather",
        "it's pouring",
        "rain falling",
        "showers",
        "while it rains",
        "with rain",
        "rainfall",
        "heavy rain",
        "it is raining",
        "stormy skies",
        "rainy skies",
        "wet skies",
    ),
    False: (
        "no rain",
        "dry",
        "not raining",
        "without rain",
        "clear skies",
        "it's not raining",
        "rain-free",
        "dry weather",
        "no rain at all",
        "it is not raining",
        "no showers",
    ),
}
RAIN_ADJS: dict[bool, tuple[str, ...]] = {True: ("rainy", "stormy", "wet", "drizzly"), False: ("dry", "clear")}

# v20 (issue 25): the scope of a negation. Until v19 every negation word of a training prompt
# negated the rain ("no rain", "it's not raining"), and the model read a negation anywhere as no
# rain: "... not to mention rainy weather", "no doubt it rains", "nothing but rain" were read as no
# rain and "no rush, make it rain" as the rain stopping. These tables put a negation where it
# negates something else, and say no rain with the negation after the rain word.
DECOY_NEGATIONS = (
    "no hurry",
    "no pressure",
    "no worries",
    "no problem",
    "no doubt",
    "no joke",
    "no kidding",
    "no question",
    "no biggie",
    "no stress",
    "no offence",
    "no exceptions",
    "no strings attached",
    "no need to hurry",
    "not gonna lie",
    "not sure why",
    "not least",
    "not only that",
    "not that it matters",
    "not kidding",
    "never mind",
    "never mind that",
    "don't hesitate",
    "don't be shy",
    "don't worry",
    "don't rush",
    "don't overthink it",
    "can't wait",
    "i can't wait",
    "can't lie",
    "won't lie",
    "i won't complain",
    "nothing else",
    "nothing more",
    "nobody asked but",
    "without delay",
    "without fail",
    "without question",
    "isn't it fun",
    "wouldn't that be cool",
    "why not",
    "if it's not too much trouble",
    "if that's not a problem",
    "no need to ask twice",
    "it's no big deal",
    "i don't mind",
    "don't ask why",
)
"""Idioms that carry a negation word and negate nothing of the world."""
DECOY_FRAMES = ("no {w}", "not {w}", "never {w}", "don't {w}", "without {w}", "nothing {w}", "not so {w}", "no {w} {y}")
"""A negation word before words to skip (``junk_word``): it negates them, not the rain."""
EVENT_DECOY_FRAMES = (
    "{d}: {e}",
    "{d} - {e}",
    "{e} - {d}",
    "{d}. {e}",
    "{e}. {d}",
)
"""Where a decoy negation sits in an event text."""
DECOY_GAPS = (" {n} ", ", {n}, ", " - {n} - ", ". {n}, ", " and {n}, ", "; {n}: ", " ({n}) ", ", {n} - ", " {n}, ")
"""Where a decoy negation sits between two clauses."""
RAIN_NOUNS_SCOPED = ("rain", "rain", "showers", "drizzle", "downpour", "rainfall", "storm", "storms", "rainstorm")
RAIN_SCOPED: dict[bool, tuple[str, ...]] = {
    True: (
        "the rain never stops",
        "rain that never stops",
        "rain that won't stop",
        "rain that doesn't stop",
        "rain that won't let up",
        "the rain doesn't let up",
        "the rain can't stop",
        "the rain won't end",
        "rain with no end in sight",
        "no end to the rain",
        "no break in the rain",
        "no let-up in the rain",
        "no shortage of rain",
        "no lack of rain",
        "nothing but rain",
        "never without rain",
        "not without rain",
        "no escaping the rain",
        "there's no stopping the rain",
        "don't stop the rain",
        "don't forget the rain",
        "never-ending rain",
        "non-stop rain",
        "endless rain",
        "rain and no sign of it stopping",
        "rain and nothing else",
        "no doubt about the rain",
    ),
    False: (
        "rain? not today",
        "rain? no",
        "rain: none",
        "rain: no",
        "rain: off",
        "rain is not happening",
        "rain not wanted",
        "rain not needed",
        "rain not included",
        "rain stays away",
        "rain turned off",
        "rain is switched off",
        "rain never comes",
        "rain won't come",
        "the rain doesn't come",
        "the rain is over",
        # v22: the rain said as past ("a meadow after the rain"): no rain now
        "the rain stopped",
        "the rain has ended",
        "the rain has cleared",
        "the rain is gone",
        "the rain has passed",
        "the rain has let up",
        "after the rain",
        "not a drop of rain",
        "zero rain",
        "no chance of rain",
        "no sign of rain",
        "no rain in sight",
        "no rain whatsoever",
        "without any rain",
        "never any rain",
        "there won't be any rain",
        "don't want rain",
        "don't add rain",
        "skip the rain",
        "hold the rain",
        "forget the rain",
        "free of rain",
        "keep the rain away",
        "minus the rain",
        "leave out the rain",
    ),
}
"""Rain said with a negation of its stopping, and no rain with the negation after the rain word:
each is read by where its negation points; its word "rain" is said in any of ``RAIN_NOUNS_SCOPED``."""
RAIN_SCOPED_FIXED: dict[bool, tuple[str, ...]] = {
    True: (
        "it never stops raining",
        "it won't stop raining",
        "it doesn't stop raining",
        "it hasn't stopped raining",
        "it can't stop raining",
        "no doubt it rains",
        "not a dry spot anywhere",
        "nowhere dry",
        "never dry",
        "anything but dry",
        "far from dry",
        "no dry weather",
        "not dry",
        "not dry at all",
        "no dry spells",
    ),
    False: (
        "don't make it rain",
        "it won't rain",
        "it never rains",
        "it doesn't rain",
        "it isn't raining",
        "it hasn't rained",
        "not wet",
        "not wet at all",
        "not rainy",
        "not stormy",
        "nothing wet",
    ),
}
"""The same in verbs and adjectives (the rain word as it is)."""

SIDE_AFTER = (
    "on the {s}",
    "to the {s}",
    "to my {s}",
    "on my {s}",
    "on the {s}-hand side",
    "on the {s} side",
    "at the {s}",
    "on the {s} of the screen",
    "at {s}",
    "over on the {s}",
    "far {s}",
    "on the {s} edge",
    "{s}",
    "{s} side",
    "at the {s} end",
)
SIDE_BEFORE = ("on the {s}", "to the {s}", "to my {s}", "on the {s} side", "at the {s}", "{s} side:", "{s}:")

OBJECT_TEMPLATES = (
    "{d} {c} {k} {sa}",
    "{d} {c} {k} {sa}",
    "{d} {c} {k} {sa}",
    "{sb} {d} {c} {k}",
    "{sb} there is {d} {c} {k}",
    "{sb} there's {d} {c} {k}",
    "{d} {k} {sa} that is {c}",
    "{d} {k} {sa}, {c}",
    "{d} {c}-coloured {k} {sa}",
    "{d} {c} colored {k} {sa}",
    "{d} {k} painted {c} {sa}",
    "{d} {c} {k} placed {sa}",
    "{d} {c} {k} sitting {sa}",
    "{d} {c} {k} standing {sa}",
    "{d} {s}most {k} in {c}",
    "{d} {c} {k} {sa} of me",
    "{d} {k} coloured {c} {sa}",
)
DETERMINERS = ("a", "a", "a", "an", "one", "the", "some", "", "1")

CARRIERS = (
    "",
    "",
    "",
    "i want",
    "i want a world with",
    "gimme",
    "give me",
    "put",
    "show me",
    "make",
    "create",
    "generate",
    "build me a level with",
    "can you make",
    "please make",
    "let's have",
    "draw",
    "i'd like",
    "i would like",
    "make me a scene with",
    "a world with",
    "a level with",
    "a scene with",
    "how about",
    "i need",
    "spawn",
    "render",
    "set up",
    "there should be",
    "add",
    "place",
    "let me see",
    "start a game with",
    "imagine",
    "it's a world with",
    "it is a level with",
    "it's",
    "it is",
)
SUFFIXES = (
    "",
    "",
    "",
    "",
    "please",
    "it's fine",
    "it is ok",
    "thanks",
    "thank you",
    "ok",
    "now",
    "pls",
    "if you can",
    "for me",
    "asap",
)
FILLERS = (
    "um",
    "uh",
    "like",
    "maybe",
    "really",
    "okay",
    "so",
    "just",
    "hmm",
    "well",
    "actually",
    "basically",
    "also",
    "kinda",
    "very",
    "nice",
    "cool",
    "big",
    "small",
    "little",
    "tiny",
    "huge",
    "old",
    "new",
    "wooden",
    "shiny",
    "pretty",
    "simple",
)
JOINERS: tuple[str, ...] = (
    ", ",
    ", ",
    " and ",
    ", and ",
    " with ",
    ". ",
    "; ",
    " plus ",
    " & ",
    " also ",
    " + ",
    " ",
    " then ",
    " as well as ",
)
JOINERS += (" along with ", " including ", " - ", " | ", " but also ", " oh and ", ", {x} ", " {x} ")
NOTHING = (
    "hello there",
    "what is this",
    "tell me a story about dragons",
    "how are you today",
    "i like turtles",
    "the quick fox jumps over the lazy dog",
    "what's the weather like in paris",
    "asdf",
    "can you help me with my homework",
    "play some music",
    "who won the game yesterday",
    "a cat sleeping on a sofa",
    "make me a sandwich",
    "nothing special",
    "surprise me with something",
    "random stuff",
    "write a poem",
    "spaceship in orbit",
    "a tall tree and a mountain",
    "lol",
    "test",
    "ok go",
    "a dog chasing a ball",
    "a castle with a moat",
    "i don't know",
    "just something fun",
    "an empty room",
    "a happy frog",
    "the number forty two",
    "qwerty uiop",
)

EVENT_TEXTS: dict[str, tuple[str, ...]] = {
    "it starts to rain": (
        "make it rain",
        "let it rain",
        "let it pour",
        "start raining",
        "start the rain",
        "rain please",
        "bring the rain",
        "it begins to rain",
        "turn on the rain",
        "cue the rain",
        "summon a storm",
        "i want rain",
        "now it rains",
        "rain starts",
        "here comes the rain",
        "add rain",
        "start a storm",
        "begin a downpour",
        "make it pour",
        "it starts to rain",
        "rain",
        "raining",
        "switch the rain on",
        "make it drizzle",
        "start the storm",
        "let the rain fall",
        "rainy weather now",
        "it starts raining",
        "storm incoming",
        "get wet",
    ),
    "the rain stops": (
        "stop the rain",
        "make it dry",
        "no more rain",
        "end the rain",
        "turn off the rain",
        "the rain ends",
        "stop raining",
        "rain stop",
        "clear the skies",
        "dry up",
        "let the rain stop",
        "enough rain",
        "cancel the rain",
        "kill the rain",
        "halt the rain",
        "the storm is over",
        "the rain stops",
        "switch the rain off",
        "no rain",
        "dry weather now",
        "end the storm",
        "rain off",
        "make the rain go away",
        "it stops raining",
        "skies clear up",
    ),
    "night falls": (
        "turn night on",
        "it gets dark",
        "lights out",
        "make it night",
        "night time",
        "switch to night",
        "bring the night",
        "darkness falls",
        "sunset",
        "the sun goes down",
        "go dark",
        "nightfall",
        "dusk",
        "turn off the sun",
        "make it dark",
        "night falls",
        "night",
        "set the sun",
        "night mode",
        "let night come",
        "it becomes night",
        "time for night",
        "make it nighttime",
        "dim the sky",
        "sun down",
    ),
    "day breaks": (
        "sunrise",
        "make it day",
        "morning comes",
        "bring the day",
        "switch to day",
        "the sun comes up",
        "dawn",
        "turn on the sun",
        "daybreak",
        "make it bright",
        "wake up the sun",
        "daylight",
        "lights on",
        "it gets light",
        "day breaks",
        "day",
        "day mode",
        "let day come",
        "it becomes day",
        "make it daytime",
        "good morning",
        "sun up",
        "raise the sun",
        "time for day",
        "morning",
    ),
}
EVENT_CARRIERS = (
    "",
    "",
    "",
    "please",
    "now",
    "ok",
    "can you",
    "i want to",
    "hey",
    "quick",
    "let's",
    "go ahead and",
    "could you",
    "suddenly",
    "and then",
    "right now",
)
EVENT_NONE = (
    "jump",
    "go left",
    "walk right",
    "hello",
    "open the door",
    "pick up the box",
    "what time is it",
    "run faster",
    "do a backflip",
    "make it snow",
    "spawn a dragon",
    "turn around",
    "nothing happens",
    "wait",
    "stop",
    "pause the game",
    "i am hungry",
    "move the crate",
    "paint it red",
    "more grass",
    "sing a song",
    "restart",
    "go faster",
    "quit",
    "quit it",  # v10: a word of stopping that names no weather is no event
    "stop it",
    "end it",
    "do it",
    "make it windy",
    "earthquake",
    "teleport home",
    "zoom in",
    "who are you",
    "xyz",
)

PROMPT_SHARE = 0.7
SOURCE_SHARE = 0.4
"""v15: the share of training pairs drawn from the independently written phrasings (``text_sources``)."""
NOTHING_SHARE = 0.05
DECOY_SHARE = 0.25
"""v20: prompts with a negation that negates nothing (``decoy_negation``); events the same."""
RAIN_SCOPED_SHARE = 0.3
"""v20: rain phrases from ``RAIN_SCOPED``."""
EVENT_NONE_SHARE = 0.15
ATTRIBUTE_TABLES: tuple[dict[str, tuple[str, ...]], ...] = (
    COLOUR_WORDS,
    KIND_WORDS,
    SIDE_WORDS,
    GROUND_NOUNS,
    GROUND_ADJS,
    TIME_PHRASES,
    TIME_NOUNS,
    TIME_EVERYDAY,
)
"""Every table of words that name a colour, a kind, a side, a ground or a time of day (the rain's
apart: its phrases carry negations and everyday words): a new table is listed here, once."""
_ATTRIBUTE_WORDS = (
    frozenset(
        w
        for group in ATTRIBUTE_TABLES
        for words in group.values()
        for phrase in words
        for w in phrase.replace("-", " ").split()
    )
    | frozenset(w for words in RAIN_PHRASES.values() for phrase in words for w in phrase.split() if len(w) > 3)
    | frozenset(grammar.SIDES)
)


def spelling_words() -> frozenset[str]:
    """The words a typo is corrected to before the model reads a text (the model folder's
    ``world.json`` lists them: ``text.spec.read_words``): every one-word attribute phrase and
    synonym, the sides, the event keywords and the words of stopping. Words of longer phrases
    ("with rain", "heavy rain") are left out: everyday words a typo of another may land on."""
    groups: tuple[dict[Any, tuple[str, ...]], ...] = (*ATTRIBUTE_TABLES, RAIN_PHRASES, RAIN_ADJS)
    one_word = {ph for g in groups for phrases in g.values() for ph in phrases if ph.isalpha()}
    one_word |= {w for words in EVENT_CORES.values() for w in words if w.isalpha()} | set(grammar.SIDES)
    one_word |= set(STOP_WORDS)
    return frozenset(w for w in one_word if len(w) >= 4)


def known_words() -> frozenset[str]:
    """Every word the training texts spell out (templates, carriers, fillers, event phrasings, the
    real words to skip): read as it is, never "corrected" ("the sun goes down" stays, though "down"
    is one letter from "dawn"). A word neither known nor correctable is an unknown word."""
    out: set[str] = set(ENGLISH_WORDS)

    def walk(v: Any) -> None:
        if isinstance(v, str):
            out.update(re.findall(r"[a-z]+", v.lower()))
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, (tuple, list, frozenset, set)):
            for x in v:
                walk(x)

    for name, v in globals().items():
        if name.isupper() and name != "ENGLISH_WORDS":
            walk(v)
    for src in text_sources.sources():  # v15: the writers' words are read as they are
        walk(src.attribute_strings())
        walk(src.other_strings())
    return frozenset(out)


@functools.cache
def reading_vocabulary() -> Vocabulary:
    """The vocabulary a model trained now reads with (written to its folder's ``world.json``):
    forms and synonyms of the words it reads read as those (``text_aliases``), typos corrected to
    ``spelling_words``, every other word neither known nor correctable read as ``UNKNOWN`` (made-up
    words in training, unseen words in use: the model learns to skip them)."""
    spelling = spelling_words()
    known = known_words() - spelling
    aliases = _aliases(spelling | known)
    real = text_aliases.load_real() - spelling - known - set(aliases)  # v20: "glass" is not "grass"
    return Vocabulary(spelling=spelling, known=known, unknown=UNKNOWN, aliases=aliases, real=real)


def _aliases(reads: frozenset[str]) -> dict[str, str]:
    """The committed aliases (``text_aliases``) of words not read as they are, to words that are."""
    return {w: t for w, t in text_aliases.load().items() if w not in reads and t in reads}


UNKNOWN = "_"


# --------------------------------------------------------------------------------------------------
# Noise


_KEYS = "qwertyuiop asdfghjkl zxcvbnm"


def _neighbour(ch: str, rng: random.Random) -> str:
    for row in _KEYS.split():
        i = row.find(ch)
        if i >= 0:
            return row[max(0, min(len(row) - 1, i + rng.choice((-1, 1))))]
    return rng.choice(string.ascii_lowercase)


def typo(word: str, rng: random.Random) -> str:
    """One typo in ``word``: two letters swapped, a letter dropped, doubled or replaced by a
    neighbour on the keyboard (words under 3 letters are left alone)."""
    if len(word) < 3 or not word.isalpha():
        return word
    i = rng.randrange(1, len(word))  # first letter kept: typos rarely hit it
    op = rng.randrange(5)
    if op == 4:  # v7: any letter for another (a misremembered vowel, a slip)
        return word[:i] + rng.choice(string.ascii_lowercase.replace(word[i], "")) + word[i + 1 :]
    if op == 0 and i < len(word) - 1:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if op == 1:
        return word[:i] + word[i + 1 :]
    if op == 2:
        return word[:i] + word[i] + word[i:]
    return word[:i] + _neighbour(word[i], rng) + word[i + 1 :]


@functools.cache
def _aliased() -> frozenset[str]:
    """Real words read as words the model knows (v9): never drawn as made-up ones (a function, not
    an upper-case table: ``known_words`` reads every such table as training text)."""
    return frozenset(text_aliases.load())


def made_up_word(rng: random.Random) -> str:
    """A pronounceable nonsense word that is no attribute word and that the model reads as the
    unknown-word marker (v12: before, ~4% were words it reads or typos it corrects, "lawa" -> "lawn",
    "golo" -> "gold": a ground or colour the answer did not name)."""
    vocab = reading_vocabulary()
    while True:
        w = "".join(rng.choice("bcdfghjklmnprstvwz") + rng.choice("aeiou") for _ in range(rng.randint(1, 3)))
        if w not in _ATTRIBUTE_WORDS and w not in _aliased() and read_words(w, vocab) == UNKNOWN:
            return w


ENGLISH_WORDS: tuple[str, ...] = tuple(json.loads(text_words.FILE.read_text()))
"""Real words that say nothing about a world (``text_words``)."""


def junk_word(rng: random.Random) -> str:
    """A word the model must skip: made up or real (``ENGLISH_WORDS``)."""
    return made_up_word(rng) if rng.random() < 0.5 else rng.choice(ENGLISH_WORDS)


def event_junk(rng: random.Random) -> str:
    """A word to skip in an event text: never one that could say the rain stops."""
    while (w := junk_word(rng)) in _STOPPING:
        pass
    return w


def junk_phrase(rng: random.Random, lo: int = 1, hi: int = 3) -> str:
    return " ".join(junk_word(rng) for _ in range(rng.randint(lo, hi)))


def _kept_typo(
    word: str,
    rng: random.Random,
    slip: Callable[[str, random.Random], str] | None = None,
    keep: frozenset[str] = frozenset(),
) -> str:
    """v13: a typo, except in an attribute word the reader would not correct back: "starry sky" with
    "starry" misspelt reads "_ sky", and an answer of night for it taught the model to read a time
    (or colour, ground) from unknown words. ``slip``: another typo habit; ``keep``: more attribute
    words (v15: the writers', ``text_sources``)."""
    t = (slip or typo)(word, rng)
    w = word.lower()  # v18: a capitalised attribute word ("RED") is guarded too
    if len(w) >= 4 and (w in _ATTRIBUTE_WORDS or w in keep) and read_words(t.lower(), reading_vocabulary()) != w:
        return word
    return t


def noisy(
    text: str,
    rng: random.Random,
    *,
    typo_rate: float,
    slip: Callable[[str, random.Random], str] | None = None,
    keep: frozenset[str] = frozenset(),
) -> str:
    """Typos, fillers and punctuation noise on a sentence. ``slip``, ``keep``: ``_kept_typo``'s."""
    words = text.split(" ")
    out = []
    for w in words:
        if rng.random() < 0.08:
            out.append(rng.choice(FILLERS) if rng.random() < 0.33 else junk_word(rng))
        out.append(_kept_typo(w, rng, slip, keep) if rng.random() < typo_rate else w)
    text = " ".join(w for w in out if w)
    r = rng.random()
    if r < 0.15:
        text += rng.choice(("!", ".", "?", "!!", "...", " :)", " pls"))
    elif r < 0.2:
        text = text.replace(",", "")
    if rng.random() < 0.2:
        text = text.upper() if rng.random() < 0.1 else text.capitalize()
    return text


# --------------------------------------------------------------------------------------------------
# Prompts


def random_spec(rng: random.Random) -> grammar.WorldSpec:
    n = rng.choices((0, 1, 2), weights=(0.15, 0.4, 0.45))[0]
    sides = rng.sample(grammar.SIDES, n)
    objects = tuple(grammar.ObjectSpec(rng.choice(list(grammar.COLORS)), rng.choice(grammar.KINDS), s) for s in sides)
    return grammar.WorldSpec(objects, rng.choice(list(grammar.GROUNDS)), rng.random() < 0.5, rng.random() < 0.5)


def _word(words: tuple[str, ...], rng: random.Random) -> str:
    """The canonical word half the time, else a synonym."""
    return words[0] if rng.random() < 0.5 else rng.choice(words)


COLOUR_KIND = (
    "{c} {k}",
    "{c} {k}",
    "{k} in {c}",
    "{k}, {c},",
    "{k} ({c})",
    "{c}-coloured {k}",
    "{k} that is {c}",
    "{k} which is {c}",
    "{k} colored {c}",
    "{k} - {c} -",
    "{c} {x} {k}",
)
SIDE_FORMS = (
    "on the {s}",
    "to the {s}",
    "at the {s}",
    "{s}",
    "({s})",
    "- {s}",
    "on the {s} {x}",
    "at the {s} {x}",
    "to the {s} {x}",
    "{x} {s}",
    "{x} the {s}",
    "{x} on the {s}",
    "{s} {x}",
    "by the {s}",
)
SIDE_SEPS = (" ", " ", ", ", ": ", " - ", " ")


SIDE_LEADS = ("on the", "to the", "at the", "on my", "to my", "by the", "the", "", "", "{x}", "{x} the", "{x} {y} the")
"""Words before a side word in the free-order form ({x}, {y}: words to skip)."""
CARRIER_MARKS = (", ", ": ", "! ", "... ", " - ", "; ")
GAP_MARKS = ("", "", "", ", ", ": ", " - ", " (", "; ")


def _free_object_phrase(c: str, k: str, side: str, rng: random.Random) -> str:
    """v7: determiner, colour, kind and side in any order, with words to skip (0-2) and
    punctuation in any gap: which side an object is on is read from the side word nearest its own
    words, whatever the words around it (issue 25: held-out templates put sides where the training
    templates never did)."""
    lead = rng.choice(SIDE_LEADS).format(x=junk_word(rng), y=junk_word(rng))
    side_part = " ".join(w for w in (lead, side, rng.choice(("", "", "", "side", junk_word(rng)))) if w)
    ck = [c, k] if rng.random() < 0.75 else [k, c]
    det = rng.choice(DETERMINERS)
    order = rng.choice(("s-ck", "ck-s", "ck-s", "c-s-k"))
    if order == "s-ck":
        parts = [side_part, det, *ck]
    elif order == "ck-s":
        parts = [det, *ck, side_part]
    else:
        parts = [det, ck[0], side_part, ck[1]]
    out: list[str] = []
    for i, part in enumerate(x for x in parts if x):
        if i and rng.random() < 0.35:
            out[-1] += rng.choice(GAP_MARKS).rstrip()
            out.append(junk_phrase(rng, 1, 2))
        out.append(part)
    return " ".join(out).replace(" (", "(").replace("(", " (").strip()


SHADES = ("dark", "light", "bright", "deep", "pale")


def object_phrase(o: grammar.ObjectSpec, rng: random.Random) -> str:
    """A phrase for one object: a template, colour + kind and a side in either order with the
    side's words partly made up (the model learns that the side word decides), or (v7) every part
    in any order among words to skip."""
    c, k = _word(COLOUR_WORDS[o.color], rng), _word(KIND_WORDS[o.kind], rng)
    s = _word(SIDE_WORDS[o.side], rng)
    if rng.random() < 0.12:  # v14: a shade says nothing of the time of day ("dark blue", "bright red")
        c = f"{rng.choice(SHADES)} {c}"
    r = rng.random()
    if r < 0.3:
        return _free_object_phrase(c, k, s, rng)
    if r < 0.6:
        t = rng.choice(OBJECT_TEMPLATES)
        return t.format(
            d=rng.choice(DETERMINERS),
            c=c,
            k=k,
            s=s,
            sa=rng.choice(SIDE_AFTER).format(s=s),
            sb=rng.choice(SIDE_BEFORE).format(s=s),
        ).strip()
    x = junk_word(rng) if rng.random() < 0.7 else rng.choice(FILLERS)
    ck = " ".join(w for w in (rng.choice(DETERMINERS), rng.choice(COLOUR_KIND).format(c=c, k=k, x=x)) if w)
    side = rng.choice(SIDE_FORMS).format(s=s, x=junk_word(rng))
    parts = [ck.rstrip(",- "), side] if rng.random() < 0.6 else [side, ck]
    return rng.choice(SIDE_SEPS).join(parts).strip()


GROUND_TEMPLATES = (
    "{n}",
    "{n}",
    "on {n}",
    "on the {n}",
    "{a} ground",
    "{a}",
    "{a} level",
    "{a} world",
    "in the {n}",
    "{n} everywhere",
    "{n} on the ground",
    "ground of {n}",
    "the ground is {a}",
    "covered in {n}",
    "set in a {a} place",
    "over {n}",
)


TIME_TEMPLATES = (
    "{n}",
    "at {n}",
    "in the {n}",
    "during the {n}",
    "the time is {n}",
    "time of day: {n}",
    "{n} time of day",
    "it is {n}",
    "it's {n}",
    "make it {n}",
    "set at {n}",
    "{n} setting",
    "{n} scene",
    "{n} time",
    "a {n} sky",
    "{n} lighting",
    "the hour is {n}",
    "{n} hours",
    "when it's {n}",
    "it should be {n}",
)
"""v11: frames around a time noun ("time of day: night": the time word decides, not "day" in the frame)."""
JUNK_FRAMES = ("{x} {p}", "{p} {x}", "{x} {y} {p}", "{p} {x} {y}", "{x}: {p}", "{x} {p} {y}", "{p}, {x}")
"""v11: an attribute phrase among words to skip (held-out sets frame each field their own way)."""


def _framed(phrase: str, rng: random.Random) -> str:
    return rng.choice(JUNK_FRAMES).format(p=phrase, x=junk_word(rng), y=junk_word(rng))


def _ground_phrase(g: str, rng: random.Random) -> str:
    t = rng.choice(GROUND_TEMPLATES)
    out = t.format(n=_word(GROUND_NOUNS[g], rng), a=_word(GROUND_ADJS[g], rng))
    return _framed(out, rng) if rng.random() < 0.15 else out


def _time_phrase(time: str, rng: random.Random) -> str:
    """v11: a time phrase, a time noun in a frame, or either among words to skip; v22: an everyday
    time phrase (``TIME_EVERYDAY``) for ``EVERYDAY_TIME_SHARE`` of them."""
    r = rng.random()
    if r < EVERYDAY_TIME_SHARE:
        out = rng.choice(TIME_EVERYDAY[time])
    elif r < 0.65:
        out = _word(TIME_PHRASES[time], rng)
    else:
        out = rng.choice(TIME_TEMPLATES).format(n=_word(TIME_NOUNS[time], rng))
    return _framed(out, rng) if rng.random() < 0.2 else out


def decoy_negation(rng: random.Random) -> str:
    """v20: a negation that negates nothing of the world: an idiom, or a negation word before words
    to skip."""
    if rng.random() < 0.6:
        return rng.choice(DECOY_NEGATIONS)
    return rng.choice(DECOY_FRAMES).format(w=junk_word(rng), y=junk_word(rng))


def time_decoy(rng: random.Random) -> str:
    """v12: a time frame around a word to skip ("time of day: <made-up>", "a <word> sky"): it names no
    time, so the frame's own words ("time", "sky", "hours", "it's") never say night or day by
    themselves (v11's frames alone taught the model to read a time from them)."""
    return rng.choice(TIME_TEMPLATES[1:]).format(n=junk_word(rng))


def _rain_phrase(rain: bool, rng: random.Random) -> str:
    if rng.random() < RAIN_SCOPED_SHARE:  # v20
        if rng.random() < 0.6:
            out = re.sub(r"\brain\b", rng.choice(RAIN_NOUNS_SCOPED), rng.choice(RAIN_SCOPED[rain]))
        else:
            out = rng.choice(RAIN_SCOPED_FIXED[rain])
    else:
        out = rng.choice(RAIN_PHRASES[rain])
    return _framed(out, rng) if rng.random() < 0.15 else out


def prompt_text(
    spec: grammar.WorldSpec | None, rng: random.Random
) -> tuple[str, bool, bool, bool, tuple[grammar.ObjectSpec, ...]]:
    """A free-text prompt for ``spec``, which of ground / time / rain it mentions, and its objects
    in the order the text names them (the answer lists them so: a left-to-right reader copies)."""
    if spec is None:
        return rng.choice(NOTHING), False, False, False, ()
    time = "night" if spec.night else "day"
    say_ground, say_time, say_rain = (rng.random() < 0.55 for _ in range(3))
    if not spec.objects and not (say_ground or say_time or say_rain):
        which = rng.randrange(3)
        say_ground, say_time, say_rain = which == 0, which == 1, which == 2
    objects = list(spec.objects)
    if rng.random() < 0.5:
        rng.shuffle(objects)
    parts = [object_phrase(o, rng) for o in objects]
    tags: dict[str, grammar.ObjectSpec] = {}
    for o, ph in zip(objects, parts, strict=True):
        tags[ph] = o
    attrs: list[str] = []
    rain_clause = ""
    # combined forms: "a snowy night", "a rainy day", "a stormy snowy night"
    if say_time and (say_ground or say_rain) and rng.random() < 0.45:
        adjs = []
        if say_ground:
            adjs.append(_word(GROUND_ADJS[spec.ground], rng))
        if say_rain:
            adjs.append(rng.choice(RAIN_ADJS[spec.rain]))
        rng.shuffle(adjs)
        attrs.append(rng.choice(("a ", "", "on a ", "during a ")) + " ".join(adjs) + " " + _word(TIME_NOUNS[time], rng))
    else:
        if say_ground:
            attrs.append(_ground_phrase(spec.ground, rng))
        if say_time:
            attrs.append(_time_phrase(time, rng))
        if say_rain:
            rain_clause = _rain_phrase(spec.rain, rng)
            attrs.append(rain_clause)
    if not say_time and rng.random() < 0.3:
        attrs.append(time_decoy(rng))
    rng.shuffle(attrs)
    if rng.random() < 0.6:
        clauses = parts + attrs
    elif rng.random() < 0.5:
        clauses = attrs + parts
    else:
        clauses = parts + attrs
        rng.shuffle(clauses)
    named = tuple(tags[c] for c in clauses if c in tags)
    if len(named) != len(spec.objects):  # two identical phrases: keep the spec's order
        named = spec.objects
    gaps = [rng.choice(JOINERS).format(x=junk_word(rng)) for _ in clauses[1:]]
    decoy = rng.random() < DECOY_SHARE
    if decoy and gaps:  # v20: a negation between clauses, most often right before the rain
        i = clauses.index(rain_clause) - 1 if rain_clause in clauses[1:] and rng.random() < 0.6 else -1
        gaps[i if i >= 0 else rng.randrange(len(gaps))] = rng.choice(DECOY_GAPS).format(n=decoy_negation(rng))
    text = clauses[0] + "".join(g + c for g, c in zip(gaps, clauses[1:], strict=True))
    carrier = rng.choice(CARRIERS) if rng.random() < 0.7 else junk_phrase(rng, 1, 4)
    if decoy and not gaps or rng.random() < 0.05:  # v20: "no pressure, but i want ..."
        carrier = decoy_negation(rng) + rng.choice((", ", ": ", " - ", ", but ", ". ")) + carrier
    if carrier and rng.random() < 0.25:  # v8: "alright, ...", "so: ..." (a carrier's punctuation says nothing)
        carrier += rng.choice(CARRIER_MARKS).rstrip()
    suffix = rng.choice(SUFFIXES) if rng.random() < 0.85 else junk_phrase(rng, 1, 2)
    if rng.random() < 0.05:  # v20: "..., no rush"
        text, suffix = text + rng.choice((",", " -", ".", "")), decoy_negation(rng)
    text = " ".join(x for x in (carrier, text, suffix) if x)
    return text, say_ground, say_time, say_rain, named


def prompt_example(rng: random.Random) -> tuple[str, dict[str, Any]]:
    """(free text, answer dict) for one scene prompt."""
    spec = None if rng.random() < NOTHING_SHARE else random_spec(rng)
    text, g, t, r, named = prompt_text(spec, rng)
    if spec is None and rng.random() < 0.3:
        text = " ".join(made_up_word(rng) if rng.random() < 0.4 else w for w in text.split())
    elif spec is None and rng.random() < 0.6:
        text = junk_phrase(rng, 1, 8)
    text = noisy(text, rng, typo_rate=0.08 if rng.random() < 0.4 else 0.0)
    answer = prompt_answer(spec, ground=g, time=t, rain=r)
    answer["objects"] = [{"colour": o.color, "kind": o.kind, "side": o.side} for o in named]
    return text, answer


EVENT_CORES: dict[str, tuple[str, ...]] = {
    "it starts to rain": ("rain", "raining", "storm", "downpour", "drizzle", "showers", "rainfall", "rainy weather"),
    "the rain stops": ("rain", "raining", "storm", "downpour", "drizzle", "showers", "rainfall"),
    "night falls": ("night", "nighttime", "dark", "darkness", "moon", "midnight", "nightfall"),
    "day breaks": ("day", "daytime", "daylight", "morning", "sun", "sunrise", "dawn", "light"),
}
"""Keywords of each event: the compositional texts put them among made-up words."""
EVENT_FRAMES: dict[str, tuple[str, ...]] = {
    "it starts to rain": ("{w}", "{x} {w}", "{w} {x}", "{x} {w} {y}", "{w} now", "start {w}", "{x} some {w}"),
    "the rain stops": (
        "stop {w}",
        "{w} stop",
        "{x} stop the {w}",
        "end the {w} {x}",
        "{w} off",
        "no more {w}",
        "{w} {x} over",
        "{x} no {w}",
        "enough {w} {x}",
        "cancel {w}",
        "{w} is over",
        "halt {w}",
        "{w} ends",
        # a verb of leaving or ending after the weather word (issue 25, v6)
        "{w} go away",
        "{w}, go away",
        "{w} away",
        "{w} {x} away",
        "{w} is gone",
        "{w} gone",
        "{w} be done",
        "{w} done",
        "{w} vanish",
        "{w} disappears",
        "{w} leave",
        "{w} ceases",
        "finish the {w}",
        "get rid of the {w}",
        "{w} quits",
        "{w} clears",
        "{w} {x} stops",
    ),
    "night falls": ("{w}", "{x} {w}", "{w} {x}", "{x} {w} {y}", "make it {w}", "{x} to {w}", "{w} now"),
    "day breaks": ("{w}", "{x} {w}", "{w} {x}", "{x} {w} {y}", "make it {w}", "{x} to {w}", "{w} now"),
}
# v7: the rain stops only where a word of stopping says so; the weather word among any other words
# (verbs, modals, pronouns never seen) starts it
EVENT_FRAMES["it starts to rain"] += (
    "{w}, {x}",  # v9: punctuation says nothing
    "{x}, {w} {y}",
    "{w}: {x}",
    "{w} is {x}",
    "{w} {x} {y}",
    "{x} {y} {w}",
    "{w} for {x}",
    "the {w} {x} begin",
    "{x} it {x} {w}",
    "let {w} {x}",
)
# v23 (issue 25): everyday phrasal verbs of starting and stopping. Until v22 a word of stopping
# anywhere said the rain stops and the weather word among any other words started it, so "kick off
# the rain" (off) stopped it and "shut the rain down" started it; night ended was never day breaking.
_RAIN_SUBJECTS = ("rain", "showers", "downpour", "drizzle", "rainstorm", "storm", "rainfall")
PHRASAL_CORES: dict[str, tuple[str, ...]] = {
    "it starts to rain": _RAIN_SUBJECTS,
    "the rain stops": _RAIN_SUBJECTS,
    "night falls": ("night", "dusk", "evening", "darkness", "nightfall", "twilight", "the dark"),
    "day breaks": ("day", "dawn", "morning", "daylight", "sunrise", "daytime", "sunshine"),
}
"""The subject words of the phrasal frames, each event's own."""
EVENT_PHRASAL: dict[str, tuple[str, ...]] = {
    "it starts to rain": (
        "kick off the {w}",
        "kick the {w} off",
        "set the {w} going",
        "get the {w} going",
        "get the {w} started",
        "fire up the {w}",
        "crank up the {w}",
        "let loose the {w}",
        "unleash the {w}",
        "set off the {w}",
        "start off the {w}",
        "switch on the {w}",
        "bring on the {w}",
        "the {w} rolls in",
        "the {w} has arrived",
        "the {w} sets in",
        "the {w} is coming down",
        "the {w} kicks in",
        "the {w} picks up",
        "let the {w} come pouring down",
        "the {w} is starting",
        "commence the {w}",
        "the {w} any second now",
        "send in the {w}",
        "call in the {w}",
        "throw some {w} at us",
        "the {w} has begun",
        "the {w} won't stop coming",
    ),
    "the rain stops": (
        "shut the {w} down",
        "shut down the {w}",
        "shut off the {w}",
        "the {w} dies down",
        "let the {w} die down",
        "the {w} lets up",
        "the {w} eases off",
        "wind down the {w}",
        "wind the {w} down",
        "calm the {w} down",
        "bring the {w} to a stop",
        "bring the {w} to a halt",
        "bring the {w} to a close",
        "bring the {w} to an end",
        "put a stop to the {w}",
        "call off the {w}",
        "cut the {w}",
        "knock off the {w}",
        "dial back the {w}",
        "the {w} peters out",
        "the {w} is letting up",
        "the {w} has passed",
        "hold off the {w}",
        "pack up the {w}",
        "the {w} blows over",
        "wrap up the {w}",
        "the {w} is finished",
        "that's it for the {w}",
    ),
    "night falls": (
        "the {w} is falling",
        "the {w} is setting in",
        "the {w} sets in",
        "the {w} has fallen",
        "the {w} creeps in",
        "let the {w} take over",
        "bring on the {w}",
        "the {w} rolls in",
        "here comes the {w}",
        "the {w} is coming",
        "fast forward to the {w}",
        "skip ahead to the {w}",
        "set the clock to {w}",
        "the sun has set",
        "the sun is sinking",
        "send the sun away",
        "put the sun to bed",
        "end the day",
        "the day is over",
        "the day ends",
        "wrap up the day",
        "the daylight fades",
        "switch the daylight off",
        "the light is fading",
        "stop the daylight",
        "no more daylight",
    ),
    "day breaks": (
        "the {w} is breaking",
        "the {w} is here",
        "the {w} returns",
        "bring back the {w}",
        "let the {w} in",
        "let the {w} return",
        "here comes the {w}",
        "the {w} is coming",
        "fast forward to the {w}",
        "skip ahead to the {w}",
        "set the clock to {w}",
        "bring the night to an end",
        "the night is over",
        "the night ends",
        "stop the night",
        "no more night",
        "send the moon away",
        "put the moon to bed",
        "get the sun out of bed",
        "let the sunlight pour in",
        "the sun climbs up",
        "the sun has come up",
        "the darkness lifts",
        "switch the darkness off",
        "wake the world up",
        "the night fades",
    ),
}
"""Each event said with an everyday phrasal verb, its particle free to be a word of stopping ("kick
off" starts the rain) and a stopping verb free to have none ("shut down"); night ended is day
breaking and day ended night falling."""
PHRASAL_SHARE = 0.2
"""v23: of the event texts naming an event, this share is one of ``EVENT_PHRASAL``."""
EVENT_TABLES: tuple[dict[str, tuple[str, ...]], ...] = (EVENT_TEXTS, EVENT_CORES, EVENT_PHRASAL, PHRASAL_CORES)
"""Every table of an event's words (phrasings, keywords, phrasal frames and their subjects): a new one
is listed here, once."""
STOP_WORDS = ("stop", "end", "over", "off", "away", "gone", "done", "cease", "halt", "quit", "finish", "vanish")
"""Words that say the rain stops (v7 frames: "the rain {x} end", "no {x} rain", "an end to the rain")."""
_STOPPING = frozenset((*STOP_WORDS, "remove", "removed", "break", "no", "not"))
"""Never a word to skip in an event text (``event_junk``)."""
STOP_FRAMES = (
    "the {w} {x} {s}",
    "{w} {x} {y} {s}",
    "{x} {s} the {w}",
    "{s} the {w} {x}",
    "no {x} {w}",
    "no {x} {y} {w}",
    "{x} an end to the {w}",
    "{x} a halt to the {w}",
    # v9: the word of stopping across punctuation, before or after a pronoun
    "{w}, {s} {x}",
    "{w} {x}, {s} {y}",
    "{s} {x}, {w}",
    "{w}: {s}",
    "{w} - {x} {s}",
    "{w}... {s}",
    # v10: the word of stopping with a pronoun after it ("it" alone says nothing of stopping or starting)
    "{w}, {s} it",
    "{w} {s} it",
    "{x} {w}, {s} it {y}",
    "{w}, {s} that",
    "{s} it, {w}",
    "{w}, {s} it {x}",
)
NONE_WORDS = (
    "jump",
    "walk",
    "run",
    "door",
    "box",
    "open",
    "pick",
    "drop",
    "throw",
    "eat",
    "read",
    "look",
    "music",
    "cat",
    "game",
    "snow",
    "wind",
    "grass",
    "sand",
    "red",
    "blue",
    "the",
    "a",
    "to",
    "my",
    "fly",
    "swim",
    "coin",
    "key",
    "map",
    "sit",
    "dance",
    "kneel",
    "sneak",
    "duck",
    "save",
    "load",
    "cook",
    "build",
    "dig",
    "shoot",
    "attack",
    "talk",
    "sleep",
    "menu",
    "settings",
    "wave",
    "hide",
    "time",
)


def _none_text(rng: random.Random) -> str:
    """A text that names no event: a listed one, or words (real or made up) that say nothing of
    rain, night or day."""
    if rng.random() < 0.5:
        return rng.choice(EVENT_NONE)
    n = rng.randint(1, 5)
    return " ".join(rng.choice(NONE_WORDS) if rng.random() < 0.4 else junk_word(rng) for _ in range(n))


def event_example(rng: random.Random) -> tuple[str, dict[str, Any]]:
    """(free text, answer dict) for one event text: a listed phrasing, or (40%) an event keyword
    in a frame among made-up words."""
    if rng.random() < EVENT_NONE_SHARE:
        event, text = None, _none_text(rng)
    else:
        event = rng.choice(list(grammar.EVENTS))
        r = rng.random()
        if rng.random() < PHRASAL_SHARE:
            text = rng.choice(EVENT_PHRASAL[event]).format(w=rng.choice(PHRASAL_CORES[event]))
        elif r < 0.5:
            text = rng.choice(EVENT_TEXTS[event])
        elif event == "the rain stops" and r < 0.7:
            text = rng.choice(STOP_FRAMES).format(
                w=rng.choice(EVENT_CORES[event]), x=event_junk(rng), y=event_junk(rng), s=rng.choice(STOP_WORDS)
            )
        else:
            text = rng.choice(EVENT_FRAMES[event]).format(
                w=rng.choice(EVENT_CORES[event]), x=event_junk(rng), y=event_junk(rng)
            )
    carrier = rng.choice(EVENT_CARRIERS) if rng.random() < 0.65 else junk_phrase(rng, 1, 3)
    if carrier and rng.random() < 0.25:
        carrier += rng.choice(CARRIER_MARKS).rstrip()
    text = " ".join(x for x in (carrier, text, rng.choice(("", "", "", "please", "now"))) if x)
    if rng.random() < DECOY_SHARE / 2:  # v20: "no rush, make it rain" starts it
        text = rng.choice(EVENT_DECOY_FRAMES).format(d=decoy_negation(rng), e=text)
    text = noisy(text, rng, typo_rate=0.08 if rng.random() < 0.4 else 0.0)
    return text, {"event": event}


def source_example(rng: random.Random, task: str) -> tuple[str, dict[str, Any]]:
    """v15: (free text, answer) in a random writer's phrasing (``text_sources``), then this
    generator's noise; the typos are the writer's own habit or this generator's, and leave an
    attribute word (this generator's or a writer's) only where the reader corrects it back."""
    src = rng.choice(text_sources.sources())
    text, ans = source_prompt(rng, src) if task == "prompt" else source_event(rng, src)
    slip = src.typo if rng.random() < 0.5 else None
    typo_rate = 0.08 if rng.random() < 0.4 else 0.0
    return noisy(text, rng, typo_rate=typo_rate, slip=slip, keep=text_sources.attribute_words()), ans


def sample(rng: random.Random, vocab: Vocabulary | None = None) -> tuple[str, str]:
    """One training pair: (lm_prompt, answer_json); ``vocab``: the one the model reads with."""
    if rng.random() < SOURCE_SHARE:
        task = "prompt" if rng.random() < PROMPT_SHARE else "event"
        text, ans = source_example(rng, task)
        return lm_prompt(task, text, vocab), answer_json(ans)
    if rng.random() < PROMPT_SHARE:
        text, ans = prompt_example(rng)
        return lm_prompt("prompt", text, vocab), answer_json(ans)
    text, ans = event_example(rng)
    return lm_prompt("event", text, vocab), answer_json(ans)


def samples(seed: int, n: int | None = None, vocab: Vocabulary | None = None) -> Iterator[tuple[str, str]]:
    """``n`` pairs (forever when None) from a seeded generator: the same seed, the same pairs."""
    rng = random.Random(seed)
    i = 0
    while n is None or i < n:
        yield sample(rng, vocab)
        i += 1
