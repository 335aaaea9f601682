"""A TWELFTH held-out set for the text model, written by a helper who was blind to the training
generator (``text_data``), the reading vocabulary (``text_words``, the aliases), the trainer, the
training sources and the text app, and who neither ran the model nor read its card. The helper
read only the world's vocabulary (``common.caption``), the ``Phrasing`` machinery of the first set
(``text_heldout``), the third to eleventh sets (``text_blind`` ... ``text_blind9``) for their
interface, their file shape and their typo habits, and the tests; everything below is written
fresh. The only word the helper could learn about the training phrases was from the test's clash
message (a word of these templates that is also a word of the training ones), and such words were
replaced. Run it once per shipped model, after the model is chosen, and do not tune anything on
its misses.

Its voice is a pilot's on the radio to the control tower: a world is asked for as a radio call
(a request to the tower, traffic "off the left wing" or "on the right stand", the surface the
aircraft touches down on, the local time on arrival, the weather as a report, "reporting steady
rain" or "wx: no rain"), colours in the words of aviation markings ("beacon red", "taxiway blue",
"hi-vis yellow") and the everyday times of day a player would type (evening, midnight, morning,
noon, afternoon). Its own: object, ground, time and rain frames, request carriers, tails,
joiners, extra words, texts naming nothing, event carriers and phrasings (seventeen per event, of
varied verb, subject, tense and shape), texts naming no event, and the attribute words (the
canonical word about half the time, otherwise plain everyday synonyms whose value nobody would
dispute; only two times of day, and rain reported or denied as a noun phrase of a weather report,
negations included). Its typo process is its own too: a word copied from a handwritten flight
strip, one letter misread as one that looks like it and typed so ("sn0w" with a zero, "1eft" with
a one, "rnorning" for "morning", "vving" for "wing", "sancl" for "sand"): no letter is moved and the
word keeps its shape, a negation is never touched and never a result that is another attribute
word. Like the earlier sets it imports nothing from the training generator nor its words, and a
test checks that its strings appear in none of the training lists.

``blind10(seed=13331)``: 400 prompts (about 5% naming nothing) and 200 event texts (about 10%
naming no event), each with its expected answer. Its tables: 15 object, 7 ground, 5 time and
5 rain frames; 10 request carriers (and none), 5 tails (and none), 6 joiners, 10 extra words,
14 texts naming nothing; 17 phrasings per event, 6 event carriers (and none), 15 texts naming
no event; per colour, kind, ground, time of day and rain value 4 distinct attribute words (the
canonical one weighted to half), 2 ground adjectives.
"""

from __future__ import annotations

import random

from .text_heldout import Item, Phrasing, generate_items

B10_COLOURS = {
    "red": ("red", "red", "red", "beacon red", "fiery red", "warning red"),
    "blue": ("blue", "blue", "blue", "taxiway blue", "solid blue", "bright blue"),
    "yellow": ("yellow", "yellow", "yellow", "hi-vis yellow", "marker yellow", "caution yellow"),
    "purple": ("purple", "purple", "purple", "vivid purple", "plain purple", "bold purple"),
    "pink": ("pink", "pink", "pink", "neon pink", "soft pink", "bright pink"),
    "cyan": ("cyan", "cyan", "cyan", "crisp cyan", "electric cyan", "solid cyan"),
}
B10_KINDS = {
    "door": ("door", "door", "door", "hangar door", "cabin door", "cockpit door"),
    "box": ("box", "box", "box", "cargo box", "freight crate", "supply box"),
}
B10_GROUND_WORDS = {
    "grass": ("grass", "grass", "grass", "grass strip", "open pasture", "cropped grass"),
    "sand": ("sand", "sand", "sand", "sand flats", "hard-packed sand", "drifting sand"),
    "snow": ("snow", "snow", "snow", "snow cover", "compacted snow", "new snow"),
}
B10_GROUND_ADJ = {
    "grass": ("grassy", "grassy", "grass-surfaced"),
    "sand": ("sandy", "sandy", "sand-surfaced"),
    "snow": ("snowy", "snowy", "snow-surfaced"),
}
# the local time on arrival (the time frames read "local time: {t}", "{t} operations"...)
B10_TIME_WORDS = {
    "night": ("night", "night", "night", "evening", "midnight", "dusk"),
    "day": ("day", "day", "day", "morning", "noon", "afternoon"),
}
# the weather as a report, rain said or denied (the rain frames read "reporting {r}", "wx: {r}"...)
B10_RAIN_WORDS = {
    True: ("rain", "rain", "rain", "rain showers", "steady rain", "a downpour"),
    False: ("no rain", "no rain", "no rain", "no precipitation", "no showers", "dry skies"),
}

B10_OBJECT = (
    "{d} {c} {k} off the {s} wing",
    "{d} {c} {k} out on the apron, {s}",
    "traffic: {d} {c} {k} on your {s}",
    "{d} {c} {k} holding short on the {s}",
    "{d} {c} {k} parked on the {s} stand",
    "{s} of the taxiway, {d} {c} {k}",
    "be aware of {d} {c} {k} to your {s}",
    "confirm {d} {c} {k} {s} of us",
    "{d} {c} {k} abeam on the {s}",
    "{d} {c} {k} sighted {s} of the runway",
    "{s} of the threshold, {d} {c} {k}",
    "{d} {c} {k} reported {s}",
    "tally {d} {c} {k}, out to the {s}",
    "visual contact with {d} {c} {k}, {s}",
    "{d} {c} {k} sits by the {s} hangar",
)
B10_GROUND = (
    "surface is {n}",
    "touchdown on {n}",
    "a {a} strip",
    "rolling out onto {n}",
    "the whole aerodrome is {a}",
    "runway condition: {n}",
    "{n} beneath, wingtip to wingtip",
)
B10_TIME = (
    "local time: {t}",
    "it'll be {t} on arrival",
    "{t} operations",
    "{t} by the time we're down",
    "scheduled for {t}",
)
B10_RAIN = (
    "current weather {r}",
    "reporting {r}",
    "wx: {r}",
    "{r} at the airport",
    "be advised, {r}",
)
B10_CARRIERS = (
    "tower, requesting",
    "dispatch, request",
    "approach, looking for",
    "requesting clearance into",
    "flight plan:",
    "cockpit to tower, arrange",
    "inbound, request",
    "tower, we're after",
    "radio call:",
    "captain speaking, prepare",
    "",
)
B10_TAILS = (
    "",
    "",
    "monitoring this frequency",
    "do you read",
    "read back when ready",
    "awaiting clearance",
    "tower, acknowledge",
)
B10_JOINERS = (" break, ", " ~> ", " stand by, ", " further, ", " and next, ", " ^^ ")
B10_FILLERS = ("roger", "tally-ho", "affirm", "wilco", "crackle", "fzzt", "kssht", "mic-click", "bzzt", "ahh")
B10_NOTHING = (
    "how do planes stay up in the air",
    "book me an aisle seat",
    "how much luggage can i bring",
    "what does a co-pilot do",
    "a goose filing a flight plan",
    "teach me the phonetic alphabet",
    "why do my ears pop on planes",
    "a walrus flying a biplane",
    "how long is the flight to tokyo",
    "what is jet lag",
    "recommend a travel pillow",
    "a hamster working in air traffic control",
    "explain how a jet engine works",
    "a penguin studying for a pilot's licence",
)
B10_EVENTS: dict[str, tuple[str, ...]] = {
    "it starts to rain": (
        "tower, rain is starting to hit the windscreen",
        "rain is beginning to fall over the airport",
        "request rain, now",
        "first raindrops hitting the tarmac",
        "showers have moved in",
        "the wipers are on, it's raining",
        "could you start a shower over us",
        "rain developing overhead",
        "a downpour just began",
        "commence rainfall over the strip",
        "it began raining a moment ago",
        "bring in rain over the apron",
        "rain will begin shortly",
        "heavy rain now falling",
        "we are flying into rain that just started",
        "the clouds opened up and rain is coming down",
        "let it rain on the runway",
    ),
    "the rain stops": (
        "rain has ceased at the airport",
        "the showers have ended",
        "rain stopping, wipers off",
        "request the rain be stopped",
        "the downpour finished",
        "tower, cancel all rainfall at once",
        "it quit raining",
        "rain ended over the apron",
        "the rain is clearing off",
        "the rain's letting up and ending",
        "terminate the rain",
        "rain will stop shortly",
        "we've flown out of the rain, it's stopped",
        "the last of the rain has stopped falling",
        "shut down the rain",
        "rain's cleared up now",
        "can you stop it raining",
    ),
    "night falls": (
        "night is falling over the airport",
        "the sun has set, runway lights on",
        "request night",
        "evening has come in",
        "it's dark now, switching to night ops",
        "the sun went down behind the hangars",
        "we're flying into the night",
        "dusk is setting in",
        "give us nightfall",
        "make it evening",
        "stars are out tonight",
        "the moon is up over the tower",
        "it turned dark a moment ago",
        "roll the night in",
        "night will fall shortly",
        "set the clock to midnight",
        "switch over to night flying",
    ),
    "day breaks": (
        "the sun is rising over the runway",
        "dawn has broken",
        "request daylight",
        "morning has arrived at the airport",
        "first light, sun coming up",
        "it's bright daylight now",
        "give us the morning",
        "the night's over, it's day",
        "sunrise in progress",
        "the sun came up a moment ago",
        "switch to day flying",
        "daybreak has come",
        "wake up, tower, it's morning",
        "the day will break shortly",
        "bring the sun back up",
        "set the clock to noon",
        "we're flying into the dawn",
    ),
}
B10_EVENT_CARRIERS = ("", "", "tower,", "all stations,", "pilot to tower:", "cockpit here,", "mayday relay:", "apron,")
B10_EVENT_NONE = (
    "taxi over to the box",
    "jump onto the crate",
    "push the door open",
    "peek left",
    "flurries of snow, please",
    "crosswind picking up",
    "hold everything, i need a breather",
    "how do i crouch",
    "show my stats",
    "radio check, how do you read",
    "climb onto the box",
    "restart from the checkpoint",
    "mute the engine noise",
    "great landing, captain",
    "wind gusting hard now",
)

# every word of the attribute tables (and the sides): a typo never turns one into another
_GUARDED = frozenset(
    w
    for table in (B10_COLOURS, B10_KINDS, B10_GROUND_WORDS, B10_GROUND_ADJ, B10_TIME_WORDS, B10_RAIN_WORDS)
    for words in table.values()
    for phrase in words
    for w in phrase.replace("-", " ").split()
) | {"left", "right", "clay", "dark", "light", "sun", "moon", "wet"}
# words a misreading could blur into something else that is denied: never touched
_NEGATIONS = frozenset(("no", "not", "never", "nor", "none", "nothing", "without", "nope"))
# one letter (or letter pair) misread as a look-alike: where it may stand, and what is typed
_LOOK_ALIKE = {"o": "0", "l": "1", "m": "rn", "w": "vv", "d": "cl"}


def _typo(word: str, rng: random.Random) -> str:
    """This set's typo process: a word copied from a handwritten flight strip, one letter misread
    as one that looks like it and typed so: "o" as a zero ("sn0w"), "l" as a one ("1eft"), "m" as
    "rn" ("rnorning"), "w" as "vv" ("vving"), "d" (not the first letter) as "cl" ("sancl"). No letter
    is moved, a negation is never touched, and never a result that is another table word."""
    if len(word) < 3 or not word.isascii() or not word.isalpha() or not word.islower() or word in _NEGATIONS:
        return word
    spots = [i for i, ch in enumerate(word) if ch in _LOOK_ALIKE and not (ch == "d" and i == 0)]
    if not spots:
        return word
    i = rng.choice(spots)
    out = word[:i] + _LOOK_ALIKE[word[i]] + word[i + 1 :]
    return word if out in _GUARDED else out


BLIND10 = Phrasing(
    B10_OBJECT,
    B10_GROUND,
    B10_TIME,
    B10_RAIN,
    B10_CARRIERS,
    B10_TAILS,
    B10_JOINERS,
    B10_FILLERS,
    B10_NOTHING,
    B10_EVENTS,
    B10_EVENT_CARRIERS,
    B10_EVENT_NONE,
    _typo,
    typo_rate=0.12,
    determiners=("a", "a", "a", "the", "one", "your"),
    shuffle=0.45,
    say_when_silent="time",
    colours=B10_COLOURS,
    kinds=B10_KINDS,
    ground_words=B10_GROUND_WORDS,
    ground_adj=B10_GROUND_ADJ,
    time_words=B10_TIME_WORDS,
    rain_words=B10_RAIN_WORDS,
)


def blind10(seed: int = 13331, n_prompts: int = 400, n_events: int = 200) -> list[Item]:
    """The twelfth (blind) held-out set: ``n_prompts`` prompts then ``n_events`` event texts."""
    return generate_items(BLIND10, seed, n_prompts, n_events)


def template_strings() -> list[str]:
    """Every template, carrier, joiner, filler and phrase (the disjointness test reads them)."""
    return BLIND10.strings()
