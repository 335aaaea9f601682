"""A TENTH held-out set for the text model, written by a helper who was blind to the training
generator (``text_data``), the reading vocabulary (``text_words``, the aliases), the trainer, the
training sources and the text app, and who neither ran the model nor read its card. The helper
read only the world's vocabulary (``common.caption``), the ``Phrasing`` machinery of the first set
(``text_heldout``), the third to ninth sets (``text_blind`` ... ``text_blind7``) for their
interface, their file shape and their typo habits, and the tests; everything below is written
fresh. The only word the helper could learn about the training phrases was from the test's clash
message (a word of these templates that is also a word of the training ones), and such words were
replaced. Run it once per shipped model, after the model is chosen, and do not tune anything on
its misses.

Its voice is a cookbook writer's: a world is asked for as a recipe card (ingredients, method,
"plant one box on the left", "a bed of sand", "brunch service"), colours named after the larder
and the times of day after meals. Its own: object, ground, time and rain frames, request
carriers, tails, joiners, extra words, texts naming nothing, event carriers and phrasings (sixteen
or more per event, of varied verb, subject, tense and shape), texts naming no event, and the
attribute words (the canonical word about half the time, otherwise plain everyday synonyms whose
value nobody would dispute; only two times of day, and rain said or denied as an instruction of
the recipe, "let it rain" or "keep it dry", the rain denied by leaving it out). Its typo process is its own too:
a phone's long press, one letter held a beat too long so that it comes out with an accent mark
("snöw", "bòx", "pañtry"): no letter is added, lost or moved and the letter under the mark stays,
so a typo never turns one attribute word into another. Like the earlier sets it imports nothing
from the training generator nor its words, and a test checks that its strings appear in none of
the training lists.

``blind8(seed=10531)``: 400 prompts (about 5% naming nothing) and 200 event texts (about 10%
naming no event), each with its expected answer. Its tables: 14 object, 7 ground, 5 time and
5 rain frames; 10 request carriers (and none), 5 tails (and none), 6 joiners, 10 extra words,
14 texts naming nothing; 16 or 17 phrasings per event, 6 event carriers (and none), 14 texts naming
no event; per colour, kind, ground, time of day and rain value 4 distinct attribute words (the
canonical one weighted to half), 2 ground adjectives.
"""

from __future__ import annotations

import random

from .text_heldout import Item, Phrasing, generate_items

B8_COLOURS = {
    "red": ("red", "red", "red", "chilli red", "raspberry red", "radish red"),
    "blue": ("blue", "blue", "blue", "teapot blue", "delft blue", "kingfisher blue"),
    "yellow": ("yellow", "yellow", "yellow", "sweetcorn yellow", "pineapple yellow", "saffron yellow"),
    "purple": ("purple", "purple", "purple", "damson purple", "beetroot purple", "fig purple"),
    "pink": ("pink", "pink", "pink", "salmon pink", "rhubarb pink", "sugar pink"),
    "cyan": ("cyan", "cyan", "cyan", "vibrant cyan", "cool cyan", "sharp cyan"),
}
B8_KINDS = {
    "door": ("door", "door", "door", "pantry door", "kitchen door", "larder door"),
    "box": ("box", "box", "box", "bread box", "lunchbox", "cake box"),
}
B8_GROUND_WORDS = {
    "grass": ("grass", "grass", "grass", "garden grass", "spongy grass", "bouncy grass"),
    "sand": ("sand", "sand", "sand", "sugary sand", "crumbly sand", "gritty sand"),
    "snow": ("snow", "snow", "snow", "puffy snow", "sparkling snow", "whipped snow"),
}
B8_GROUND_ADJ = {
    "grass": ("grassy", "grassy", "grass-coated"),
    "sand": ("sandy", "sandy", "sand-coated"),
    "snow": ("snowy", "snowy", "snow-coated"),
}
# bare nouns, named after meals and bedtime (the time frames read "{t} service", "{t} it is"...)
B8_TIME_WORDS = {
    "night": ("night", "night", "night", "bedtime", "suppertime", "sundown"),
    "day": ("day", "day", "day", "brunch", "lunch hour", "daybreak"),
}
# instructions of the recipe (the rain frames read "be sure to {r}", "{r} to finish"...): the rain
# said or denied
B8_RAIN_WORDS = {
    True: ("let it rain", "let it rain", "let it rain", "add a rainstorm", "let the drizzle fall", "bring a downpour"),
    False: ("keep it dry", "keep it dry", "keep it dry", "leave out the rain", "spare us the rain", "skip the rain"),
}

B8_OBJECT = (
    "plant {d} {c} {k} on the {s}",
    "{d} {c} {k}, plated to the {s}",
    "arrange {d} {c} {k} by the {s} rim",
    "tuck {d} {c} {k} in on the {s}",
    "stir in {d} {c} {k} at the {s}",
    "{d} {c} {k} goes on the {s}",
    "ease {d} {c} {k} down on the {s}",
    "garnish the {s} with {d} {c} {k}",
    "{d} {c} {k} reserved for the {s} half",
    "dollop {d} {c} {k} onto the {s}",
    "fold in {d} {c} {k} on the {s}",
    "lay {d} {c} {k} across the {s} half",
    "{d} {c} {k} portioned out on the {s}",
    "onto the {s}, spoon {d} {c} {k}",
)
B8_GROUND = (
    "a bed of {n}",
    "spread {n} underneath",
    "line the base with {n}",
    "on a {a} base",
    "{n}, evenly spread",
    "a {a} foundation",
    "a generous layer of {n} below",
)
B8_TIME = ("{t} service", "{t} it is", "ready in time for {t}", "the {t} seating", "for the {t} crowd")
B8_RAIN = ("{r}, naturally", "{r} to finish", "{r} throughout", "be sure to {r}", "{r}, chef's orders")
B8_CARRIERS = (
    "recipe:",
    "ingredients:",
    "today we're making this -",
    "you will require:",
    "the recipe reads:",
    "for this dish:",
    "from my kitchen:",
    "prep list:",
    "method, step by step:",
    "shopping basket:",
    "",
)
B8_TAILS = ("", "", "bon appetit", "season to taste", "enjoy every bite", "yum", "that's the recipe")
B8_JOINERS = (" next, ", " subsequently, ", " -> ", " :: ", " meanwhile, ", " afterwards, ")
B8_FILLERS = ("mmm", "voila", "delish", "gently", "lovingly", "scrumptious", "tasty", "hearty", "yummy", "saucy")
B8_NOTHING = (
    "how long should i knead bread dough",
    "what can i use instead of buttermilk",
    "a beaver flipping omelettes",
    "convert cups to grams",
    "why does yeast make dough puff up",
    "a goose judging a pie contest",
    "compose a jingle about porridge",
    "which knife is best for onions",
    "how do i keep basil alive",
    "a hedgehog running a noodle shop",
    "tell me about the history of pasta",
    "what wine goes with fish",
    "how many teaspoons are in a tablespoon",
    "a badger writing a cookbook",
)
B8_EVENTS: dict[str, tuple[str, ...]] = {
    "it starts to rain": (
        "rain, please, and lots of it",
        "the first drops are falling",
        "it's started raining",
        "the sky has sprung a leak",
        "we're getting rained on",
        "can we have some rain",
        "a shower is rolling in",
        "rain begins to patter on the roof",
        "drizzle now",
        "a cloudburst just hit us",
        "make it rain on everything",
        "rain has begun",
        "the rain has arrived",
        "i want to hear rain falling",
        "start up a shower of rain",
        "rainfall, starting now",
        "it's begun to pour",
    ),
    "the rain stops": (
        "the rain has finally stopped",
        "the rain has come to an end",
        "that's enough rain, end it now",
        "the downpour is easing to a stop",
        "the rain's all done now",
        "the showers ended a minute ago",
        "the skies are clearing, rain's done",
        "tell the rain to knock it off",
        "can the rain stop please",
        "no more rain, stop it",
        "the drizzle just quit",
        "let the rain taper off to nothing",
        "it's drying out, the rain has ended",
        "the storm is ending",
        "put an end to the showers",
        "the clouds have cleared and the rain is gone",
    ),
    "night falls": (
        "the sun set a while back",
        "evening's here",
        "bats are flying, it's night now",
        "the sun dipped below the hills",
        "darkness is falling over the level",
        "the moon's up",
        "lights out, it's night",
        "we're into the evening now",
        "dusk settles in",
        "it got dark out",
        "sunset, now",
        "nighttime, if you please",
        "the stars are coming out",
        "twilight, then night",
        "make it late at night",
        "we've reached nighttime",
        "the sky goes dark",
    ),
    "day breaks": (
        "the sun has risen",
        "a sunrise would be lovely",
        "it's morning already",
        "everyone up, it's daytime",
        "dawn broke a moment ago",
        "haul the sun up over the hills",
        "the night has ended",
        "the day has begun",
        "time for breakfast, the sun is out",
        "bring the morning round",
        "the rooster crows, it's day",
        "move us on to the afternoon",
        "make it bright and sunny",
        "daylight has returned",
        "the sun's up now",
        "light up the sky, morning's here",
        "it's dawn",
    ),
}
B8_EVENT_CARRIERS = ("", "", "chef,", "kitchen,", "yes chef,", "look lively,", "next course:", "order up:")
B8_EVENT_NONE = (
    "hop up onto the crate",
    "push the box to the wall",
    "open the door quietly",
    "glance over to the right",
    "start a blizzard",
    "have a breeze ruffle my hair",
    "save the game here, please",
    "turn the music down",
    "which button makes me jump",
    "duck down behind the box",
    "i'm hungry",
    "start this stage over",
    "blow a strong wind across the level",
    "sprinkle the level with flurries",
)

# a long press on a phone keyboard: the letters it offers with an accent mark
_LONG_PRESS = {
    "a": "àáâä",
    "e": "èéêë",
    "i": "ìíîï",
    "o": "òóôö",
    "u": "ùúûü",
    "c": "ç",
    "n": "ñ",
}


def _typo(word: str, rng: random.Random) -> str:
    """This set's typo process: a phone's long press, one letter of a word of three letters or more
    held a beat too long so that it comes out with an accent mark ("snöw", "bòx", "pañtry"): no
    letter is added, lost or moved and the letter under the mark stays, so a typo never turns one
    attribute word (all plain letters) into another."""
    if len(word) < 3 or not word.isascii() or not word.isalpha() or not word.islower():
        return word
    spots = [i for i, ch in enumerate(word) if ch in _LONG_PRESS]
    if not spots:
        return word
    i = rng.choice(spots)
    return word[:i] + rng.choice(_LONG_PRESS[word[i]]) + word[i + 1 :]


BLIND8 = Phrasing(
    B8_OBJECT,
    B8_GROUND,
    B8_TIME,
    B8_RAIN,
    B8_CARRIERS,
    B8_TAILS,
    B8_JOINERS,
    B8_FILLERS,
    B8_NOTHING,
    B8_EVENTS,
    B8_EVENT_CARRIERS,
    B8_EVENT_NONE,
    _typo,
    typo_rate=0.12,
    determiners=("a", "a", "a", "one", "the", "a single"),
    shuffle=0.4,
    say_when_silent="time",
    colours=B8_COLOURS,
    kinds=B8_KINDS,
    ground_words=B8_GROUND_WORDS,
    ground_adj=B8_GROUND_ADJ,
    time_words=B8_TIME_WORDS,
    rain_words=B8_RAIN_WORDS,
)


def blind8(seed: int = 10531, n_prompts: int = 400, n_events: int = 200) -> list[Item]:
    """The tenth (blind) held-out set: ``n_prompts`` prompts then ``n_events`` event texts."""
    return generate_items(BLIND8, seed, n_prompts, n_events)


def template_strings() -> list[str]:
    """Every template, carrier, joiner, filler and phrase (the disjointness test reads them)."""
    return BLIND8.strings()
