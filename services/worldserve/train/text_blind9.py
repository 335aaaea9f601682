"""An ELEVENTH held-out set for the text model, written by a helper who was blind to the training
generator (``text_data``), the reading vocabulary (``text_words``, the aliases), the trainer, the
training sources and the text app, and who neither ran the model nor read its card. The helper
read only the world's vocabulary (``common.caption``), the ``Phrasing`` machinery of the first set
(``text_heldout``), the third to tenth sets (``text_blind`` ... ``text_blind8``) for their
interface, their file shape and their typo habits, and the tests; everything below is written
fresh. The only word the helper could learn about the training phrases was from the test's clash
message (a word of these templates that is also a word of the training ones), and such words were
replaced. Run it once per shipped model, after the model is chosen, and do not tune anything on
its misses.

Its voice is an estate agent's: a world is asked for as a property listing (particulars, a plot,
its grounds and the side of the frontage an object stands on, the brochure photos taken by day or
by night, with or without rain), colours in the words of listing copy ("a statement red door")
and the everyday times of day a player would type (tonight, the evening, the morning, the
afternoon). Its own: object, ground, time and rain frames, request carriers, tails, joiners,
extra words, texts naming nothing, event carriers and phrasings (sixteen or more per event, of
varied verb, subject, tense and shape), texts naming no event, and the attribute words (the
canonical word about half the time, otherwise plain everyday synonyms whose value nobody would
dispute; only two times of day, said as a phrase of when the photos were taken, and rain said or
denied as a "with ..." phrase, negations included). Its typo process is its own too: the writer's
eye jumping back, one whole word typed twice in a row ("the the", "door door"; a lower rate than
the earlier sets' letter slips, as each one lengthens the text): no letter is added, lost,
changed or moved inside a word and a negation is never repeated, so a typo never turns one
attribute word into another nor flips what is denied. Like the earlier sets it imports nothing from the training generator nor
its words, and a test checks that its strings appear in none of the training lists.

``blind9(seed=11887)``: 400 prompts (about 5% naming nothing) and 200 event texts (about 10%
naming no event), each with its expected answer. Its tables: 14 object, 7 ground, 5 time and
5 rain frames; 10 request carriers (and none), 5 tails (and none), 6 joiners, 10 extra words,
14 texts naming nothing; 16 or 17 phrasings per event, 6 event carriers (and none), 14 texts naming
no event; per colour, kind, ground, time of day and rain value 4 distinct attribute words (the
canonical one weighted to half), 2 ground adjectives.
"""

from __future__ import annotations

import random

from .text_heldout import Item, Phrasing, generate_items

B9_COLOURS = {
    "red": ("red", "red", "red", "statement red", "designer red", "painted red"),
    "blue": ("blue", "blue", "blue", "statement blue", "designer blue", "painted blue"),
    "yellow": ("yellow", "yellow", "yellow", "statement yellow", "designer yellow", "painted yellow"),
    "purple": ("purple", "purple", "purple", "statement purple", "designer purple", "painted purple"),
    "pink": ("pink", "pink", "pink", "statement pink", "designer pink", "painted pink"),
    "cyan": ("cyan", "cyan", "cyan", "statement cyan", "designer cyan", "painted cyan"),
}
B9_KINDS = {
    "door": ("door", "door", "door", "entrance door", "period door", "feature door"),
    "box": ("box", "box", "box", "removal box", "packing box", "sturdy box"),
}
B9_GROUND_WORDS = {
    "grass": ("grass", "grass", "grass", "manicured lawn", "mature lawn", "well-kept grass"),
    "sand": ("sand", "sand", "sand", "beachfront sand", "raked sand", "seafront sand"),
    "snow": ("snow", "snow", "snow", "alpine snow", "winter snow", "drifted snow"),
}
B9_GROUND_ADJ = {
    "grass": ("grassy", "grassy", "lawned"),
    "sand": ("sandy", "sandy", "sand-floored"),
    "snow": ("snowy", "snowy", "snow-decked"),
}
# when the brochure photos were taken (the time frames read "photographed {t}", "captured {t}"...)
B9_TIME_WORDS = {
    "night": ("at night", "at night", "at night", "tonight", "in the evening", "once the sun has set"),
    "day": (
        "during the day",
        "during the day",
        "during the day",
        "in the morning",
        "in the afternoon",
        "while the sun is up",
    ),
}
# the weather in the photos, said or denied (the rain frames read "pictured {r}", "presented {r}"...)
B9_RAIN_WORDS = {
    True: (
        "with rain falling",
        "with rain falling",
        "with rain falling",
        "with a steady shower",
        "with drizzle coming down",
        "with rain pouring down",
    ),
    False: (
        "with no rain",
        "with no rain",
        "with no rain",
        "with dry weather",
        "with clear skies",
        "with rain holding off",
    ),
}

B9_OBJECT = (
    "{d} {c} {k} to the {s} of the plot",
    "boasting {d} {c} {k} beside the {s} frontage",
    "across the {s} elevation, {d} {c} {k}",
    "{d} {c} {k} enjoying a spot on the {s}",
    "benefiting from {d} {c} {k} on its {s}",
    "{d} {c} {k} recessed on the {s}",
    "{d} {c} {k} occupying the {s} flank",
    "the {s} wing features {d} {c} {k}",
    "{d} {c} {k} tucked away to the {s}",
    "sat proudly on the {s}, {d} {c} {k}",
    "{d} {c} {k} fronting the {s} boundary",
    "{d} {c} {k} gracing the {s} corner",
    "to the {s}: {d} {c} {k}",
    "{d} {c} {k}, ideally sited on the {s}",
)
B9_GROUND = (
    "grounds laid to {n}",
    "the plot is {a} throughout",
    "{n} from boundary to boundary",
    "a {a} plot",
    "surrounded by {n}",
    "sited upon {a} grounds",
    "a flat expanse of {n}",
)
B9_TIME = ("photographed {t}", "best appreciated {t}", "viewings strictly {t}", "captured {t}", "shown here {t}")
B9_RAIN = (
    "pictured {r}",
    "{r} in the photos",
    "presented {r}",
    "{r}, per the brochure",
    "brochure shot {r}",
)
B9_CARRIERS = (
    "freshly on the market:",
    "recently listed:",
    "we are delighted to offer",
    "particulars:",
    "an opportunity to acquire",
    "highly recommended:",
    "agent's description:",
    "on offer here is",
    "introducing",
    "price on application:",
    "",
)
B9_TAILS = (
    "",
    "",
    "early viewing advised",
    "offers invited",
    "book your viewing today",
    "an exceptional home",
    "viewing by appointment",
)
B9_JOINERS = (" besides, ", " moreover, ", " — ", " • ", " ~ ", " ♦ ")
B9_FILLERS = (
    "deceptively spacious",
    "sought-after",
    "bijou",
    "immaculate",
    "stunning",
    "charming",
    "desirable",
    "characterful",
    "tastefully appointed",
    "rarely available",
)
B9_NOTHING = (
    "how much is stamp duty on a flat",
    "how do i get a mortgage in principle",
    "a squirrel haggling over the asking price",
    "write me a tenancy agreement",
    "should i rent or buy",
    "explain what leasehold means",
    "compose a limerick about estate agents",
    "how do i dispute a deposit deduction",
    "a tortoise moving house very slowly",
    "recommend a good conveyancer",
    "how do i bleed a radiator",
    "an otter renovating a townhouse",
    "which suburbs have good schools",
    "calculate my monthly repayments",
)
B9_EVENTS: dict[str, tuple[str, ...]] = {
    "it starts to rain": (
        "rain has started falling on the rooftops",
        "it's begun to rain",
        "wheel in a rain shower",
        "a sudden shower has arrived over the plot",
        "the heavens have opened",
        "in rolls the rain over the garden wall",
        "let's get some rain going",
        "drizzle starting up now",
        "the gutters are filling with fresh rain",
        "could you make it rain on the property",
        "it will rain any second now",
        "raindrops are tapping on the roof",
        "we'd like a rainy spell to begin",
        "downpour incoming",
        "the sky's opened up and it's pouring",
        "switch on the rain",
        "start the drizzle",
    ),
    "the rain stops": (
        "the rain has stopped",
        "end the shower",
        "the downpour has finally ceased",
        "can we bring the rain to a halt",
        "the rain has ended for good",
        "the drizzle has cleared",
        "stop the rain please",
        "no more rain, switch it off",
        "the showers are clearing away",
        "make the rain quit",
        "the storm eased and the rain ended",
        "rain finished",
        "that's the end of the rain",
        "shut off the rain",
        "the rain eased and then stopped completely",
        "it's stopped raining",
    ),
    "night falls": (
        "night has fallen",
        "the sun has gone down",
        "evening has arrived over the estate",
        "dusk is settling over the neighbourhood",
        "bring on the evening",
        "it's dark outside now",
        "the moon has risen",
        "take us to midnight",
        "time to turn in, it's night",
        "the streetlamps flicker on at dusk",
        "sunset, please",
        "let the stars appear",
        "switch the time to night",
        "it's getting dark",
        "darkness has crept in",
        "we've hit twilight",
        "make it the small hours",
    ),
    "day breaks": (
        "day has broken",
        "the sun is coming up",
        "dawn has arrived",
        "good morning everyone, the sun's out",
        "bring on the morning",
        "sunrise, please",
        "it's light outside again",
        "the birds are singing at dawn",
        "take us to the morning",
        "the sun came up over the rooftops",
        "switch the time to day",
        "morning has come",
        "let the sun shine in",
        "daylight has flooded in",
        "wake up, it's daytime",
        "the night is over and it's morning",
        "make it noon",
    ),
}
B9_EVENT_CARRIERS = (
    "",
    "",
    "agent here:",
    "update from the vendor:",
    "memo to prospective buyers:",
    "per the listing,",
    "estate office:",
    "dear applicants,",
)
B9_EVENT_NONE = (
    "jump over the box",
    "knock on the door",
    "peer to the left",
    "put the game on hold a moment",
    "what's the asking price",
    "let it snow",
    "a gust of wind blows through",
    "crawl under the fence",
    "show me the floor plan",
    "sprint to the right",
    "sit down on the box",
    "how many lives have i got",
    "mute the sound effects",
    "wave at the neighbours",
)

# words a repeat could turn into a double negation ("no no rain"): never typed twice
_NEGATIONS = frozenset(("no", "not", "never", "nor", "none", "nothing", "without", "nope"))


def _typo(word: str, rng: random.Random) -> str:
    """This set's typo process: the writer's eye jumping back, the whole word typed twice in a row
    ("the the", "door door"): no letter is added, lost, changed or moved inside a word, and a
    negation is never repeated, so a typo never turns one attribute word into another nor flips
    what is denied."""
    if not word.isascii() or not word.isalpha() or not word.islower() or word in _NEGATIONS:
        return word
    return f"{word} {word}"


BLIND9 = Phrasing(
    B9_OBJECT,
    B9_GROUND,
    B9_TIME,
    B9_RAIN,
    B9_CARRIERS,
    B9_TAILS,
    B9_JOINERS,
    B9_FILLERS,
    B9_NOTHING,
    B9_EVENTS,
    B9_EVENT_CARRIERS,
    B9_EVENT_NONE,
    _typo,
    typo_rate=0.06,
    determiners=("a", "a", "a", "the", "one", "a charming"),
    shuffle=0.4,
    say_when_silent="ground",
    colours=B9_COLOURS,
    kinds=B9_KINDS,
    ground_words=B9_GROUND_WORDS,
    ground_adj=B9_GROUND_ADJ,
    time_words=B9_TIME_WORDS,
    rain_words=B9_RAIN_WORDS,
)


def blind9(seed: int = 11887, n_prompts: int = 400, n_events: int = 200) -> list[Item]:
    """The eleventh (blind) held-out set: ``n_prompts`` prompts then ``n_events`` event texts."""
    return generate_items(BLIND9, seed, n_prompts, n_events)


def template_strings() -> list[str]:
    """Every template, carrier, joiner, filler and phrase (the disjointness test reads them)."""
    return BLIND9.strings()
