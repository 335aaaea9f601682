"""A NINTH held-out set for the text model, written by a helper who was blind to the training
generator (``text_data``), the reading vocabulary (``text_words``, the aliases), the trainer, the
training sources and the text app, and who neither ran the model nor read its card. The helper
read only the world's vocabulary (``common.caption``), the ``Phrasing`` machinery of the first set
(``text_heldout``), the third to eighth sets (``text_blind`` ... ``text_blind6``) for their
interface, their file shape and their typo habits, and the tests; everything below is written
fresh. The only word the helper could learn about the training phrases was from the test's clash
message (a word of these templates that is also a word of the training ones), and such words were
replaced. Run it once per shipped model, after the model is chosen, and do not tune anything on
its misses.

Its own: object, ground, time and rain frames, request carriers, tails, joiners, extra words,
texts naming nothing, event carriers and phrasings (thirteen or more per event), texts naming no
event, and the attribute words (the canonical word about half the time, otherwise plain everyday
synonyms whose value nobody would dispute; only two times of day, and rain said or denied as a
bare verb phrase after a modal, "it should pour" or "it must not rain", negations included). Its
typo process is its own too: a slip of the shift key, no letter changed, added, lost or moved,
only their case: the shift held a beat too long (the first two letters in capitals, "GRass"), or
caps lock left on for the whole word ("DOOR"); so a typo never turns one attribute word into
another. Like the earlier sets it imports nothing from the training generator nor its words, and a
test checks that its strings appear in none of the training lists.

``blind7(seed=9151)``: 400 prompts (about 5% naming nothing) and 200 event texts (about 10%
naming no event), each with its expected answer. Its tables: 14 object, 7 ground, 5 time and
5 rain frames; 10 request carriers (and none), 6 tails (and none), 6 joiners, 10 extra words,
14 texts naming nothing; 13 or 14 phrasings per event, 7 event carriers (and none), 14 texts naming no
event; per colour, kind, ground, time of day and rain value 4 distinct attribute words (the
canonical one weighted to half), 2 ground adjectives.
"""

from __future__ import annotations

import random

from .text_heldout import Item, Phrasing, generate_items

B7_COLOURS = {
    "red": ("red", "red", "red", "stop-sign red", "racing red", "rich red"),
    "blue": ("blue", "blue", "blue", "poster-paint blue", "marine blue", "glossy blue"),
    "yellow": ("yellow", "yellow", "yellow", "highlighter yellow", "school-bus yellow", "yolk yellow"),
    "purple": ("purple", "purple", "purple", "petunia purple", "thistle purple", "matte purple"),
    "pink": ("pink", "pink", "pink", "piglet pink", "cotton-candy pink", "matte pink"),
    "cyan": ("cyan", "cyan", "cyan", "printer-ink cyan", "poster-paint cyan", "glossy cyan"),
}
B7_KINDS = {
    "door": ("door", "door", "door", "plank door", "cottage door", "glass door"),
    "box": ("box", "box", "box", "tin box", "lidded box", "toy box"),
}
B7_GROUND_WORDS = {
    "grass": ("grass", "grass", "grass", "clipped grass", "knee-high grass", "velvety grass"),
    "sand": ("sand", "sand", "sand", "silky sand", "smooth sand", "sifted sand"),
    "snow": ("snow", "snow", "snow", "firm snow", "snowpack", "fluffy snow"),
}
B7_GROUND_ADJ = {
    "grass": ("grassy", "grassy", "grass-grown"),
    "sand": ("sandy", "sandy", "sand-dusted"),
    "snow": ("snowy", "snowy", "snow-dusted"),
}
B7_TIME_WORDS = {
    "night": ("night", "night", "night", "the dead of night", "the witching hour", "nightfall"),
    "day": ("day", "day", "day", "sunup", "breakfast time", "mid-afternoon"),
}
# bare verb phrases after a modal (the rain frames read "it'd better {r}", "it must {r} here"...):
# the rain said or denied
B7_RAIN_WORDS = {
    True: ("rain", "rain", "rain", "pour", "drizzle", "be raining"),
    False: ("not rain", "not rain", "not rain", "be dry", "be free of rain", "not be raining"),
}

B7_OBJECT = (
    "{d} {c} {k} shows up on the {s}",
    "{d} {c} {k} tight against the {s} limit",
    "{d} {c} {k} deposited on the {s}",
    "across on the {s} sits {d} {c} {k}",
    "{d} {c} {k} toward the {s} stretch",
    "{d} {c} {k} making itself at home on the {s}",
    "{d} {c} {k}, hard {s}",
    "{d} {c} {k} claiming the {s}",
    "{d} {c} {k} you reach by heading {s}",
    "walk {s} and you'll bump into {d} {c} {k}",
    "{d} {c} {k} lives on the {s}",
    "{d} {c} {k} holding down the {s}",
    "{d} {c} {k} beckoning from the {s}",
    "{d} {c} {k} whose spot is the {s}",
)
B7_GROUND = (
    "the base layer is {n}",
    "endless {n}",
    "{n} under the player's boots",
    "a {a} region",
    "mostly {n} down below",
    "{a} country, {n} underneath",
    "running across {n}",
)
B7_TIME = (
    "{t}, i reckon",
    "{t} across the whole map",
    "chosen timing: {t}",
    "the time is {t}",
    "{t} from the opening moment",
)
B7_RAIN = (
    "it'd better {r}",
    "it will {r} round these parts",
    "it must {r} here",
    "it's meant to {r}",
    "it's supposed to {r}",
)
B7_CARRIERS = (
    "i'll take",
    "sort me out with",
    "slap together",
    "roll out",
    "whittle out",
    "dish up",
    "fix me up with",
    "my order:",
    "the plan:",
    "erect",
    "",
)
B7_TAILS = ("", "", "at your pace", "your call", "grazie mille", "looking forward to it", "merci", "gracias")
B7_JOINERS = (" p.s. ", " *and* ", " ,, ", " ooh and ", " ~*~ ", " bonus: ")
B7_FILLERS = ("jeepers", "fundamentally", "ughhh", "omg", "wheee", "cutesy", "retro", "epic", "teensy", "goofy")
B7_NOTHING = (
    "how many bones are in the human body",
    "write a sonnet about my bicycle",
    "what year did the titanic sink",
    "a squirrel running for mayor",
    "tips for growing tomatoes",
    "how do i boil an egg",
    "a sloth teaching yoga",
    "recommend a horror film",
    "a turtle opening a bakery",
    "why is the ocean salty",
    "summarise the french revolution",
    "an octopus knitting socks",
    "proofread my cover letter",
    "which vegetables can rabbits eat",
)
B7_EVENTS: dict[str, tuple[str, ...]] = {
    "it starts to rain": (
        "go ahead and rain",
        "time to get everyone soaked with rain",
        "let some rain come down",
        "it's beginning to rain",
        "let loose the rain",
        "wring the clouds out over us",
        "make it pelt down with rain",
        "rain should be falling now",
        "we're due a downpour, bring it",
        "give the level a good soaking of rain",
        "i'd like a wet spell to begin",
        "put some drizzle in the air",
        "could the rain get going",
    ),
    "the rain stops": (
        "the rain's done, clear the clouds",
        "let the rain peter out and stop",
        "hold the rain, stop it there",
        "the rain is through, end it",
        "stop the wet weather",
        "bring the drizzle to a close",
        "i'm done with rain, make it stop",
        "the showers have cleared",
        "let the clouds clear and the rain end",
        "put the rain to rest, end it",
        "halt all rainfall",
        "dry weather again, stop the rain",
        "the downpour has stopped at last",
        "pack up the rain, it's finished",
    ),
    "night falls": (
        "let the night take over",
        "the sun goes down now",
        "turn the clock to evening",
        "night, come on in",
        "time for bed, it's night now",
        "let the moon rise",
        "stars out, night is here",
        "tip us into the night",
        "dusk is here, let night settle",
        "switch the sky over to night",
        "evening has arrived",
        "on to the night",
        "lower the sun and bring the night",
    ),
    "day breaks": (
        "let the sun peek over the horizon",
        "morning is here",
        "good morning world, the sun is up",
        "turn the clock to morning",
        "day, come on in",
        "sun up now please",
        "the night is done, bring the day",
        "switch the sky over to day",
        "let the dawn in",
        "roust the sun out of bed",
        "on to the morning",
        "bring up the sun",
        "raise the sun high",
        "dawn has arrived",
    ),
}
B7_EVENT_CARRIERS = ("", "", "rapido,", "mmm,", "dude,", "everyone,", "anyways,", "machine,", "golly,")
B7_EVENT_NONE = (
    "hop onto the box",
    "swing the door open",
    "grab the box and carry it",
    "look over to the left",
    "bury everything in snow",
    "make the wind howl",
    "freeze play for a minute",
    "how do i double jump",
    "this level is so fun",
    "show me my achievements",
    "sprint to the right",
    "wave at the other player",
    "exit to desktop",
    "kick the door down",
)


def _typo(word: str, rng: random.Random) -> str:
    """This set's typo process: a slip of the shift key, only the case of letters changed (none is
    changed, added, lost or moved): the shift held a beat too long, the first two letters in
    capitals ("GRass"), or caps lock left on, the whole word in capitals ("DOOR"). A word stays
    the same word, so a typo never turns one attribute word into another."""
    if len(word) < 3 or not word.isalpha() or not word.islower():
        return word
    if rng.random() < 0.6:
        return word[:2].upper() + word[2:]
    return word.upper()


BLIND7 = Phrasing(
    B7_OBJECT,
    B7_GROUND,
    B7_TIME,
    B7_RAIN,
    B7_CARRIERS,
    B7_TAILS,
    B7_JOINERS,
    B7_FILLERS,
    B7_NOTHING,
    B7_EVENTS,
    B7_EVENT_CARRIERS,
    B7_EVENT_NONE,
    _typo,
    typo_rate=0.12,
    determiners=("a", "a", "a", "the", "that", ""),
    shuffle=0.45,
    say_when_silent="ground",
    colours=B7_COLOURS,
    kinds=B7_KINDS,
    ground_words=B7_GROUND_WORDS,
    ground_adj=B7_GROUND_ADJ,
    time_words=B7_TIME_WORDS,
    rain_words=B7_RAIN_WORDS,
)


def blind7(seed: int = 9151, n_prompts: int = 400, n_events: int = 200) -> list[Item]:
    """The ninth (blind) held-out set: ``n_prompts`` prompts then ``n_events`` event texts."""
    return generate_items(BLIND7, seed, n_prompts, n_events)


def template_strings() -> list[str]:
    """Every template, carrier, joiner, filler and phrase (the disjointness test reads them)."""
    return BLIND7.strings()
