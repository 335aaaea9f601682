"""An EIGHTH held-out set for the text model, written by a helper who was blind to the training
generator (``text_data``), the reading vocabulary (``text_words``, the aliases), the trainer, the
training sources and the text app, and who neither ran the model nor read its card. The helper
read only the world's vocabulary (``common.caption``), the ``Phrasing`` machinery of the first set
(``text_heldout``), the third to seventh sets (``text_blind`` ... ``text_blind5``) for their
interface and their typo habits, and the tests; everything below is written fresh. The only word
the helper could learn about the training phrases was from the test's clash message (a word of
these templates that is also a word of the training ones), and such words were replaced. Run it
once per shipped model, after the model is chosen, and do not tune anything on its misses.

Its own: object, ground, time and rain frames, request carriers, tails, joiners, extra words,
texts naming nothing, event carriers and phrasings (fourteen per event), texts naming no event,
and the attribute words (the canonical word about half the time, otherwise plain everyday
synonyms whose value nobody would dispute; only two times of day, and rain said or denied as a
whole little clause, "it pours" or "not a drop falls", negations included). Its typo process is
its own too: a word spelt by ear, one letter group swapped for another that sounds the same
("rayn" for "rain", "boks" for "box", "bloo" for "blue", "nite" for "night", "kardboard" for
"cardboard"), never touching a side word and never turning one attribute word into another. Like
the earlier sets it imports nothing from the training generator nor its words, and a test checks
that its strings appear in none of the training lists.

``blind6(seed=8263)``: 400 prompts (about 5% naming nothing) and 200 event texts (about 10%
naming no event), each with its expected answer. Its tables: 14 object, 7 ground, 5 time and
5 rain frames; 10 request carriers (and none), 6 tails (and none), 6 joiners, 10 extra words,
13 texts naming nothing; 14 phrasings per event, 8 event carriers (and none), 14 texts naming no
event; per colour, kind, ground, time of day and rain value 4 to 6 distinct attribute words (the
canonical one weighted to about half), 2 ground adjectives.
"""

from __future__ import annotations

import random
import re

from .text_heldout import Item, Phrasing, generate_items

B6_COLOURS = {
    "red": ("red", "red", "red", "cherry red", "ruby", "tomato red"),
    "blue": ("blue", "blue", "blue", "royal blue", "denim blue", "cornflower blue"),
    "yellow": ("yellow", "yellow", "yellow", "banana yellow", "butter yellow", "daffodil yellow"),
    "purple": ("purple", "purple", "purple", "grape purple", "deep purple", "lavender"),
    "pink": ("pink", "pink", "pink", "baby pink", "candy pink", "pastel pink"),
    "cyan": ("cyan", "cyan", "cyan", "vivid cyan", "pale cyan", "neon cyan"),
}
B6_KINDS = {
    "door": ("door", "door", "door", "front door", "arched door", "metal door"),
    "box": ("box", "box", "box", "cardboard box", "shipping box", "gift box"),
}
B6_GROUND_WORDS = {
    "grass": ("grass", "grass", "grass", "long grass", "grassland", "lush grass"),
    "sand": ("sand", "sand", "sand", "loose sand", "coarse sand", "rippled sand"),
    "snow": ("snow", "snow", "snow", "deep snow", "snowdrifts", "crisp snow"),
}
B6_GROUND_ADJ = {
    "grass": ("grassy", "grassy", "grass-carpeted"),
    "sand": ("sandy", "sandy", "sand-strewn"),
    "snow": ("snowy", "snowy", "snow-clad"),
}
B6_TIME_WORDS = {
    "night": ("night", "night", "night", "evening", "dusk", "late night"),
    "day": ("day", "day", "day", "afternoon", "midday", "lunchtime"),
}
B6_RAIN_WORDS = {
    True: ("it rains", "it rains", "it rains", "rain comes down", "showers fall", "it pours"),
    False: (
        "it does not rain",
        "it doesn't rain",
        "no rain falls",
        "it never rains",
        "the sky stays clear",
        "not a drop falls",
    ),
}

B6_OBJECT = (
    "{d} {c} {k} hugging the {s} fringe",
    "{s} extremity: {d} {c} {k}",
    "{d} {c} {k} parked on the {s}",
    "{d} {c} {k} guarding the {s} flank",
    "{d} {c} {k} tucked into the {s} margin",
    "{d} {c} {k}, {s} quarter",
    "{d} {c} {k} popped in at the {s}",
    "the {s} nook holds {d} {c} {k}",
    "{d} {c} {k} loitering at the {s}",
    "{d} {c} {k} posted by the {s} boundary",
    "{d} {c} {k} spotted if you glance {s}",
    "{d} {c} {k} sits snug on the {s}",
    "{d} {c} {k} hanging around on the {s}",
    "at the {s}, {d} {c} {k} awaits",
)
B6_GROUND = (
    "{n} from wall to wall",
    "everything carpeted in {n}",
    "{a} footing",
    "feet planted on {n}",
    "a {a} landscape",
    "{n} wherever you tread",
    "{a} surroundings",
)
B6_TIME = ("{t} vibes", "it's {t} hereabouts", "{t}, going by the clock", "when? {t}", "{t} in these parts")
B6_RAIN = ("{r}", "{r} the whole time", "{r} outside", "the forecast says {r}", "meanwhile {r}")
B6_CARRIERS = (
    "kindly knock together",
    "dream up",
    "mock up for me",
    "hankering for",
    "fling together",
    "my wish list:",
    "rough out",
    "hook me up with",
    "conjure",
    "fancy making",
    "",
)
B6_TAILS = (
    "",
    "",
    "you're a gem",
    "if you'd be a dear",
    "your move",
    "at your leisure",
    "bless your socks",
    "appreciate it",
)
B6_JOINERS = (" ~ ", " furthermore ", " moreover ", " ~~ ", " -- ", " for good measure, ")
B6_FILLERS = ("uhh", "y'know", "frankly", "admittedly", "literally", "teehee", "mmkay", "wonky", "cosy", "fancy")
B6_NOTHING = (
    "what's the capital of peru",
    "a dragon juggling pineapples",
    "how do i fix a flat tyre",
    "suggest a name for my cat",
    "write a limerick about cheese",
    "who painted the mona lisa",
    "a robot playing chess with a walrus",
    "give me a recipe for pancakes",
    "why do cats purr",
    "plan my holiday budget",
    "spell encyclopedia backwards",
    "is a peanut a nut",
    "a hamster driving a tractor",
)
B6_EVENTS: dict[str, tuple[str, ...]] = {
    "it starts to rain": (
        "make the heavens open",
        "set the rain going",
        "let the showers begin",
        "i'd like it to start raining",
        "bring in some drizzle",
        "open the sky and let it pour",
        "switch on the rain",
        "kick off a rain shower",
        "we need a downpour this instant",
        "the raindrops should start falling",
        "soak everything with rain",
        "rain, please begin",
        "turn the weather wet",
        "drench the place in rain",
    ),
    "the rain stops": (
        "switch off the rain",
        "bring the rain to an end",
        "the showers are finished",
        "enough drizzle, make it stop",
        "cut the rain off",
        "clear away the rain",
        "the downpour ought to end now",
        "stop the rain already",
        "can the showers cease",
        "rain's over, clear the sky",
        "put an end to the downpour",
        "bring the rainfall to a halt",
        "the drizzle should let up",
        "no more showers",
    ),
    "night falls": (
        "make it evening",
        "roll on the night",
        "let the sun set",
        "bring out the moon",
        "dim everything for nighttime",
        "skip ahead to dusk",
        "i want it to be night",
        "plunge the world into darkness",
        "it's getting late, make it night",
        "switch to evening",
        "sunset please",
        "let the stars twinkle",
        "darken the sky",
        "make it the small hours",
    ),
    "day breaks": (
        "make it morning",
        "let the sun come up",
        "bring on the dawn",
        "i want it to be daytime",
        "wake the world up with sunshine",
        "skip ahead to sunrise",
        "brighten things up, it's morning",
        "switch to daytime",
        "send the moon away and bring the sun",
        "rise and shine, it's a new day",
        "end the night already",
        "cue the sunrise",
        "make it afternoon",
        "let morning come",
    ),
}
B6_EVENT_CARRIERS = (
    "",
    "",
    "okey-dokey,",
    "c'mon,",
    "psst,",
    "get a wriggle on,",
    "i beg you,",
    "oy computer,",
    "chop chop,",
    "listen up,",
)
B6_EVENT_NONE = (
    "duck under the ledge",
    "push open the nearest door",
    "lift the box over my head",
    "let some snowflakes drift down",
    "summon a gust of wind",
    "open the map",
    "mute the music",
    "sprint to the finish flag",
    "save and quit",
    "what button makes me jump",
    "peek over the edge",
    "check my backpack",
    "how do i wall jump",
    "crank up the breeze",
)

# every word of the attribute tables: a typo never turns one into another; sides are never touched
_GUARDED = frozenset(
    w
    for table in (B6_COLOURS, B6_KINDS, B6_GROUND_WORDS, B6_GROUND_ADJ, B6_TIME_WORDS, B6_RAIN_WORDS)
    for words in table.values()
    for phrase in words
    for w in phrase.replace("-", " ").split()
)
_SIDES = frozenset({"left", "right"})

# spelling by ear: a letter group and one that sounds the same
_SOUNDS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"ck"), "k"),  # "tuked"
    (re.compile(r"ph"), "f"),  # "fone"
    (re.compile(r"c(?=[aou])"), "k"),  # "kardboard"
    (re.compile(r"qu"), "kw"),  # "kwick"
    (re.compile(r"x"), "ks"),  # "boks"
    (re.compile(r"ight$"), "ite"),  # "nite"
    (re.compile(r"ee"), "ea"),  # "deap"
    (re.compile(r"(?<=[aeiou])s(?=[aeiou])"), "z"),  # "roze"
    (re.compile(r"tion$"), "shun"),  # "stashun"
    (re.compile(r"^kn"), "n"),  # "nock"
    (re.compile(r"^wr"), "r"),  # "rite"
    (re.compile(r"mb$"), "m"),  # "clim"
    (re.compile(r"ue$"), "oo"),  # "bloo"
    (re.compile(r"oor$"), "ore"),  # "dore"
    (re.compile(r"ai"), "ay"),  # "rayn"
    (re.compile(r"ow$"), "o"),  # "sno"
    (re.compile(r"(?<=[^s])s$"), "z"),  # "rainz"
)


def _typo(word: str, rng: random.Random) -> str:
    """This set's typo process: the word spelt by ear, one letter group in it swapped for another
    that sounds the same ("rayn", "boks", "bloo", "nite", "kardboard", "rainz"); a side word is never
    touched, and never a result that is another attribute word."""
    if len(word) < 3 or not word.isalpha() or word in _SIDES:
        return word
    spots = [(m.start(), m.end(), sound) for pattern, sound in _SOUNDS for m in pattern.finditer(word)]
    if not spots:
        return word
    start, end, sound = rng.choice(spots)
    out = word[:start] + sound + word[end:]
    return word if out in _GUARDED else out


BLIND6 = Phrasing(
    B6_OBJECT,
    B6_GROUND,
    B6_TIME,
    B6_RAIN,
    B6_CARRIERS,
    B6_TAILS,
    B6_JOINERS,
    B6_FILLERS,
    B6_NOTHING,
    B6_EVENTS,
    B6_EVENT_CARRIERS,
    B6_EVENT_NONE,
    _typo,
    typo_rate=0.12,
    determiners=("a", "a", "a", "the", "one", "a lone"),
    shuffle=0.4,
    say_when_silent="time",
    colours=B6_COLOURS,
    kinds=B6_KINDS,
    ground_words=B6_GROUND_WORDS,
    ground_adj=B6_GROUND_ADJ,
    time_words=B6_TIME_WORDS,
    rain_words=B6_RAIN_WORDS,
)


def blind6(seed: int = 8263, n_prompts: int = 400, n_events: int = 200) -> list[Item]:
    """The eighth (blind) held-out set: ``n_prompts`` prompts then ``n_events`` event texts."""
    return generate_items(BLIND6, seed, n_prompts, n_events)


def template_strings() -> list[str]:
    """Every template, carrier, joiner, filler and phrase (the disjointness test reads them)."""
    return BLIND6.strings()
