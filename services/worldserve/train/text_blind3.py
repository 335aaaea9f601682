"""A FIFTH held-out set for the text model, written by a helper who was blind to the training
generator (``text_data``), the reading vocabulary (``text_words``, the aliases), the trainer and the
text app, and who neither ran the model nor read its card. The helper read only the world's
vocabulary (``common.caption``), the ``Phrasing`` machinery of the first set (``text_heldout``),
the third and fourth sets (``text_blind``, ``text_blind2``) for their interface and to keep clear of
their words, and the tests; everything below is written fresh. The only word the helper could learn
about the training phrases was from the test's clash message (a word of these templates that is
also a word of the training ones), and such words were replaced. Run it once per shipped model,
after the model is chosen, and do not tune anything on its misses.

Its own: object, ground, time and rain frames, request carriers, tails, joiners, extra words,
texts naming nothing, event carriers and phrasings (at least twelve per event), texts naming no
event, and the attribute words (the canonical word about half the time, otherwise plain everyday
synonyms whose value nobody would dispute; only two times of day, and rain said or denied as a verb
of "it", negations included). Its typo process is its own too: one letter inside a longer word
left out (one of a doubled pair where the word has one, else, in a word of six letters or more, a
vowel where another is left), the first and last letters kept, never turning one attribute word
into another. Like the earlier sets it imports nothing from the training generator nor its words,
and a test checks that its strings appear in none of the training lists.

``blind3(seed=5309)``: 400 prompts (about 5% naming nothing) and 200 event texts (about 10%
naming no event), each with its expected answer. Its tables: 12 object, 6 ground, 5 time and
5 rain frames; 10 request carriers (and none), 6 tails (and none), 6 joiners, 10 extra words,
12 texts naming nothing; 14 phrasings per event, 8 event carriers (and none), 14 texts naming no
event; per colour, kind, ground, time of day and rain value 4 distinct attribute words (the
canonical one weighted to about half), 2 ground adjectives.
"""

from __future__ import annotations

import random

from .text_heldout import Item, Phrasing, generate_items

B3_COLOURS = {
    "red": ("red", "red", "red", "tomato red", "ruby red", "strawberry red"),
    "blue": ("blue", "blue", "blue", "cornflower blue", "denim blue", "blueberry blue"),
    "yellow": ("yellow", "yellow", "yellow", "banana yellow", "butter yellow", "daffodil yellow"),
    "purple": ("purple", "purple", "purple", "grape purple", "amethyst purple", "aubergine purple"),
    "pink": ("pink", "pink", "pink", "candy pink", "blush pink", "carnation pink"),
    "cyan": ("cyan", "cyan", "cyan", "vivid cyan", "neon cyan", "cyan-coloured"),
}
B3_KINDS = {
    "door": ("door", "door", "door", "exit door", "oak door", "barn door"),
    "box": ("box", "box", "box", "shipping box", "gift box", "tool box"),
}
B3_GROUND_WORDS = {
    "grass": ("grass", "grass", "grass", "tall grass", "wild grass", "mown grass"),
    "sand": ("sand", "sand", "sand", "loose sand", "warm sand", "coarse sand"),
    "snow": ("snow", "snow", "snow", "crisp snow", "snowbanks", "settled snow"),
}
B3_GROUND_ADJ = {
    "grass": ("grassy", "grassy", "grass-carpeted"),
    "sand": ("sandy", "sandy", "sand-carpeted"),
    "snow": ("snowy", "snowy", "snow-carpeted"),
}
B3_TIME_WORDS = {
    "night": ("night", "night", "night", "evening", "dusk", "twilight"),
    "day": ("day", "day", "day", "daytime", "afternoon", "lunchtime"),
}
# verbs of "it" (the rain frames read "... it {r} ..."): the rain said or denied
B3_RAIN_WORDS = {
    True: ("rains", "rains", "rains", "pours", "drizzles", "is raining"),
    False: ("doesn't rain", "doesn't rain", "stays dry", "never rains", "isn't raining", "remains dry"),
}

B3_OBJECT = (
    "{d} {c} {k} stood at the {s}",
    "{d} {c} {k} parked up on the {s}",
    "{d} {c} {k}, {s} flank",
    "{d} {c} {k} hugging the {s} rim",
    "{d} {c} {k} tucked in on the {s}",
    "out on the {s} fringe, {d} {c} {k}",
    "{d} {c} {k} hanging around on the {s}",
    "{d} {c} {k} by the {s} margin",
    "{d} {c} {k} camped on the {s}",
    "{d} {c} {k} planted firmly on the {s}",
    "pop {d} {c} {k} on the {s}",
    "{d} {c} {k} propped up on the {s}",
)
B3_GROUND = (
    "trudge across {n}",
    "{n} beneath your feet",
    "{n} wherever you step",
    "a {a} landscape",
    "everything looks {a}",
    "{a} all around, heaps of {n}",
)
B3_TIME = (
    "{t} throughout",
    "{t} is when it all happens",
    "spin the clock to {t}",
    "the clock reads {t}",
    "timed for {t}",
)
B3_RAIN = ("outside, it {r}", "a spot where it {r}", "overhead, it {r}", "it {r}, funnily enough", "suppose it {r}")
B3_CARRIERS = (
    "conjure",
    "mock up",
    "drum up",
    "fabricate",
    "hook me up with",
    "manufacture",
    "fashion me",
    "lay out",
    "the brief:",
    "concoct",
    "",
)
B3_TAILS = ("", "", "bless you", "your move", "that's the lot", "legend", "cheerio", "top stuff")
B3_JOINERS = (" bundled with ", " in tandem with ", " ~ ", " :: ", " besides which, ", " teamed with ")
B3_FILLERS = ("uhhh", "lmao", "tbh", "whatevs", "gosh", "wobbly", "cosy", "knobbly", "sturdy", "blimey")
B3_NOTHING = (
    "summarise the plot of hamlet",
    "name a famous painter",
    "a dragon playing the violin",
    "write a limerick about a goat",
    "how do magnets work",
    "suggest a name for my puppy",
    "explain how vaccines work",
    "plan a picnic menu",
    "a robot learning to dance",
    "give me a tongue twister",
    "what's the capital of peru",
    "an elephant juggling pineapples",
)
B3_EVENTS: dict[str, tuple[str, ...]] = {
    "it starts to rain": (
        "have it bucket down",
        "sprinkle us with drizzle",
        "bring in some showers",
        "roll in the rain clouds and let them empty",
        "rain clouds, do your thing",
        "stir up a rainstorm",
        "a downpour would be nice now",
        "make the sky rain",
        "let the raindrops fall",
        "rain, starting now",
        "get it raining",
        "i want rain to begin falling",
        "the showers should begin",
        "pour it down on us",
    ),
    "the rain stops": (
        "end the downpour",
        "make the showers end",
        "stop the drizzle",
        "let the skies clear up",
        "enough rain, shut it off",
        "the rain has finished",
        "rain's over, clear it away",
        "cease the rainfall",
        "bring the storm to an end",
        "let the downpour finish",
        "can the showers stop",
        "put an end to this drizzle",
        "the rain should be ending now",
        "dry it up, the rain is done",
    ),
    "night falls": (
        "let it get dark out",
        "bring out the moon",
        "advance the clock to evening",
        "the sun should set now",
        "let dusk settle in",
        "make it midnight",
        "roll the clock to night",
        "let the evening come",
        "sunset, please",
        "make the sky go dark",
        "take us into the night",
        "bring on twilight",
        "darken the world for the night",
        "let the stars twinkle",
    ),
    "day breaks": (
        "make it morning",
        "bring on dawn",
        "advance the clock to morning",
        "wake the world up, it's morning",
        "roll the clock to day",
        "brighten things up, it's daytime",
        "let the morning come",
        "end the night",
        "sunrise, please",
        "take us to noon",
        "get the sun shining",
        "the sun should rise now",
        "let the dawn break",
        "flood the world with daylight",
    ),
}
B3_EVENT_CARRIERS = ("", "", "crikey,", "yoohoo,", "chop chop,", "listen:", "hark,", "ahem,", "gah,", "ooh,")
B3_EVENT_NONE = (
    "jump over the gap",
    "duck under the beam",
    "knock on the door",
    "kick the box",
    "let it snow",
    "crank up the wind",
    "open the pause menu",
    "save my progress",
    "what does this button do",
    "sprint ahead",
    "how are you doing",
    "show the map",
    "hop onto the box",
    "switch characters",
)

# every word of the attribute tables (and the sides): a typo never turns one into another
_GUARDED = (
    frozenset(
        w
        for table in (B3_COLOURS, B3_KINDS, B3_GROUND_WORDS, B3_GROUND_ADJ, B3_TIME_WORDS)
        for words in table.values()
        for phrase in words
        for w in phrase.split()
    )
    | frozenset(w for words in B3_RAIN_WORDS.values() for phrase in words for w in phrase.split())
    | {"left", "right"}
)


def _typo(word: str, rng: random.Random) -> str:
    """This set's typo process: one letter inside a word left out (the first and the last stay):
    one of a doubled pair in a word of five letters or more ("yelow"), else, in a word of six or
    more with another vowel, one of its inner vowels; never a result that is another table word."""
    if len(word) < 5 or not word.isalpha():
        return word
    inner = range(1, len(word) - 1)
    doubled = [i for i in inner if word[i] == word[i + 1]]
    vowels = [i for i, ch in enumerate(word) if ch in "aeiou"]
    if not doubled and (len(word) < 6 or len(vowels) < 2):
        return word
    spots = doubled or [i for i in vowels if 0 < i < len(word) - 1]
    if not spots:
        return word
    i = rng.choice(spots)
    out = word[:i] + word[i + 1 :]
    return word if out in _GUARDED else out


BLIND3 = Phrasing(
    B3_OBJECT,
    B3_GROUND,
    B3_TIME,
    B3_RAIN,
    B3_CARRIERS,
    B3_TAILS,
    B3_JOINERS,
    B3_FILLERS,
    B3_NOTHING,
    B3_EVENTS,
    B3_EVENT_CARRIERS,
    B3_EVENT_NONE,
    _typo,
    typo_rate=0.12,
    determiners=("a", "a", "a", "one", "the"),
    shuffle=0.45,
    say_when_silent="ground",
    colours=B3_COLOURS,
    kinds=B3_KINDS,
    ground_words=B3_GROUND_WORDS,
    ground_adj=B3_GROUND_ADJ,
    time_words=B3_TIME_WORDS,
    rain_words=B3_RAIN_WORDS,
)


def blind3(seed: int = 5309, n_prompts: int = 400, n_events: int = 200) -> list[Item]:
    """The fifth (blind) held-out set: ``n_prompts`` prompts then ``n_events`` event texts."""
    return generate_items(BLIND3, seed, n_prompts, n_events)


def template_strings() -> list[str]:
    """Every template, carrier, joiner, filler and phrase (the disjointness test reads them)."""
    return BLIND3.strings()
