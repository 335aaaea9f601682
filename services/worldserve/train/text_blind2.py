"""A FOURTH held-out set for the text model, written by a helper who was blind to the training
generator (``text_data``), the reading vocabulary (``text_words``, the aliases) and the trainer,
and who neither ran the model nor read its card. The helper read only the world's vocabulary
(``common.caption``), the ``Phrasing`` machinery of the first set (``text_heldout``), the second
and third sets for their interface, and the tests; everything below is written fresh. The only
word the helper could learn about the training phrases was from the test's clash message (a word
of these templates that is also a word of the training ones), and such words were replaced. Run it
once per shipped model, after the model is chosen, and do not tune anything on its misses.

Its own: object, ground, time and rain frames, request carriers, tails, joiners, extra words,
texts naming nothing, event carriers and phrasings (at least ten per event), texts naming no
event, and the attribute words (the canonical word about half the time, otherwise plain everyday
synonyms whose value nobody would dispute; only two times of day, and rain said or denied,
negations included). Its typo process is its own too: two neighbouring letters inside a word
swapped, the first and last letters kept, never turning one attribute word into another. Like the
earlier sets it imports nothing from the training generator nor its words, and a test checks
that its strings appear in none of the training lists.

``blind2(seed=8821)``: 400 prompts (about 5% naming nothing) and 200 event texts (about 10%
naming no event), each with its expected answer. Its tables: 10 object, 6 ground, 5 time and
5 rain frames; 9 request carriers (and none), 5 tails, 6 joiners, 10 extra words, 12 texts
naming nothing; 12 phrasings per event, 7 event carriers (and none), 12 texts naming no event;
per colour, kind, ground, time of day and rain value 4 or 5 distinct attribute words (the
canonical one weighted to about half), 2 ground adjectives.
"""

from __future__ import annotations

import random

from .text_heldout import Item, Phrasing, generate_items

B2_COLOURS = {
    "red": ("red", "red", "red", "scarlet", "crimson", "fire-engine red"),
    "blue": ("blue", "blue", "blue", "navy blue", "cobalt blue", "sapphire blue"),
    "yellow": ("yellow", "yellow", "yellow", "lemon yellow", "canary yellow", "sunflower yellow"),
    "purple": ("purple", "purple", "purple", "violet", "royal purple", "plum purple"),
    "pink": ("pink", "pink", "pink", "hot pink", "bubblegum pink", "flamingo pink"),
    "cyan": ("cyan", "cyan", "cyan", "turquoise", "teal", "pale turquoise"),
}
B2_KINDS = {
    "door": ("door", "door", "door", "doorway", "steel door", "sliding door"),
    "box": ("box", "box", "box", "crate", "storage box", "packing crate"),
}
B2_GROUND_WORDS = {
    "grass": ("grass", "grass", "grass", "turf", "short grass", "meadow grass"),
    "sand": ("sand", "sand", "sand", "fine sand", "soft sand", "golden sand"),
    "snow": ("snow", "snow", "snow", "thick snow", "powdery snow", "packed snow"),
}
B2_GROUND_ADJ = {
    "grass": ("grassy", "grassy", "grass-covered"),
    "sand": ("sandy", "sandy", "sand-covered"),
    "snow": ("snowy", "snowy", "snow-blanketed"),
}
B2_TIME_WORDS = {
    "night": ("night", "night", "night", "nighttime", "midnight", "the middle of the night"),
    "day": ("day", "day", "day", "daytime", "noon", "broad daylight"),
}
B2_RAIN_WORDS = {
    True: ("rainy", "raining", "raining", "pouring", "drizzling", "showery"),
    False: ("dry", "dry", "not raining", "not rainy", "totally dry", "not raining at all"),
}

B2_OBJECT = (
    "{d} {c} {k} situated on the {s}",
    "{d} {c} {k} plonked on the {s}",
    "{d} {k} with a {c} finish at the extreme {s}",
    "the {s} bit gets {d} {c} {k}",
    "{d} {c} {k} nestled on the {s}",
    "{d} {k} in {c} paint, perched on the {s}",
    "{d} {c} {k} wedged against the {s} wall",
    "{d} {c} {k} lurking on the {s}",
    "to the {s} sits {d} {c} {k}",
    "{d} {c} {k} stashed {s}",
)
B2_GROUND = (
    "terrain made entirely of {n}",
    "{n} to walk on",
    "{n} stretching to the horizon",
    "a {a} floor",
    "the land is {a}",
    "cover the floor in {n}",
)
B2_TIME = (
    "it ought to be {t}",
    "{t} for this one",
    "it's {t} in this realm",
    "timewise it's {t}",
    "it's {t}, by the way",
)
B2_RAIN = ("it's {r}", "it ought to be {r}", "{r} outdoors", "weather: {r}", "ensure it's {r}")
B2_CARRIERS = (
    "i'm craving",
    "rustle up",
    "cook up",
    "envision",
    "my concept:",
    "blueprint:",
    "throw together",
    "could i get",
    "sketch out",
    "",
)
B2_TAILS = ("", "", "forever grateful", "that's everything", "when you've got a sec", "much obliged", "ta muchly")
B2_JOINERS = (" what's more, ", " on top of it all, ", " additionally ", " coupled with ", " >> ", " // ")
B2_FILLERS = ("ahh", "heh", "haha", "btw", "welp", "innit", "yikes", "battered", "quaint", "chunky")
B2_NOTHING = (
    "write a haiku about autumn leaves",
    "how many legs does a spider have",
    "convert forty miles to kilometres",
    "recommend a podcast about history",
    "a giraffe riding a skateboard",
    "book me a table for two",
    "what's the plural of cactus",
    "tell me something interesting about octopuses",
    "draft an email to my landlord",
    "a castle made of marshmallows",
    "teach me to knit a scarf",
    "hello, how are you",
)
B2_EVENTS: dict[str, tuple[str, ...]] = {
    "it starts to rain": (
        "time for some rain",
        "summon some rain",
        "unleash a downpour",
        "get the rain falling",
        "send some rain our way",
        "can it rain for a bit",
        "start a rainstorm",
        "switch the weather to rain",
        "give us a downpour",
        "rain should start now",
        "let's have rain",
        "begin the rainfall",
    ),
    "the rain stops": (
        "the rain needs to quit",
        "no rain anymore",
        "rain, rain, go away",
        "call off the rain",
        "halt the downpour",
        "can the rain let up now",
        "the rain can stop now",
        "we've had enough rain, stop it",
        "i want the rain to end",
        "the downpour is over",
        "let the rain die down",
        "time for the rain to quit",
    ),
    "night falls": (
        "bring on nightfall",
        "let darkness fall",
        "turn day into night",
        "fast forward to night",
        "let the moon come out",
        "jump ahead to nighttime",
        "let the night roll in",
        "nightfall now",
        "switch over to night",
        "put the sun away, it's night",
        "time for night to fall",
        "let the stars come out",
    ),
    "day breaks": (
        "bring on the sunrise",
        "fast forward to morning",
        "get the sun up",
        "turn night into day",
        "it's morning now",
        "daybreak please",
        "jump ahead to daytime",
        "let the day begin",
        "switch over to day",
        "bring back the daylight",
        "the night is over, sun's up",
        "let dawn come",
    ),
}
B2_EVENT_CARRIERS = ("", "", "heya,", "oi,", "uhm,", "pronto:", "alrighty,", "next up:", "dear developers,")
B2_EVENT_NONE = (
    "pick up the key",
    "equip my sword",
    "how much health do i have",
    "turn up the volume",
    "show the leaderboard",
    "respawn me",
    "what's my score",
    "toggle fullscreen",
    "invite a friend",
    "change my character's hat",
    "walk forward",
    "drop the shield",
)

# every word of the attribute tables (and the sides): a typo never turns one into another
_GUARDED = (
    frozenset(
        w
        for table in (B2_COLOURS, B2_KINDS, B2_GROUND_WORDS, B2_GROUND_ADJ, B2_TIME_WORDS)
        for words in table.values()
        for phrase in words
        for w in phrase.split()
    )
    | frozenset(w for words in B2_RAIN_WORDS.values() for phrase in words for w in phrase.split())
    | {"left", "right"}
)


def _typo(word: str, rng: random.Random) -> str:
    """This set's typo process: two neighbouring, different letters inside the word swapped (the
    first and the last letters stay where they are); never a result that is another table word."""
    if len(word) < 4 or not word.isalpha():
        return word
    spots = [i for i in range(1, len(word) - 2) if word[i] != word[i + 1]]
    if not spots:
        return word
    i = rng.choice(spots)
    out = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    return word if out in _GUARDED else out


BLIND2 = Phrasing(
    B2_OBJECT,
    B2_GROUND,
    B2_TIME,
    B2_RAIN,
    B2_CARRIERS,
    B2_TAILS,
    B2_JOINERS,
    B2_FILLERS,
    B2_NOTHING,
    B2_EVENTS,
    B2_EVENT_CARRIERS,
    B2_EVENT_NONE,
    _typo,
    typo_rate=0.12,
    determiners=("a", "a", "the", "one", ""),
    shuffle=0.5,
    say_when_silent="time",
    colours=B2_COLOURS,
    kinds=B2_KINDS,
    ground_words=B2_GROUND_WORDS,
    ground_adj=B2_GROUND_ADJ,
    time_words=B2_TIME_WORDS,
    rain_words=B2_RAIN_WORDS,
)


def blind2(seed: int = 8821, n_prompts: int = 400, n_events: int = 200) -> list[Item]:
    """The fourth (blind) held-out set: ``n_prompts`` prompts then ``n_events`` event texts."""
    return generate_items(BLIND2, seed, n_prompts, n_events)


def template_strings() -> list[str]:
    """Every template, carrier, joiner, filler and phrase (the disjointness test reads them)."""
    return BLIND2.strings()
