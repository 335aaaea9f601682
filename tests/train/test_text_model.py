"""The text model's data, held-out set, tokenizer, trainer and shipped folder (issue 25).

No vLLM here (the text app's tests run it); the held-out figures come from ``text-eval``."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch

import worldserve
from worldserve.common import caption as grammar
from worldserve.text.spec import Vocabulary, event_schema, prompt_schema, understood_nothing
from worldserve.train import text_data as td
from worldserve.train import text_heldout as th
from worldserve.train import text_trainer as tt
from worldserve.train.text_eval import score_prompt

SHIPPED = Path(worldserve.__file__).resolve().parent / "weights" / "text"
PROMPT_SCHEMA = jsonschema.Draft202012Validator(prompt_schema(Vocabulary()))
EVENT_SCHEMA = jsonschema.Draft202012Validator(event_schema(list(grammar.EVENTS)))


def _check_answer(prompt: str, answer: str) -> None:
    d = json.loads(answer)
    if prompt.startswith("prompt: "):
        PROMPT_SCHEMA.validate(d)
        grammar.spec_from_dict(d)  # a valid world (one object per side)
    else:
        assert prompt.startswith("event: "), prompt
        EVENT_SCHEMA.validate(d)
    assert prompt.endswith("\n") and "\n" not in prompt[:-1]


# --------------------------------------------------------------------------------------------------
# Training data


def test_training_pairs_are_deterministic_valid_and_mixed():
    a = list(td.samples(7, 600))
    assert a == list(td.samples(7, 600))
    assert a != list(td.samples(8, 600))
    for p, ans in a:
        _check_answer(p, ans)
    tasks = Counter(p.split(":")[0] for p, _ in a)
    assert 0.62 < tasks["prompt"] / len(a) < 0.78, tasks
    nothing = sum(p.startswith("prompt:") and understood_nothing(json.loads(x)) for p, x in a)
    assert 0.01 < nothing / tasks["prompt"] < 0.12
    null_events = sum(x == '{"event":null}' for _, x in a)
    assert 0.03 < null_events / tasks["event"] < 0.2
    n_objects = Counter(len(json.loads(x)["objects"]) for p, x in a if p.startswith("prompt:"))
    assert set(n_objects) == {0, 1, 2}


def test_synonyms_and_negations_map_to_the_canonical_answer():
    rng = random.Random(3)
    spec = grammar.WorldSpec((grammar.ObjectSpec("blue", "box", "left"),), "sand", night=True, rain=False)
    seen = set()
    for _ in range(300):
        text, g, t, r, _ = td.prompt_text(spec, rng)
        seen.add(text)
        assert ("left" in text) and (g or t or r or True)
    joined = " ".join(seen)
    # a few of the synonyms the generator uses for this spec
    assert any(w in joined for w in ("navy", "azure", "cobalt"))
    assert any(w in joined for w in ("crate", "chest", "cube", "carton"))
    assert "red" not in joined.split()  # other colours never appear for a blue-only spec
    # rain=False mentioned -> false, not null
    rng = random.Random(5)
    falses = [td.prompt_text(spec, rng) for _ in range(200)]
    assert any(r for _, _, _, r, _ in falses)
    ans = json.loads(td.answer_json(td.prompt_answer(spec, ground=True, time=True, rain=True)))
    assert ans == {
        "objects": [{"colour": "blue", "kind": "box", "side": "left"}],
        "ground": "sand",
        "time": "night",
        "rain": False,
    }


def test_answers_list_objects_in_the_order_the_text_names_them():
    spec = grammar.WorldSpec(
        (grammar.ObjectSpec("red", "door", "left"), grammar.ObjectSpec("cyan", "box", "right")), "grass"
    )
    rng = random.Random(11)
    orders = set()
    for _ in range(200):
        text, _, _, _, named = td.prompt_text(spec, rng)
        assert sorted(o.side for o in named) == ["left", "right"]
        first = named[0]
        # the first-named object's side word comes before the other's in the text
        low = text.lower()
        assert low.find(first.side) <= low.rfind(named[1].side), (text, named)
        orders.add(tuple(o.side for o in named))
    assert orders == {("left", "right"), ("right", "left")}  # both orders are trained
    # and the scorer ignores the order an answer lists objects in
    from worldserve.train.text_eval import score_prompt

    exp = td.prompt_answer(spec, ground=True, time=False, rain=False)
    got = dict(exp, objects=list(reversed(exp["objects"])))
    assert score_prompt(exp, got) == {"spec_ok": True, "exact": True, "fields": []}
    got["objects"][0] = dict(got["objects"][0], colour="red")
    assert score_prompt(exp, got)["fields"] == ["objects"]


def test_typo_changes_one_letter_and_spares_short_words():
    rng = random.Random(0)
    for w in ("purple", "door", "right", "snowy"):
        for _ in range(20):
            t = td.typo(w, rng)
            assert t[0] == w[0] and abs(len(t) - len(w)) <= 1
    assert td.typo("a", rng) == "a" and td.typo("on", rng) == "on"
    assert all(td.made_up_word(rng) not in td._ATTRIBUTE_WORDS for _ in range(100))


def test_made_up_words_and_time_decoys_name_nothing():
    """v12: a made-up word is read as the unknown marker (never corrected to an attribute word,
    "lawa" -> "lawn"), and a time frame around a word to skip names no time."""
    from worldserve.text.spec import read_words

    v = td.reading_vocabulary()
    rng = random.Random(4)
    assert {read_words(td.made_up_word(rng), v) for _ in range(5000)} == {td.UNKNOWN}
    time_words = {w for phrases in td.TIME_NOUNS.values() for p in phrases for w in p.split()}
    frame_words = {w for t in td.TIME_TEMPLATES for w in re.findall(r"[a-z]+", t.replace("{n}", ""))}
    for _ in range(300):
        decoy = td.time_decoy(rng)
        assert not set(re.findall(r"[a-z]+", read_words(decoy, v))) & (time_words - frame_words), decoy
    # v13: a typo in an attribute word is one the reader corrects back, or none ("starry sky" never "_ sky")
    for w in ("starry", "crimson", "daylight", "moonlit"):
        assert all(read_words(td._kept_typo(w, rng), v) == w for _ in range(200)), w
    # and the generator uses them: prompts that say no time carry frames with nothing in them
    texts = [td.prompt_text(td.random_spec(rng), rng) for _ in range(400)]
    assert any(not said_time and "time of day:" in t for t, _, said_time, _, _ in texts)


def test_every_event_has_many_phrasings():
    assert set(td.EVENT_TEXTS) == set(grammar.EVENTS)
    for event, texts in td.EVENT_TEXTS.items():
        assert len(set(texts)) >= 20, event


def test_the_rain_stops_only_where_a_word_says_so():
    rng = random.Random(4)
    # words to skip in an event text never say stop; every stop frame has a word that does
    assert not {td.event_junk(rng) for _ in range(3000)} & td._STOPPING
    for frame in td.STOP_FRAMES:
        text = frame.format(w="rain", x="zu", y="ko", s="halt")
        assert "halt" in text or text.split()[0] == "no" or " end " in text, frame
    # the free-order object form keeps the side word and the object's words, in any order
    for _ in range(200):
        ph = td._free_object_phrase("teal", "crate", "left", rng)
        assert {"teal", "crate", "left"} <= set(re.findall(r"[a-z]+", ph)), ph


_NEGATIONS = frozenset(("no", "not", "never", "nothing", "without", "none", "nope", "zero", "non", "nowhere", "nobody"))


def _negated(text: str) -> bool:
    return bool(set(re.findall(r"[a-z]+", text.lower())) & _NEGATIONS) or "n't" in text


def test_a_negation_negates_only_its_own_phrase():
    """v20: a negation that negates nothing of the world ("no worries", "not only that", "no <word>")
    sits among raining prompts and starting events, rain is said through a negated stopping ("it
    never stops raining"), and no rain with the negation after the rain word ("rain? not today")."""
    rng = random.Random(20)
    attribute = td.spelling_words() | {"rain", "wet", "dry", "sun", "day", "dark", "left", "red", "box", "door"}
    for _ in range(500):
        d = td.decoy_negation(rng)
        assert _negated(d) and not set(re.findall(r"[a-z]+", d)) & attribute, d
    assert sum(map(_negated, td.RAIN_SCOPED[True] + td.RAIN_SCOPED_FIXED[True])) >= 35
    assert sum(map(_negated, td.RAIN_SCOPED[False] + td.RAIN_SCOPED_FIXED[False])) >= 20  # the rest deny it
    # in training: prompts answered rain true carry decoys and negated stoppings
    spec = grammar.WorldSpec((grammar.ObjectSpec("red", "door", "left"),), "grass", night=False, rain=True)
    texts = [td.prompt_text(spec, rng) for _ in range(3000)]
    raining = [t for t, _, _, said_rain, _ in texts if said_rain]
    assert any(any(g in t for g in td.DECOY_NEGATIONS) and "rain" in t for t in raining)
    assert any(p.replace("rain", "") in t for t in raining for p in td.RAIN_SCOPED[True] if p.startswith("no"))
    # and events: "no rush, make it rain" still starts the rain
    events = [td.event_example(rng) for _ in range(4000)]
    starts = [t.lower() for t, a in events if a["event"] == "it starts to rain"]
    assert any(any(d in t for d in td.DECOY_NEGATIONS) for t in starts)


def test_events_are_said_in_phrasal_verbs_whatever_their_particle():
    """v23: "kick off the rain" starts it though "off" is a word of stopping, "shut the rain down"
    stops it with none; night ended is day breaking and day ended night falling."""
    for event, frames in td.EVENT_PHRASAL.items():
        assert len(set(frames)) >= 25 and set(td.PHRASAL_CORES[event])
        for f in frames:
            assert "{" not in f.format(w="rain") and f.count("{w}") <= 1, f
    starts, stops = td.EVENT_PHRASAL["it starts to rain"], td.EVENT_PHRASAL["the rain stops"]
    assert sum(any(w in f.split() for w in td.STOP_WORDS) for f in starts) >= 3  # "kick off", "set off"
    assert sum(not any(w in f.split() for w in td.STOP_WORDS) for f in stops) >= 15  # "shut down", "die down"
    assert any("night" in f for f in td.EVENT_PHRASAL["day breaks"])
    assert any("day" in f.split() for f in td.EVENT_PHRASAL["night falls"])
    rng = random.Random(23)
    events = [td.event_example(rng) for _ in range(3000)]
    said = [(t.lower(), a["event"]) for t, a in events]
    assert any("kick off the" in t and e == "it starts to rain" for t, e in said)
    assert any("shut the" in t and "down" in t and e == "the rain stops" for t, e in said)


def test_reading_corrects_typos_to_known_words_and_marks_unknown_ones():
    from worldserve.text.spec import lm_prompt, read_words

    v = td.reading_vocabulary()
    assert v.unknown == td.UNKNOWN and "crate" in v.spelling and "down" in v.known
    # one edit from exactly one spelling word, same first letter, 4 letters or more: corrected
    assert read_words("a purplo craet, snwoy", v) == "a purple crate, snowy"
    # a known word stays though one letter from a spelling word; short or unknown words: the marker
    assert read_words("the sun goes down", v) == "the sun goes down"
    assert read_words("a zorbly blue box (lef) in sno", v) == "a _ blue box (left) in snow"
    assert read_words("a zq box", v) == "a _ box"
    assert lm_prompt("event", "Blorptastic, MAKE it rain", v) == "event: _, make it rain\n"
    # no vocabulary: read as it is
    assert lm_prompt("event", "Blorptastic, MAKE it rain") == "event: blorptastic, make it rain\n"
    # the training pairs are read the same way: made-up words become the marker
    pairs = list(td.samples(11, 300, v))
    assert any(" _" in p for p, _ in tt.batch_pairs(0, 0, 64))  # the trainer's batches are read so too
    assert any(" _ " in p for p, _ in pairs)
    assert all(w in v.spelling or w in v.known for p, _ in pairs for w in re.findall(r"[a-z]{2,}", p.split(":", 1)[1]))


def test_a_digit_typed_for_a_look_alike_letter_is_read_as_the_letter():
    """A zero for an o and a one for an l or an i ("d00r", "1eft") are read as letters where that
    makes a word the reader reads; clock times, ordinals and numbers stay as they are."""
    from worldserve.text.spec import read_words, undigit

    v = td.reading_vocabulary()
    assert read_words("a red d00r on the 1eft, sn0wy n1ght", v) == "a red door on the left, snowy night"
    assert read_words("b1ue b0x to the r1ght, n0 rain", v) == "blue box to the right, no rain"
    assert read_words("at 10pm, room 101, 1980s", v) == "at 10pm, room 101, 1980s"
    assert undigit("1st", v) == "1st" and undigit("11pm", v) == "11pm" and undigit("zq0x", v) == "zq0x"
    assert read_words("zq0x", v) == "_0x"  # no word: the fragments as before


def test_a_word_typed_without_its_vowels_is_read_as_the_one_word_it_shortens():
    """Chat shorthand drops vowels ("pnk", "nght", "prpl"): such a word is read as the only spelling
    word it is with vowels put back after its first letter; two-letter words, real words and words
    that shorten several spelling words stay unread."""
    from worldserve.text.spec import read_words, unvowelled

    v = td.reading_vocabulary()
    assert read_words("a prpl dr on the lft, snwy nght, rght", v) == "a purple _ on the left, snowy night, right"
    assert read_words("yllw bx, dwnpr", v) == "yellow _, downpour"
    assert unvowelled("pnk", v.spelling) == "pink" and unvowelled("pk", v.spelling) is None
    assert unvowelled("xq", v.spelling) is None and unvowelled("pnkz", v.spelling) is None
    assert unvowelled("grn", {"green", "grain"}) is None  # two words it could shorten: neither
    assert read_words("a glass door", v) == "a _ door"  # a real word stays a real word


def test_common_real_words_are_never_corrected_to_an_attribute_word():
    """A real word one edit from a spelling word is not a typo of it: "a glass door" names no grass
    ground, "a rail" no rain; rare ones still are ("dor" -> "door")."""
    from worldserve.text.spec import Vocabulary, read_words

    v = td.reading_vocabulary()
    assert {"glass", "rail", "bench", "clean"} <= v.real and not v.real & (v.spelling | v.known | set(v.aliases))
    assert read_words("a red glass door by the rail, clean", v) == "a red _ door by the _, _"
    assert read_words("a dor in the rian, nihgt", v) == "a door in the rain, night"
    shipped = Vocabulary.read(SHIPPED)
    assert "glass" in shipped.real and read_words("glass", shipped) == "_"
    assert Vocabulary.from_json(v.to_json()).real == v.real
    with pytest.raises(ValueError, match="real must list words it neither reads nor aliases"):
        Vocabulary.from_json({**v.to_json(), "real": ["grass"]})


def test_words_never_seen_are_read_as_their_forms_and_synonyms_the_model_knows():
    from worldserve.text.spec import read_words

    v = td.reading_vocabulary()
    # word forms (lemminflect) and synonyms (WordNet's most common senses) of words it reads
    assert read_words("the rain is completed", v) == "the rain is finish"
    assert read_words("sunsets please, aurora", v) == "sunset please, dawn"
    assert read_words("completing the deluge", v) == "finish the downpour"
    # a synonym only through the common senses of both words: "gloomy" is not "blue", "grit" not "sand"
    assert read_words("a gloomy grit", v) == "a _ _"
    # an alias never shadows a word the model reads, and always names one it reads
    assert not set(v.aliases) & (v.spelling | v.known)
    assert set(v.aliases.values()) <= v.spelling | v.known
    # made-up words of the training texts are never real words it would read as another
    rng = random.Random(3)
    assert not {td.made_up_word(rng) for _ in range(5000)} & set(v.aliases)
    # every committed alias still holds for the words the model reads (rebuild it when they change)
    assert td._aliases(v.spelling | v.known) == v.aliases and len(v.aliases) > 1000


def test_bad_aliases_are_named(tmp_path):
    v = td.reading_vocabulary()
    v.write(tmp_path)
    d = json.loads((tmp_path / "world.json").read_text())
    for bad in ({"crate": "box"}, {"finished": "no-such-word"}, {"Finished": "finish"}, ["finished"]):
        (tmp_path / "world.json").write_text(json.dumps({**d, "aliases": bad}))
        with pytest.raises(ValueError, match="world.json: aliases must map"):
            Vocabulary.read(tmp_path)


def test_a_vocabulary_round_trips_and_bad_lists_are_named(tmp_path):
    v = td.reading_vocabulary()
    v.write(tmp_path)
    assert Vocabulary.read(tmp_path) == v
    d = json.loads((tmp_path / "world.json").read_text())
    (tmp_path / "world.json").write_text(json.dumps({**d, "unknown": "x"}))
    with pytest.raises(ValueError, match="world.json: unknown must be"):
        Vocabulary.read(tmp_path)
    (tmp_path / "world.json").write_text(json.dumps({**d, "spelling": ["Crate"]}))
    with pytest.raises(ValueError, match="world.json: spelling must be"):
        Vocabulary.read(tmp_path)


# --------------------------------------------------------------------------------------------------
# Held-out set


def test_heldout_is_fixed_sized_and_valid():
    h = th.heldout()
    assert h == th.heldout()
    assert [i.task for i in h].count("prompt") == 400 and [i.task for i in h].count("event") == 200
    for it in h:
        text = it.text
        assert 0 < len(text) <= 300
        if it.task == "prompt":
            PROMPT_SCHEMA.validate(it.answer)
            grammar.spec_from_dict(it.answer)
        else:
            EVENT_SCHEMA.validate(it.answer)
    events = Counter(i.answer["event"] for i in h if i.task == "event")
    assert set(events) == {*grammar.EVENTS, None}


def _strings(x) -> list[str]:
    if isinstance(x, str):
        return [x]
    if isinstance(x, dict):
        return [s for v in x.values() for s in _strings(v)]
    if isinstance(x, (tuple, list)):
        return [s for v in x for s in _strings(v)]
    return []


_STOP = {"a", "an", "the", "on", "of", "to", "at", "in", "i", "it", "it's", "is", "my", "me", "you", "and"}
_STOP |= {"with", "up", "if", "be", "this", "could", "would", "for"}


def test_the_eval_report_lists_every_answer_that_is_not_exact():
    from worldserve.train.text_eval import prompt_miss

    red_door = {
        "objects": [{"colour": "red", "kind": "door", "side": "left"}],
        "ground": None,
        "time": None,
        "rain": None,
    }
    item = th.Item("prompt", "a red door on the left", red_door)
    right = json.dumps(item.answer)
    assert prompt_miss(item, right, score_prompt(item.answer, json.loads(right))) is None
    # time "day" where the text said none: the same world (day is the default), not the same answer
    day = {**item.answer, "time": "day"}
    miss = prompt_miss(item, json.dumps(day), score_prompt(item.answer, day))
    assert miss is not None and miss["spec_ok"] is True and miss["expected"] == item.answer
    blue = {**item.answer, "objects": [{"colour": "blue", "kind": "door", "side": "left"}]}
    miss = prompt_miss(item, json.dumps(blue), score_prompt(item.answer, blue))
    assert miss is not None and miss["spec_ok"] is False


def _words(s: str) -> set[str]:
    return set(re.findall(r"[a-z']+", re.sub(r"\{\w+\}", " ", s.lower()))) - _STOP


def test_heldout_templates_and_fillers_never_appear_in_training():
    carriers = (td.CARRIERS, td.SUFFIXES, td.FILLERS, td.JOINERS, td.EVENT_CARRIERS)
    templates = (td.OBJECT_TEMPLATES, td.SIDE_AFTER, td.SIDE_BEFORE, td.GROUND_TEMPLATES)
    train_words = set().union(*(_words(s) for g in (*carriers, *templates) for s in g))
    ho_groups: tuple[tuple[str, ...], ...] = (
        th.HO_OBJECT,
        th.HO_GROUND,
        th.HO_TIME,
        th.HO_RAIN,
        th.HO_CARRIERS,
        th.HO_TAILS,
    )
    ho_groups += (th.HO_JOINERS, th.HO_FILLERS, th.HO_EVENT_CARRIERS)
    for g in ho_groups:
        for s in g:
            shared = _words(s) & train_words
            assert not shared, f"held-out {s!r} shares {shared} with the training carriers/templates"
    train_strings = [s.lower() for s in _strings([getattr(td, n) for n in dir(td) if n.isupper()])]
    for s in th.template_strings():
        assert s.strip().lower() not in train_strings, s
    whole = [*th.HO_NOTHING, *th.HO_EVENT_NONE, *(t for ts in th.HO_EVENTS.values() for t in ts)]
    for s in whole:
        assert not any(s in t for t in train_strings), f"held-out {s!r} is inside a training phrase"
    # the held-out module imports nothing of text_data (its typo process is its own)
    tree = ast.parse(Path(th.__file__).read_text())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names]
    imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not any("text_data" in m for m in imported), imported


def _assert_apart_from_training(name: str, groups: tuple[tuple[str, ...], ...], strings: list[str]) -> None:
    """A later held-out set: no word of its templates and carriers is a word of the training ones,
    and none of its strings is inside a training phrase."""
    carriers = (td.CARRIERS, td.SUFFIXES, td.FILLERS, td.JOINERS, td.EVENT_CARRIERS)
    templates = (td.OBJECT_TEMPLATES, td.SIDE_AFTER, td.SIDE_BEFORE, td.GROUND_TEMPLATES)
    train_words = set().union(*(_words(s) for g in (*carriers, *templates) for s in g))
    for g in groups:
        for s in g:
            assert not _words(s) & train_words, f"{name} {s!r} shares {_words(s) & train_words} with training"
    train_strings = [s.lower() for s in _strings([getattr(td, n) for n in dir(td) if n.isupper()])]
    for s in strings:
        assert not any(s.strip().lower() in t for t in train_strings), s


def test_the_second_heldout_set_is_apart_from_training_too():
    from worldserve.train import text_fresh as tf

    groups = (tf.F_OBJECT, tf.F_GROUND, tf.F_TIME, tf.F_RAIN, tf.F_CARRIERS, tf.F_TAILS, tf.F_JOINERS, tf.F_FILLERS)
    _assert_apart_from_training("fresh", (*groups, tf.F_EVENT_CARRIERS), tf.template_strings())
    items = tf.fresh()
    assert len(items) == 600 and items == tf.fresh()
    tree = ast.parse(Path(tf.__file__).read_text())
    assert not any("text_data" in (n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))


def _assert_a_fixed_blind_set(module: Any, make: Any) -> list[Any]:
    """A blind set: 400 prompts and 200 event texts, the same list every call and another for
    another seed, every answer valid, every event and none present, and neither the training
    generator nor its words imported."""
    items = make()
    assert items == make() and items != make(seed=1)
    assert [i.task for i in items].count("prompt") == 400 and [i.task for i in items].count("event") == 200
    for it in items:
        assert 0 < len(it.text) <= 300
        if it.task == "prompt":
            PROMPT_SCHEMA.validate(it.answer)
            grammar.spec_from_dict(it.answer)
        else:
            EVENT_SCHEMA.validate(it.answer)
    assert {i.answer["event"] for i in items if i.task == "event"} == {*grammar.EVENTS, None}
    tree = ast.parse(Path(module.__file__).read_text())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names]
    imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not any("text_data" in m or "text_words" in m for m in imported), imported
    return items


def test_the_blind_heldout_set_is_apart_from_training_and_fixed():
    from worldserve.train import text_blind as tb

    groups = (tb.B_OBJECT, tb.B_GROUND, tb.B_TIME, tb.B_RAIN, tb.B_CARRIERS, tb.B_TAILS, tb.B_JOINERS, tb.B_FILLERS)
    _assert_apart_from_training("blind", (*groups, tb.B_EVENT_CARRIERS), tb.template_strings())
    assert all(len(tb.B_EVENTS[e]) >= 8 for e in grammar.EVENTS) and len(tb.B_EVENT_NONE) >= 8
    _assert_a_fixed_blind_set(tb, tb.blind)


@pytest.mark.parametrize(
    ("n", "least"),
    [(2, 10), (3, 12), (4, 12), (5, 12), (6, 12), (7, 12), (8, 12), (9, 12), (10, 12), (11, 12), (12, 12)],
    ids=lambda v: str(v),
)
def test_the_later_blind_heldout_sets_are_apart_from_training_and_fixed(n: int, least: int):
    """The fourth to fourteenth sets (``text_blind2`` ... ``text_blind12``), each written blind by its own
    helper in the same shape: tables ``B{n}_*``, ``blind{n}()`` and ``template_strings()``."""
    mod = importlib.import_module(f"worldserve.train.text_blind{n}")

    def table(name: str) -> Any:
        return getattr(mod, f"B{n}_{name}")

    names = ("OBJECT", "GROUND", "TIME", "RAIN", "CARRIERS", "TAILS", "JOINERS", "FILLERS", "EVENT_CARRIERS")
    _assert_apart_from_training(f"blind{n}", tuple(table(t) for t in names), mod.template_strings())
    assert all(len(set(table("EVENTS")[e])) >= least for e in grammar.EVENTS)
    assert len(set(table("EVENT_NONE"))) >= least and len(set(table("NOTHING"))) >= least
    items = _assert_a_fixed_blind_set(mod, getattr(mod, f"blind{n}"))
    assert any(i.task == "prompt" and understood_nothing(i.answer) for i in items)  # a few name nothing


def test_filler_words_say_nothing_and_are_not_held_out():
    from worldserve.train import text_words

    words = set(td.ENGLISH_WORDS)
    assert len(words) > 500
    assert not words & text_words.held_out_words()
    assert not words & text_words.attribute_words()
    assert not words & text_words.EXCLUDE


def test_score_prompt():
    exp = {"objects": [{"colour": "red", "kind": "door", "side": "left"}], "ground": None, "time": "day", "rain": None}
    same_spec = {**exp, "time": None, "ground": "grass"}  # defaults: the same world, not the same answer
    assert score_prompt(exp, exp) == {"spec_ok": True, "exact": True, "fields": []}
    s = score_prompt(exp, same_spec)
    assert s["spec_ok"] and not s["exact"] and set(s["fields"]) == {"ground", "time"}
    wrong = {**exp, "objects": [{"colour": "blue", "kind": "door", "side": "left"}]}
    assert score_prompt(exp, wrong)["spec_ok"] is False
    nothing: dict[str, Any] = {"objects": [], "ground": None, "time": None, "rain": None}
    assert score_prompt(nothing, {**nothing, "ground": "grass"})["spec_ok"] is False  # understood something
    two = [{"colour": "red", "kind": "door", "side": "left"}] * 2
    assert "invalid" in score_prompt(exp, {**exp, "objects": two})["fields"]
    assert score_prompt(exp, None)["fields"] == ["unparsable"]


# --------------------------------------------------------------------------------------------------
# Tokenizer and trainer


@pytest.fixture(scope="module")
def tok():
    return tt.train_tokenizer(600, n=3000)


def test_tokenizer_round_trips_and_answers_are_few_tokens(tok):
    from tokenizers import decoders

    assert isinstance(tok.backend_tokenizer.decoder, decoders.ByteLevel)  # vLLM's xgrammar needs byte-level
    for p, a in td.samples(11, 200):
        ids, n_prompt = tt.encode_pair(tok, p, a)
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert tok.decode(ids[1:n_prompt]) == p
        assert tok.decode(ids[n_prompt:-1]) == a
    one = '{"objects":[{"colour":"red","kind":"door","side":"left"}],"ground":null,"time":"night","rain":true}'
    n = len(tok(one, add_special_tokens=False)["input_ids"])
    assert n <= 15, n
    assert len(tok('{"event":"night falls"}', add_special_tokens=False)["input_ids"]) <= 6
    assert tok.decode(tok("héllo ünïcode ☃")["input_ids"], skip_special_tokens=True) == "héllo ünïcode ☃"


def test_tiny_training_run_writes_a_loadable_folder_and_resumes(tmp_path):
    from transformers import AutoTokenizer, LlamaForCausalLM

    mc = tt.TextModelConfig(hidden=32, layers=1, heads=2, intermediate=64, vocab_size=400)
    tc = tt.TextTrainConfig(
        out=tmp_path, steps=3, batch=8, warmup=2, ckpt_every=3, eval_every=3, eval_n=2, threads=1, model=mc
    )
    tc.tokenizer_n = 2000
    logs: list[str] = []
    folder = tt.train_text(tc, log=logs.append)
    for f in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "world.json"):
        assert (folder / f).is_file(), f
    assert Vocabulary.read(folder) == td.reading_vocabulary()  # the words it was trained to read with
    m = LlamaForCausalLM.from_pretrained(folder)
    t = AutoTokenizer.from_pretrained(folder)
    assert m.config.tie_word_embeddings and m.config.vocab_size == len(t) == 400
    assert torch.load(tmp_path / "ckpt.pt", weights_only=False)["step"] == 3
    tc.steps = 5
    tt.train_text(tc, resume=True, log=logs.append)
    assert any("resumed" in line and "step 3" in line for line in logs), logs
    assert torch.load(tmp_path / "ckpt.pt", weights_only=False)["step"] == 5
    hist = json.loads((tmp_path / "history.json").read_text())
    assert [h["step"] for h in hist] == [3, 5]

    # a warm start from it, then the average of the two runs (a model soup)
    warm = dataclasses.replace(tc, out=tmp_path / "warm", init_from=tmp_path, steps=2, seed=1)
    tt.train_text(warm, log=logs.append)
    soup = tt.average_runs([tmp_path, tmp_path / "warm"], tmp_path / "soup", dtype="float32")
    a, b = (torch.load(r / "ckpt.pt", weights_only=False)["model"] for r in (tmp_path, tmp_path / "warm"))
    got = LlamaForCausalLM.from_pretrained(soup).state_dict()
    for k in a:
        assert torch.allclose(got[k], (a[k] + b[k]) / 2), k
    assert Vocabulary.read(soup) == td.reading_vocabulary() and (tmp_path / "soup" / "tokenizer").is_dir()
    with pytest.raises(ValueError, match="at least two"):
        tt.average_runs([tmp_path], tmp_path / "soup2")

    # a warm start into a deeper model (grow_depth): the shipped depth is not a dead end
    deep = dataclasses.replace(
        tc, out=tmp_path / "deep", init_from=tmp_path, steps=1, model=dataclasses.replace(mc, layers=2)
    )
    folder = tt.train_text(deep, log=logs.append)
    assert any("deepened to 2 layers" in line for line in logs), logs
    assert LlamaForCausalLM.from_pretrained(folder).config.num_hidden_layers == 2


def test_grow_depth_keeps_the_function_and_zeroes_the_new_layers_outputs(tok):
    mc = tt.TextModelConfig(hidden=32, layers=2, heads=2, intermediate=64)
    torch.manual_seed(0)
    small = tt.build_model(mc, tok)
    deep = tt.build_model(dataclasses.replace(mc, layers=4), tok)
    grown = tt.grow_depth(small.state_dict(), 4)
    deep.load_state_dict(grown)  # strict: every tensor of the deeper model, no other
    ids = tok("prompt: a red door on the left\n", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(small(ids).logits, deep(ids).logits, atol=1e-5)
    # old layer i is layer 2i; layer 2i+1 copies it, its output projections zero
    for i in range(2):
        for name, v in small.model.layers[i].state_dict().items():
            assert torch.equal(grown[f"model.layers.{2 * i}.{name}"], v)
            new = grown[f"model.layers.{2 * i + 1}.{name}"]
            assert not new.any() if name in tt.GROWN_ZEROED else torch.equal(new, v)
    same = small.state_dict()
    assert tt.grow_depth(same, 2) is same  # the same depth: as it is
    with pytest.raises(ValueError, match="multiple of 2"):
        tt.grow_depth(small.state_dict(), 3)


def test_budget_ends_the_lr_schedule():
    tc = tt.TextTrainConfig(steps=1000, warmup=10, budget_min=1.0)
    assert tt._progress(100, 30.0, tc) == 0.5  # the budget is further along than the steps
    assert tt._progress(900, 30.0, tc) == 0.9
    assert tt._lr(500, 1.0, tc) == pytest.approx(0.05 * tc.lr)
    assert tt._lr(5, 0.0, tc) == pytest.approx(tc.lr * 6 / 10)


# --------------------------------------------------------------------------------------------------
# The shipped folder


def test_shipped_text_model_folder():
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "world.json"):
        assert (SHIPPED / f).is_file(), f
    assert (SHIPPED / "MODEL_CARD.md").is_file()
    vocab = Vocabulary.read(SHIPPED)
    assert set(vocab.colours) <= set(grammar.COLORS) and set(vocab.events) == set(grammar.EVENTS)
    cfg = json.loads((SHIPPED / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert 64 <= cfg["hidden_size"] <= 512 and 1 <= cfg["num_hidden_layers"] <= 8
    assert cfg["max_position_embeddings"] >= 256 and cfg["tie_word_embeddings"]
    assert (SHIPPED / "model.safetensors").stat().st_size < 16 * 2**20  # a few MB
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(SHIPPED)
    assert t.bos_token == tt.BOS and t.eos_token == tt.EOS


def test_text_eval_names_its_sets_in_order_each_once_and_refuses_an_unknown_one():
    from typer.testing import CliRunner

    from worldserve.train.__main__ import TEXT_SETS, app, text_sets

    assert text_sets(["heldout"]) == ["heldout"]
    assert text_sets(["blind2", "all"]) == ["blind2", *(n for n in TEXT_SETS if n != "blind2")]
    assert text_sets(["all", "all"]) == list(TEXT_SETS)
    with pytest.raises(ValueError, match="unknown set 'blind99'"):
        text_sets(["fresh", "blind99"])
    # the command refuses before it loads vLLM: one line, exit 2
    r = CliRunner().invoke(app, ["text-eval", "--set", "fresh", "--set", "blind99"])
    assert r.exit_code == 2, r.output
    assert r.output.strip().startswith("error: unknown set 'blind99'") and len(r.output.strip().splitlines()) == 1


def test_each_set_is_scored_on_its_own_and_the_means_weigh_the_sets_equally():
    from worldserve.train.text_eval import mean_figures, score_set

    red_door = {
        "objects": [{"colour": "red", "kind": "door", "side": "left"}],
        "ground": None,
        "time": None,
        "rain": None,
    }
    items = [
        th.Item("prompt", "a red door on the left", red_door),
        th.Item("prompt", "a rd door on the left", red_door),
        th.Item("event", "make it rain", {"event": "it starts to rain"}),
        th.Item("event", "stop the rain", {"event": "the rain stops"}),
    ]
    wrong = dict(red_door, rain=True)  # what the world draws differs: a spec miss
    one = score_set(items, [json.dumps(red_door), json.dumps(wrong)], ['{"event":"it starts to rain"}', "{"])
    assert (one["prompts"], one["events"]) == (2, 2)
    assert (one["exact_spec_pct"], one["exact_answer_pct"], one["exact_event_pct"]) == (50.0, 50.0, 50.0)
    assert one["field_errors"] == {"rain": 1, "event": 1}
    assert [(m["task"], m["text"]) for m in one["misses"]] == [
        ("prompt", "a rd door on the left"),
        ("event", "stop the rain"),
    ]
    all_right = score_set(
        items, [json.dumps(red_door)] * 2, ['{"event":"it starts to rain"}', '{"event":"the rain stops"}']
    )
    assert all_right["misses"] == [] and all_right["exact_spec_pct"] == 100.0
    # a set of 2 prompts weighs what a set of 400 does
    assert mean_figures({"a": one, "b": all_right}) == {"mean_spec_pct": 75.0, "mean_event_pct": 75.0, "mean_pct": 75.0}
    with pytest.raises(ValueError):  # answers for every text of the set, no fewer
        score_set(items, [json.dumps(red_door)], ["{}", "{}"])
