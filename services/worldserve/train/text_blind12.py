"""A FOURTEENTH held-out set for the text model, written by a helper who was blind to the training
generator (``text_data``), the reading vocabulary (``text_words``, the aliases), the trainer, the
training sources and the text app, and who neither ran the model nor read its card. The helper
read only the world's vocabulary (``common.caption``), the ``Phrasing`` machinery of the first set
(``text_heldout``), the third to thirteenth sets (``text_blind`` ... ``text_blind11``) for their
interface, their file shape and their typo habits, and the tests; everything below is written
fresh. The only thing the helper could learn about the training phrases was from the test's clash
message (a string of these templates that is also in the training lists), and such strings were
replaced. Run it once per shipped model, after the model is chosen, and do not tune anything on
its misses.

Its voice is a sports commentator's, calling the world live as if it were a match: a world is opened
like a broadcast ("coming to you live with", "a warm welcome, we've got"), things sit "out on the
left wing" or "down the right touchline", the ground is the playing surface ("playing surface:
packed snow", "boots kicking up soft sand"), the time of day is the match's slot ("a lunchtime
fixture", "the night session"), the weather is a conditions report ("lashing rain above the
stadium", "not a drop of rain to report"), with the commentator's exclamations and hand-overs to the
studio. Its own: object, ground, time and rain frames, request carriers, tails, joiners, extra
words, texts naming nothing, event carriers and phrasings (twenty per event, of varied verb,
including phrasal verbs, subject, tense and shape), texts naming no event, and the attribute words
(the canonical word about half the time, otherwise plain everyday synonyms whose value nobody would
dispute; only two times of day, in everyday words, and rain said or denied, negations included). Its
typo process is its own too: a keyboard switched to a German (QWERTZ) layout by an accidental
shortcut, so that the two letter keys that layout swaps come out swapped, every "y" of a word typed
as "z" and every "z" as "y" ("zellow" for "yellow", "daz" for "day", "zour" for "your"): no letter
is added, lost or moved, a negation is never touched, and never a result that is another attribute
word; only words holding a "y" or a "z" can be hit, so its rate is raised (1.0 a word where a text
is noisy: the layout is wrong for the whole text) so that about as many words are misspelt as in the
earlier sets. Like the earlier sets it imports nothing from the training generator nor its words,
and a test checks that its strings appear in none of the training lists.

``blind12(seed=31337)``: 400 prompts (about 5% naming nothing) and 200 event texts (about 10%
naming no event), each with its expected answer. Its tables: 16 object, 8 ground, 7 time and
6 rain frames; 12 request carriers (and none), 7 tails (and none), 7 joiners, 10 extra words,
15 texts naming nothing; 20 phrasings per event, 9 event carriers (and none), 16 texts naming
no event; per colour, kind, ground, time of day and rain value 4 distinct attribute words (the
canonical one weighted to half), 2 ground adjectives.
"""

from __future__ import annotations

import random

from .text_heldout import Item, Phrasing, generate_items

B12_COLOURS = {
    "red": ("red", "red", "red", "poppy red", "tomato red", "fire-engine red"),
    "blue": ("blue", "blue", "blue", "sapphire blue", "cobalt blue", "true blue"),
    "yellow": ("yellow", "yellow", "yellow", "canary yellow", "daffodil yellow", "buttercup yellow"),
    "purple": ("purple", "purple", "purple", "plum purple", "royal purple", "rich purple"),
    "pink": ("pink", "pink", "pink", "candy pink", "flamingo pink", "rosy pink"),
    "cyan": ("cyan", "cyan", "cyan", "vivid cyan", "pure cyan", "strong cyan"),
}
B12_KINDS = {
    "door": ("door", "door", "door", "front door", "locker-room door", "dressing-room door"),
    "box": ("box", "box", "box", "kit box", "wooden crate", "storage crate"),
}
B12_GROUND_WORDS = {
    "grass": ("grass", "grass", "grass", "lush grass", "cut grass", "short grass"),
    "sand": ("sand", "sand", "sand", "soft sand", "loose sand", "fine sand"),
    "snow": ("snow", "snow", "snow", "packed snow", "thick snow", "crisp snow"),
}
B12_GROUND_ADJ = {
    "grass": ("grassy", "grassy", "grassed"),
    "sand": ("sandy", "sandy", "sand-strewn"),
    "snow": ("snowy", "snowy", "snow-packed"),
}
# the time of day as the match's slot (the time frames read "a {t} fixture", "the {t} session"...)
B12_TIME_WORDS = {
    "night": ("night", "night", "night", "nighttime", "midnight", "late-night"),
    "day": ("day", "day", "day", "daytime", "midday", "lunchtime"),
}
# rain as a conditions report, said or denied (the rain frames read "{r} above the stadium"...)
B12_RAIN_WORDS = {
    True: ("rain", "rain", "rain", "pouring rain", "lashing rain", "pelting rain"),
    False: ("no rain", "no rain", "no rain", "not a drop of rain", "not a spot of rain", "no rain whatsoever"),
}

B12_OBJECT = (
    "{d} {c} {k} out on the {s} wing",
    "out wide on the {s} flank, {d} {c} {k}",
    "{d} {c} {k} down the {s} touchline",
    "and look, on the {s}, {d} {c} {k}!",
    "{d} {c} {k} hugging the {s} touchline",
    "{d} {c} {k} tucked in on the {s}",
    "{d} {c} {k} stood {s} of centre",
    "{d} {c} {k} prowling the {s}",
    "{d} {c} {k} lined up {s}",
    "{d} {c} {k} in position on the {s}",
    "{d} {c} {k} patrolling the {s}",
    "{d} {c} {k} holding the {s} channel",
    "{d} {c} {k} camped out on the {s}",
    "{d} {c} {k} marshalling the {s} post",
    "{d} {c} {k} stationed {s} of the halfway line",
    "{d} {c} {k}, {s} of your telly",
)
B12_GROUND = (
    "playing surface: {n}",
    "they're competing on {n}",
    "{n} under their boots",
    "a {a} surface",
    "{n} covering every inch",
    "boots kicking up {n}",
    "a {a} playing area",
    "{n} all across the arena",
)
B12_TIME = (
    "a {t} fixture",
    "{t} kick-off",
    "it's a {t} contest",
    "a {t} tie pencilled in",
    "we're in the {t} session",
    "the {t} slot",
    "a {t} showdown",
)
B12_RAIN = (
    "{r} above the stadium",
    "weather update: {r}",
    "{r} coming down",
    "{r} to report",
    "{r} for this one",
    "the conditions: {r}",
)
B12_CARRIERS = (
    "and we're live, with",
    "a warm welcome, we've got",
    "the teams emerge to find",
    "what a setting awaits:",
    "the line-up for this one:",
    "coming to you live with",
    "a glance round the arena:",
    "here's the picture for you:",
    "settle in, because we've got",
    "the cameras pick out",
    "straight away you'll spot",
    "for viewers joining us, we've got",
    "",
)
B12_TAILS = (
    "",
    "",
    "back to the studio",
    "stay with us",
    "what an atmosphere",
    "unbelievable scenes",
    "the crowd's on its feet",
    "your commentator signing off",
    "more after the break",
)
B12_JOINERS = (
    ", meanwhile, ",
    ", what's more, ",
    " -- and ",
    "... and ",
    ", added to which, ",
    ", on top of which, ",
    " -- mind you, ",
)
B12_FILLERS = (
    "goodness me",
    "my word",
    "sensational",
    "ladies and gentlemen",
    "what drama",
    "extraordinary",
    "astonishing",
    "dear me",
    "folks",
    "magnificent",
)
B12_NOTHING = (
    "what a goal that was",
    "and that's the half-time whistle",
    "the manager looks furious on the touchline",
    "the substitute is warming up",
    "let's take a look at the replay",
    "the referee checks his watch",
    "an injury update from the medical team",
    "a word from our sponsors",
    "the transfer window closes soon",
    "and now the league table",
    "what a save from the keeper",
    "the fans are singing their hearts out",
    "he's offside by a mile",
    "penalty shoot-out coming up",
    "he hits the crossbar",
)
B12_EVENTS: dict[str, tuple[str, ...]] = {
    "it starts to rain": (
        "and the heavens have opened here",
        "rain's starting to come down on the players",
        "here comes the rain, folks",
        "the first drops of rain are falling now",
        "it's begun to rain on the players",
        "the rain is setting in over the stadium",
        "a shower has just broken out over the stands",
        "the players will be getting wet, it's raining now",
        "we've got rain coming down now",
        "rain is lashing the stadium",
        "those clouds have burst and it's pouring",
        "rain is sweeping in across the stadium",
        "looks like the rain has arrived",
        "the umbrellas are going up in the stands, it's raining",
        "it's bucketing down out there",
        "the rain has started, bang on cue",
        "down comes the rain",
        "raindrops are bouncing off the seats now",
        "a downpour breaks out over the crowd",
        "and it starts pouring",
    ),
    "the rain stops": (
        "the rain has eased off completely",
        "and the rain has finally let up",
        "no more rain falling now",
        "the downpour is over",
        "the rain has cleared away",
        "the rain's stopped, the players will be relieved",
        "not a drop falling anymore",
        "it's stopped raining out there",
        "the showers have died away",
        "the rain is petering out to nothing",
        "that rain has passed over",
        "the umbrellas are coming down, rain's done",
        "the rain dries up",
        "rain has moved on now",
        "the rain has come to an end",
        "the clouds have stopped dropping rain",
        "the rain's finally gone away",
        "the rain stopped a minute ago",
        "the rain has blown over",
        "and that's the end of the rain",
    ),
    "night falls": (
        "darkness has come down over the stadium",
        "the sun has set over the stadium",
        "night has arrived here",
        "the floodlights come on as it gets dark",
        "it's dark out there now",
        "the sky has gone dark for the night",
        "we've moved into the night",
        "nightfall here at the stadium",
        "the sun's gone down and it's dark",
        "night is settling in",
        "dusk has turned to night",
        "and it's turned dark",
        "the stars are out now",
        "the daylight is gone now",
        "it's getting dark now",
        "evening gives way to night",
        "the moon and stars are out over a dark stadium",
        "the sun went down a moment ago",
        "night has closed in",
        "it's night now here",
    ),
    "day breaks": (
        "the sun is coming up on a new morning",
        "dawn has broken here",
        "morning has arrived at the stadium",
        "the sky is getting light now",
        "first light over the stadium",
        "the night is over, it's morning",
        "sunrise here",
        "daylight floods back in",
        "the sun has risen over the stadium",
        "the sun's peeking up over the horizon",
        "it's light again out there",
        "we've moved into the morning",
        "the darkness has lifted, it's day",
        "dawn is breaking over the stands",
        "morning has come round",
        "the new day has begun",
        "the sun came up a moment ago",
        "it's daytime again",
        "and the night gives way to morning",
        "up comes the sun",
    ),
}
B12_EVENT_CARRIERS = (
    "",
    "",
    "stunning scenes,",
    "would you believe it,",
    "breaking news from the stadium:",
    "look at this,",
    "whoa, whoa, whoa,",
    "would you credit it,",
    "a pivotal moment,",
    "hold on,",
    "incredible scenes,",
)
B12_EVENT_NONE = (
    "what a tackle that was",
    "he's gone down injured",
    "substitution coming up",
    "the keeper punts it long",
    "a corner for the visitors",
    "the crowd goes wild",
    "he's through on goal",
    "the player heads for the door",
    "he leaps up onto the crate",
    "a gust of wind swirls round the stadium",
    "the referee blows for full-time",
    "the fans start a chant",
    "he's booked for that",
    "a stretcher is coming on",
    "the ball's gone into the stands",
    "hands up for a free kick",
)

# every word of the attribute tables (and the sides): a typo never turns one into another
_GUARDED = frozenset(
    w
    for table in (B12_COLOURS, B12_KINDS, B12_GROUND_WORDS, B12_GROUND_ADJ, B12_TIME_WORDS, B12_RAIN_WORDS)
    for words in table.values()
    for phrase in words
    for w in phrase.replace("-", " ").split()
) | {"left", "right", "dark", "light", "sun", "moon", "wet", "dry", "morning", "noon", "dawn"}
# words that deny something: never touched
_NEGATIONS = frozenset(("no", "not", "never", "nor", "none", "nothing", "without", "nope", "zero", "anymore"))
_LAYOUT = str.maketrans("yzYZ", "zyZY")


def _typo(word: str, rng: random.Random) -> str:
    """This set's typo process: a keyboard switched to a German (QWERTZ) layout by an accidental
    shortcut, so that every "y" of the word comes out as "z" and every "z" as "y" ("zellow" for
    "yellow", "daz" for "day"). No letter is added, lost or moved; a word without a "y" or a "z"
    stays as it is, a negation is never touched, and never a result that is another table word.
    (``rng`` is unused: a word's slip is always the same.)"""
    del rng
    core = word.strip(".,:;!?'\"()").lower()
    if core in _NEGATIONS or "n't" in word.lower():
        return word
    out = word.translate(_LAYOUT)
    return word if out.strip(".,:;!?'\"()").lower() in _GUARDED else out


BLIND12 = Phrasing(
    B12_OBJECT,
    B12_GROUND,
    B12_TIME,
    B12_RAIN,
    B12_CARRIERS,
    B12_TAILS,
    B12_JOINERS,
    B12_FILLERS,
    B12_NOTHING,
    B12_EVENTS,
    B12_EVENT_CARRIERS,
    B12_EVENT_NONE,
    _typo,
    typo_rate=1.0,
    determiners=("a", "a", "a", "the", "one", "that"),
    shuffle=0.35,
    say_when_silent="time",
    colours=B12_COLOURS,
    kinds=B12_KINDS,
    ground_words=B12_GROUND_WORDS,
    ground_adj=B12_GROUND_ADJ,
    time_words=B12_TIME_WORDS,
    rain_words=B12_RAIN_WORDS,
)


def blind12(seed: int = 31337, n_prompts: int = 400, n_events: int = 200) -> list[Item]:
    """The fourteenth (blind) held-out set: ``n_prompts`` prompts then ``n_events`` event texts."""
    return generate_items(BLIND12, seed, n_prompts, n_events)


def template_strings() -> list[str]:
    """Every template, carrier, joiner, filler and phrase (the disjointness test reads them)."""
    return BLIND12.strings()
