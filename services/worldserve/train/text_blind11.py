"""A THIRTEENTH held-out set for the text model, written by a helper who was blind to the training
generator (``text_data``), the reading vocabulary (``text_words``, the aliases), the trainer, the
training sources and the text app, and who neither ran the model nor read its card. The helper
read only the world's vocabulary (``common.caption``), the ``Phrasing`` machinery of the first set
(``text_heldout``), the third to twelfth sets (``text_blind`` ... ``text_blind10``) for their
interface, their file shape and their typo habits, and the tests; everything below is written
fresh. The only thing the helper could learn about the training phrases was from the test's clash
message (a string of these templates that is also in the training lists), and such strings were
replaced. Run it once per shipped model, after the model is chosen, and do not tune anything on
its misses.

Its voice is a gamer's, typing fast into a chat box to a friend who is setting up the map: all
lower case, no emoji, the casual shorthand a real player types ("plz", "w/", "rn", "gimmie", "u",
"ur", "tho", "lvl"), a world asked for as a quick favour ("yo rig up", "lemme get"), things
"chillin on the left" or "posted up on ur right", the ground as a biome, the time of day as a lighting
setting, rain thrown in or waved off ("w/ heavy rain", "no rain plz"). Its own: object, ground,
time and rain frames, request carriers, tails, joiners, extra words, texts naming nothing, event
carriers and phrasings (eighteen per event, of varied verb, subject, tense and shape), texts
naming no event, and the attribute words (the canonical word about half the time, otherwise plain
everyday synonyms whose value nobody would dispute; only two times of day, in the everyday words a
player types, and rain said or denied, negations included). Its typo process is its own too: chat
shorthand of a fast typist, a word of five letters or more whose inner letters hold exactly two
vowels typed with both of them skipped ("yllw" for "yellow", "mdnght" for "midnight", "strtd" for
"started"): the first and the last letter stay, the result keeps four letters or more, a negation
(or a word whose shorthand reads as another) is never touched and never a result that is another
attribute word; its rate is raised (0.45 a word where a text is noisy) so that about as many words
are misspelt as in the earlier sets. Like the earlier sets it imports nothing from the training
generator nor its words, and a test checks that its strings appear in none of the training lists.

``blind11(seed=27191)``: 400 prompts (about 5% naming nothing) and 200 event texts (about 10%
naming no event), each with its expected answer. Its tables: 16 object, 8 ground, 7 time and
6 rain frames; 12 request carriers (and none), 7 tails (and none), 7 joiners, 10 extra words,
15 texts naming nothing; 18 phrasings per event, 8 event carriers (and none), 16 texts naming
no event; per colour, kind, ground, time of day and rain value 4 distinct attribute words (the
canonical one weighted to half), 2 ground adjectives.
"""

from __future__ import annotations

import random

from .text_heldout import Item, Phrasing, generate_items

B11_COLOURS = {
    "red": ("red", "red", "red", "cherry red", "blood red", "deep red"),
    "blue": ("blue", "blue", "blue", "royal blue", "dark blue", "navy blue"),
    "yellow": ("yellow", "yellow", "yellow", "banana yellow", "bright yellow", "lemon yellow"),
    "purple": ("purple", "purple", "purple", "grape purple", "dark purple", "deep purple"),
    "pink": ("pink", "pink", "pink", "hot pink", "bubblegum pink", "baby pink"),
    "cyan": ("cyan", "cyan", "cyan", "neon cyan", "bright cyan", "pale cyan"),
}
B11_KINDS = {
    "door": ("door", "door", "door", "wooden door", "big door", "metal door"),
    "box": ("box", "box", "box", "loot box", "storage box", "cardboard box"),
}
B11_GROUND_WORDS = {
    "grass": ("grass", "grass", "grass", "turf", "grassland", "tall grass"),
    "sand": ("sand", "sand", "sand", "beach sand", "desert sand", "sand dunes"),
    "snow": ("snow", "snow", "snow", "deep snow", "powder snow", "snowdrifts"),
}
B11_GROUND_ADJ = {
    "grass": ("grassy", "grassy", "grass-covered"),
    "sand": ("sandy", "sandy", "sand-covered"),
    "snow": ("snowy", "snowy", "snow-covered"),
}
# the time of day as a lighting setting (the time frames read "{t} lighting plz", "set it to {t}"...)
B11_TIME_WORDS = {
    "night": ("night", "night", "night", "nighttime", "midnight", "late night"),
    "day": ("day", "day", "day", "daytime", "midday", "daylight"),
}
# rain thrown in or waved off (the rain frames read "w/ {r}", "{r} plz"...)
B11_RAIN_WORDS = {
    True: ("rain", "rain", "rain", "heavy rain", "a rainstorm", "a downpour"),
    False: ("no rain", "no rain", "no rain", "zero rain", "dry weather", "no rain at all"),
}

B11_OBJECT = (
    "{d} {c} {k} on ur {s}",
    "{d} {c} {k} chillin on the {s}",
    "{s} gets {d} {c} {k}",
    "{d} {c} {k} posted up on ur {s}",
    "{s}: {d} {c} {k}",
    "{d} {c} {k} spawned {s}",
    "{d} {c} {k} stuck on the {s}",
    "{d} {c} {k} to ur {s} rn",
    "{d} {c} {k} hangin out on the {s}",
    "{d} {c} {k} (the {s} one)",
    "{d} {c} {k} slapped on the {s}",
    "{s} better get {d} {c} {k}",
    "{d} {c} {k}, {s} plz",
    "{d} {c} {k} sittin {s}",
    "{d} {c} {k} on the {s} lowkey",
    "{d} {c} {k} yeeted to the {s}",
)
B11_GROUND = (
    "{n} biome",
    "{a} biome",
    "floor's {n}",
    "standin on {n}",
    "{n} wall to wall",
    "terrain = {n}",
    "full {a} map",
    "{n} underfoot tho",
)
B11_TIME = (
    "{t} lighting plz",
    "flip it to {t}",
    "{t} vibes",
    "{t} ingame k?",
    "{t} setting",
    "lighting: {t}",
    "gotta be {t}",
)
B11_RAIN = (
    "w/ {r}",
    "{r} plz",
    "ooh n {r}",
    "{r} btw",
    "sky: {r}",
    "{r} kk",
)
B11_CARRIERS = (
    "yo rig up",
    "gimmie a lvl w/",
    "lemme get",
    "ayo cook up",
    "bro load up",
    "u got a map w/",
    "hurry n throw together",
    "aight i'm tryna get",
    "u mind whipping up a lvl w/",
    "hook me up w/",
    "plz toss in",
    "dude bust out",
    "",
)
B11_TAILS = ("", "", "thx", "ty bro", "k thx", "rn thx", "gg wp", "ur the best", "whenevs")
B11_JOINERS = (" ++ ", " 'n' ", " aand ", ", aaand ", " annnd ", " && ", " // ")
B11_FILLERS = ("lolol", "lmao", "frfr", "tbh", "bruh", "uhh", "srsly", "omg", "dude", "welp")
B11_NOTHING = (
    "brb gotta grab food",
    "whats the wifi password",
    "who won the match",
    "my controller is dying",
    "lag is so bad rn",
    "add me on steam",
    "wanna duo later",
    "how do i change my username",
    "gg ez",
    "anyone got a spare headset",
    "my cat just walked on the keyboard",
    "what patch are we on",
    "mute ur mic bro",
    "brb my mom is calling",
    "is the server down or is it just me",
)
B11_EVENTS: dict[str, tuple[str, ...]] = {
    "it starts to rain": (
        "yo turn on the rain rn",
        "ok it's pouring now lol",
        "can u make it rain on us",
        "gimme some rain",
        "rain started outta nowhere",
        "it just started raining in game",
        "bro it's raining now",
        "let the rain come down pls",
        "rain incoming",
        "cue up some rainfall",
        "the rain kicked in",
        "drop some rain on the map",
        "spawn a rainstorm",
        "raindrops everywhere now",
        "it's gonna start raining any sec",
        "flip the rain on",
        "clouds just opened up, it's raining hard",
        "need rain asap",
    ),
    "the rain stops": (
        "turn the rain off pls",
        "rain's over finally",
        "kill that rain already",
        "stop the rain rn",
        "ok it stopped raining",
        "no more rain pls",
        "rain's done lol",
        "make the rain quit",
        "the rain just ended",
        "get rid of the rain",
        "can u shut the rain off",
        "rain finally quit",
        "it's not raining anymore",
        "bro end the rain",
        "the rain cleared up",
        "rain's gonna stop in a sec",
        "that rain needs to stop",
        "flip the rain off",
    ),
    "night falls": (
        "make it night rn",
        "switch to night pls",
        "it's getting dark lol",
        "sun just went down",
        "night time now",
        "gimme night",
        "skip to night",
        "bring on the night",
        "it got dark out",
        "nightfall pls",
        "can we do night",
        "the moon's up now",
        "sunset's done, it's night",
        "fast forward to midnight",
        "it's night now bro",
        "night is coming",
        "set it to nighttime",
        "lights out, it's dark now",
    ),
    "day breaks": (
        "make it day rn",
        "switch to day pls",
        "sun's coming up",
        "it's morning now lol",
        "skip to morning",
        "gimme daylight",
        "sun's all the way up now",
        "bring back the day",
        "sunrise pls",
        "it got light out",
        "daytime now",
        "wake up it's day",
        "can we do day",
        "fast forward to noon",
        "the night's over",
        "dawn just hit",
        "day's coming",
        "set it to daytime",
    ),
}
B11_EVENT_CARRIERS = ("", "", "yoo", "bro,", "aight", "plz", "hurryyy", "ayy", "dude", "omg")
B11_EVENT_NONE = (
    "jump on the box",
    "open that door lol",
    "how do i sprint",
    "where's the save button",
    "brb",
    "lag spike",
    "my fps is trash",
    "walk left a bit",
    "go right",
    "can u make it snow lol",
    "wind's picking up",
    "nice jump",
    "pause it",
    "inventory pls",
    "who's winning",
    "push the crate",
)

# every word of the attribute tables (and the sides): a typo never turns one into another
_GUARDED = frozenset(
    w
    for table in (B11_COLOURS, B11_KINDS, B11_GROUND_WORDS, B11_GROUND_ADJ, B11_TIME_WORDS, B11_RAIN_WORDS)
    for words in table.values()
    for phrase in words
    for w in phrase.replace("-", " ").split()
) | {"left", "right", "dark", "light", "sun", "moon", "wet", "dry", "morning", "noon", "dawn"}
# words a shorthand could blur into something else that is denied: never touched
_NEGATIONS = frozenset(("no", "not", "never", "nor", "none", "nothing", "without", "nope", "zero", "anymore"))
# words whose shorthand reads as another word ("mddy": midday or muddy?): never shortened
_KEPT = frozenset(("midday",))
_VOWELS = "aeiou"


def _typo(word: str, rng: random.Random) -> str:
    """This set's typo process: chat shorthand of a fast typist, a word of five letters or more
    whose inner letters hold exactly two vowels typed with both skipped ("yllw" for "yellow",
    "mdnght" for "midnight"). The first and the last letter stay, the result keeps four letters or
    more, a negation is never touched (nor a word whose shorthand reads as another), and never a
    result that is another table word. (``rng`` is unused: a word's shorthand is always the same.)"""
    del rng
    if len(word) < 5 or not word.isascii() or not word.isalpha() or not word.islower() or word in _NEGATIONS | _KEPT:
        return word
    inner = word[1:-1]
    if sum(ch in _VOWELS for ch in inner) != 2:
        return word
    out = word[0] + "".join(ch for ch in inner if ch not in _VOWELS) + word[-1]
    return word if len(out) < 4 or out in _GUARDED else out


BLIND11 = Phrasing(
    B11_OBJECT,
    B11_GROUND,
    B11_TIME,
    B11_RAIN,
    B11_CARRIERS,
    B11_TAILS,
    B11_JOINERS,
    B11_FILLERS,
    B11_NOTHING,
    B11_EVENTS,
    B11_EVENT_CARRIERS,
    B11_EVENT_NONE,
    _typo,
    typo_rate=0.45,
    determiners=("a", "a", "a", "the", "one", "some"),
    shuffle=0.45,
    say_when_silent="ground",
    colours=B11_COLOURS,
    kinds=B11_KINDS,
    ground_words=B11_GROUND_WORDS,
    ground_adj=B11_GROUND_ADJ,
    time_words=B11_TIME_WORDS,
    rain_words=B11_RAIN_WORDS,
)


def blind11(seed: int = 27191, n_prompts: int = 400, n_events: int = 200) -> list[Item]:
    """The thirteenth (blind) held-out set: ``n_prompts`` prompts then ``n_events`` event texts."""
    return generate_items(BLIND11, seed, n_prompts, n_events)


def template_strings() -> list[str]:
    """Every template, carrier, joiner, filler and phrase (the disjointness test reads them)."""
    return BLIND11.strings()
