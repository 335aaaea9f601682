"""A SIXTH held-out set for the text model, written by a helper who was blind to the training
generator (``text_data``), the reading vocabulary (``text_words``, the aliases), the trainer, the
training sources and the text app, and who neither ran the model nor read its card. The helper
read only the world's vocabulary (``common.caption``), the ``Phrasing`` machinery of the first set
(``text_heldout``), the third, fourth and fifth sets (``text_blind``, ``text_blind2``,
``text_blind3``) for their interface and to keep clear of their words, and the tests; everything
below is written fresh. The only word the helper could learn about the training phrases was from
the test's clash message (a word of these templates that is also a word of the training ones), and
such words were replaced. Run it once per shipped model, after the model is chosen, and do not
tune anything on its misses.

Its own: object, ground, time and rain frames, request carriers, tails, joiners, extra words,
texts naming nothing, event carriers and phrasings (at least twelve per event), texts naming no
event, and the attribute words (the canonical word about half the time, otherwise plain everyday
synonyms whose value nobody would dispute; only two times of day, and rain said or denied as a
noun phrase, "no rain" and "clear skies" included). Its typo process is its own too: one inner
consonant of a longer word struck as the key beside it on the same keyboard row, in place (the
length, the first and the last letters stay), never turning one attribute word into another. Like the earlier sets
it imports nothing from the training generator nor its words, and a test checks that its strings
appear in none of the training lists.

``blind4(seed=6143)``: 400 prompts (about 5% naming nothing) and 200 event texts (about 10%
naming no event), each with its expected answer. Its tables: 13 object, 7 ground, 5 time and
5 rain frames; 10 request carriers (and none), 6 tails (and none), 6 joiners, 10 extra words,
12 texts naming nothing; 14 phrasings per event, 8 event carriers (and none), 14 texts naming no
event; per colour, kind, ground, time of day and rain value 4 distinct attribute words (the
canonical one weighted to half), 2 ground adjectives.
"""

from __future__ import annotations

import random

from .text_heldout import Item, Phrasing, generate_items

B4_COLOURS = {
    "red": ("red", "red", "red", "postbox red", "blood red", "lipstick red"),
    "blue": ("blue", "blue", "blue", "bold blue", "deep blue", "ocean blue"),
    "yellow": ("yellow", "yellow", "yellow", "buttercup yellow", "primrose yellow", "mustard yellow"),
    "purple": ("purple", "purple", "purple", "lavender purple", "mulberry purple", "pansy purple"),
    "pink": ("pink", "pink", "pink", "pastel pink", "shocking pink", "candyfloss pink"),
    "cyan": ("cyan", "cyan", "cyan", "pale cyan", "deep cyan", "cyan-tinted"),
}
B4_KINDS = {
    "door": ("door", "door", "door", "front door", "wooden door", "metal door"),
    "box": ("box", "box", "box", "cardboard box", "wooden box", "carton"),
}
B4_GROUND_WORDS = {
    "grass": ("grass", "grass", "grass", "grassland", "long grass", "freshly cut grass"),
    "sand": ("sand", "sand", "sand", "beach sand", "desert sand", "sand dunes"),
    "snow": ("snow", "snow", "snow", "deep snow", "snowdrifts", "crunchy snow"),
}
B4_GROUND_ADJ = {
    "grass": ("grassy", "grassy", "grass-topped"),
    "sand": ("sandy", "sandy", "sand-strewn"),
    "snow": ("snowy", "snowy", "snowbound"),
}
B4_TIME_WORDS = {
    "night": ("night", "night", "night", "sunset", "the small hours", "late evening"),
    "day": ("day", "day", "day", "sunrise", "midday", "early morning"),
}
# noun phrases (the rain frames read "{r} overhead", "expect {r}"...): the rain said or denied
B4_RAIN_WORDS = {
    True: ("rain", "rain", "rain", "showers", "a downpour", "steady drizzle"),
    False: ("no rain", "no rain", "no rain", "clear skies", "zero rain", "not a drop of rain"),
}

B4_OBJECT = (
    "{d} {c} {k} lounging on the {s}",
    "{d} {c} {k} loitering on the {s}",
    "{d} {c} {k} waiting on the {s}",
    "{d} {c} {k} kept to the {s}",
    "the {s} portion houses {d} {c} {k}",
    "{d} {c} {k} sat {s} of the player",
    "{d} {c} {k}, {s} extremity",
    "stick {d} {c} {k} on the {s}",
    "{d} {c} {k} keeping watch on the {s}",
    "{s} zone: {d} {c} {k}",
    "{d} {c} {k} resting at the {s} tip",
    "{d} {c} {k} leaning on the {s} boundary",
    "spot {d} {c} {k} {s} of the hero",
)
B4_GROUND = (
    "the whole floor is {n}",
    "{n} filling each nook and cranny",
    "{n} galore",
    "a {a} stretch of land",
    "hidden someplace {a}",
    "built atop {n}",
    "{a} footing, plenty of {n}",
)
B4_TIME = ("opt for {t}", "pencil in {t}", "{t}, incidentally", "{t} for the setting", "{t} by the looks of it")
B4_RAIN = ("{r} up top", "{r} overhead", "weather report: {r}", "{r} all the while", "expect {r}")
B4_CARRIERS = (
    "rustle up",
    "cook up",
    "knock together",
    "sketch out",
    "rig up",
    "serve me",
    "i fancy",
    "dream up",
    "throw together",
    "my pitch:",
    "",
)
B4_TAILS = (
    "",
    "",
    "take your time",
    "whenever suits",
    "your turn, maestro",
    "bravo in advance",
    "fingers crossed",
    "you're a gem",
)
B4_JOINERS = (" => ", " ;; ", " paired with ", " topped off with ", " <+> ", " followed by ")
B4_FILLERS = ("mmkay", "oof", "yep", "anyhoo", "lowkey", "wonky", "dinky", "shabby", "spiffy", "zany")
B4_NOTHING = (
    "tell me a joke about cats",
    "who invented the telephone",
    "translate hello into french",
    "a cat riding a skateboard",
    "a recipe for pancakes please",
    "how tall is mount everest",
    "list some famous poets",
    "a wizard brewing a potion",
    "explain how a bicycle works",
    "a giraffe playing chess",
    "convert miles into kilometres",
    "tips for learning guitar",
)
B4_EVENTS: dict[str, tuple[str, ...]] = {
    "it starts to rain": (
        "open the heavens",
        "send down some rain",
        "a rain shower, please",
        "i need a rainy spell",
        "let a storm roll in",
        "drench everything with rain",
        "time for a downpour",
        "brew up a rainstorm",
        "switch the drizzle on",
        "have it pour down",
        "drop some rain on us",
        "i'd like it to start raining",
        "rain down on the level",
        "bring the rain in",
    ),
    "the rain stops": (
        "bring the showers to a halt",
        "cut the rain off",
        "the storm is over now",
        "wrap up the downpour",
        "let the showers die away",
        "clear the rain away",
        "quit raining",
        "rain, knock it off",
        "that's enough drizzle, stop it",
        "finish the storm",
        "call off the rain",
        "the sky can clear up now",
        "the downpour can cease",
        "no more showers, end them",
    ),
    "night falls": (
        "fade to night",
        "let the night in",
        "time for the moon to come out",
        "let the sun sink",
        "bring on the evening",
        "dim everything for night",
        "show the stars",
        "jump to midnight",
        "let nightfall come",
        "switch it to evening",
        "send the sun down",
        "go dark for the night",
        "the night should come now",
        "roll on sundown",
    ),
    "day breaks": (
        "coax the sun up over the hills",
        "fast-forward to morning",
        "bring on sunrise",
        "let dawn arrive",
        "morning has come",
        "let the day begin",
        "hoist the sun into the sky",
        "cue the sunrise",
        "jump to midday",
        "rise and shine, it's morning",
        "first light, please",
        "let the daylight return",
        "bring the sun back up",
        "the dawn is here",
    ),
}
B4_EVENT_CARRIERS = ("", "", "snappily,", "heads up,", "boss,", "er,", "friends,", "mate,", "ahoy,", "whoa,")
B4_EVENT_NONE = (
    "crouch behind the box",
    "walk through the door",
    "shove the box aside",
    "try a cartwheel",
    "glance to the left",
    "could we get snowflakes falling",
    "whip up a gale",
    "reload the last checkpoint",
    "turn the volume down",
    "what's my score",
    "i'm stuck, help",
    "quit to the main menu",
    "nice jump!",
    "change my outfit",
)

# every word of the attribute tables (and the sides): a typo never turns one into another
_GUARDED = (
    frozenset(
        w
        for table in (B4_COLOURS, B4_KINDS, B4_GROUND_WORDS, B4_GROUND_ADJ, B4_TIME_WORDS)
        for words in table.values()
        for phrase in words
        for w in phrase.split()
    )
    | frozenset(w for words in B4_RAIN_WORDS.values() for phrase in words for w in phrase.split())
    | {"left", "right"}
    | {"subset"}  # the one slip of an attribute word that is an everyday word itself ("sunset")
)
_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _beside(ch: str) -> str:
    """The letters on either side of ``ch`` on its own QWERTY row."""
    for row in _ROWS:
        i = row.find(ch)
        if i >= 0:
            return "".join(row[j] for j in (i - 1, i + 1) if 0 <= j < len(row))
    return ""


def _typo(word: str, rng: random.Random) -> str:
    """This set's typo process: one consonant inside a word of four letters or more struck as the
    key beside it on the same keyboard row, in place ("grads" for "grass"): the first and the last
    letters stay, the length stays, no letter is doubled or moved, the new letter is neither of its
    neighbours; never a result that is another table word (nor "subset" for "sunset")."""
    if len(word) < 4 or not word.isalpha():
        return word
    spots = [i for i in range(1, len(word) - 1) if word[i] not in "aeiou" and _beside(word[i])]
    if not spots:
        return word
    i = rng.choice(spots)
    near = [c for c in _beside(word[i]) if c not in (word[i - 1], word[i + 1])]
    if not near:
        return word
    out = word[:i] + rng.choice(near) + word[i + 1 :]
    return word if out in _GUARDED else out


BLIND4 = Phrasing(
    B4_OBJECT,
    B4_GROUND,
    B4_TIME,
    B4_RAIN,
    B4_CARRIERS,
    B4_TAILS,
    B4_JOINERS,
    B4_FILLERS,
    B4_NOTHING,
    B4_EVENTS,
    B4_EVENT_CARRIERS,
    B4_EVENT_NONE,
    _typo,
    typo_rate=0.12,
    determiners=("a", "a", "a", "the", "one"),
    shuffle=0.5,
    say_when_silent="time",
    colours=B4_COLOURS,
    kinds=B4_KINDS,
    ground_words=B4_GROUND_WORDS,
    ground_adj=B4_GROUND_ADJ,
    time_words=B4_TIME_WORDS,
    rain_words=B4_RAIN_WORDS,
)


def blind4(seed: int = 6143, n_prompts: int = 400, n_events: int = 200) -> list[Item]:
    """The sixth (blind) held-out set: ``n_prompts`` prompts then ``n_events`` event texts."""
    return generate_items(BLIND4, seed, n_prompts, n_events)


def template_strings() -> list[str]:
    """Every template, carrier, joiner, filler and phrase (the disjointness test reads them)."""
    return BLIND4.strings()
