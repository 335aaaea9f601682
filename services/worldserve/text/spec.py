"""What the text app's language model reads and writes: the contract between its trainer and the
served app (torch-, ray- and vllm-free).

The model is a small decoder-only LM in the Hugging Face layout (vLLM loads it). It does two tasks,
each one prompt line in, one compact JSON object out (greedy, decoding constrained to the JSON
schema, so every answer parses)::

    lm_prompt("prompt", "A snowy night with a pink door to my right")
        -> 'prompt: a snowy night with a pink door to my right\\n'
    answer   {"objects":[{"colour":"pink","kind":"door","side":"right"}],"ground":"snow","time":"night","rain":null}

    lm_prompt("event", "make it rain")  -> 'event: make it rain\\n'
    answer   {"event":"it starts to rain"}        ({"event":null}: no event meant)

In a prompt's answer ``ground``, ``time`` and ``rain`` are null when the text does not say (the
world's defaults apply: grass, day, no rain); an answer with no objects and every field null
understood nothing. Answers are written with ``answer_json`` (no spaces, keys in this order): the
trainer writes its targets with it, so what the model learned is what the schema admits.

The model's folder carries ``world.json``: the vocabulary it was trained with (``colours``,
``kinds``, ``sides``, ``grounds``, ``times``, ``events``). The decoding schema is built from that
vocabulary; the answer is then checked against the served world's (``worldserve.common.caption``),
so a model that knows a colour the world does not draw is refused with INVALID_ARGUMENT, never
rendered wrong. It may also list how the model reads text (``spelling``, ``known``, ``aliases``,
``unknown``: :func:`read_words`, the same in training and serving).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from worldserve.common import caption as grammar
from worldserve.common.caption import normalize_text

Task = Literal["prompt", "event"]

MAX_TEXT_CHARS = 300
"""Longest free text (a prompt or an event) the text app takes, in characters."""
MAX_ANSWER_TOKENS = 64
"""Decoding budget per answer (the longest answer, two objects and every field, is well under it)."""
WORLD_FILE = "world.json"


SPELL_MIN = 4
"""Words are corrected only to words of at least this many letters, and only words of at least one
letter fewer ("cya" -> "cyan", "lef" -> "left"): a short word is one letter from too many others."""


def _one_edit(a: str, b: str) -> bool:
    """Whether ``b`` is ``a`` with one letter changed, dropped, added, or two neighbours swapped."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (
            len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]
        )
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    i = next((i for i in range(len(short)) if short[i] != long_[i]), len(short))
    return short[i:] == long_[i + 1 :]


def corrected(word: str, spelling: Iterable[str]) -> str | None:
    """The spelling word a typo ``word`` is read as: the only one of ``spelling`` one edit away with
    the same first letter (of at least ``SPELL_MIN`` letters, ``word`` at least one fewer); else None."""
    if len(word) < SPELL_MIN - 1:
        return None
    near = [s for s in spelling if s[0] == word[0] and len(s) >= SPELL_MIN and _one_edit(word, s)]
    return near[0] if len(near) == 1 else None


VOWELS = frozenset("aeiou")


def _shortens(word: str, s: str) -> bool:
    """Whether ``word`` is ``s`` with one or more of its vowels after the first letter left out."""
    if len(s) <= len(word) or s[0] != word[0]:
        return False
    i = 1
    for ch in s[1:]:
        if i < len(word) and ch == word[i]:
            i += 1
        elif ch not in VOWELS:
            return False
    return i == len(word)


def unvowelled(word: str, spelling: Iterable[str]) -> str | None:
    """The spelling word a word typed without some of its vowels is read as ("pnk" -> "pink",
    "prpl" -> "purple", "nght" -> "night"): the only one of ``spelling`` that is ``word`` with vowels
    put back after its first letter (``word`` of at least three letters); else None ("grn" could be
    "green" or "grain": neither)."""
    if len(word) < 3:
        return None
    near = [s for s in spelling if _shortens(word, s)]
    return near[0] if len(near) == 1 else None


DIGIT_LETTERS: Mapping[str, str] = {"0": "o", "1": "li"}
"""Digits typed for a look-alike letter inside a word ("d00r", "1eft", "b1ue"), each letter tried in turn."""
_DIGIT_WORD = re.compile(r"\b(?=[a-z0-9]*[a-z])[a-z0-9]*[01][a-z0-9]*\b")
_CLOCK_OR_ORDINAL = re.compile(r"\d+(?:am|pm|st|nd|rd|th|s)")


def _read_word(word: str, vocab: Vocabulary) -> str | None:
    """How ``read_words`` reads one word: as it is, as the word it aliases, or corrected; None when
    it is none of these (an unknown word)."""
    if word in vocab.spelling or word in vocab.known:
        return word
    if word in vocab.aliases:
        return vocab.aliases[word]
    if word not in vocab.real and (fix := corrected(word, vocab.spelling) or unvowelled(word, vocab.spelling)):
        return fix
    return None


def undigit(word: str, vocab: Vocabulary) -> str:
    """``word`` with its look-alike digits read as letters (``DIGIT_LETTERS``) where that makes a
    word the reader reads ("d00r" -> "door", "1eft" -> "left"); else ``word`` as it is. A clock time
    or an ordinal ("10pm", "1st") stays."""
    if _CLOCK_OR_ORDINAL.fullmatch(word):
        return word
    options = [""]
    for ch in word:
        options = [o + a for o in options for a in DIGIT_LETTERS.get(ch, ch)]
        if len(options) > 16:
            return word
    return next((o for o in options if o.isalpha() and _read_word(o, vocab) is not None), word)


def read_words(text: str, vocab: Vocabulary) -> str:
    """``text`` (already normalized) as the model reads it, word by word (a word: a run of letters):
    one of ``vocab.spelling`` or ``vocab.known`` stays; one of ``vocab.aliases`` (a form or synonym
    of a word it knows) becomes that word ("finished" -> "finish", "sunshine" -> "sun"); one edit
    away from exactly one spelling word with the same first letter, it becomes that word ("craet" ->
    "crate", "cya" -> "cyan"; only to words of at least ``SPELL_MIN`` letters; never one of
    ``vocab.real``, a common word in its own right: "glass" is not "grass"); otherwise, where
    ``vocab.unknown`` is set, it becomes that marker (the model learned to skip unknown words as
    one). A word with a look-alike digit in it is first read as letters where that makes a word
    (:func:`undigit`: "d00r" -> "door"), and a word typed without some of its vowels is read as the
    one spelling word it shortens (:func:`unvowelled`: "nght" -> "night"). Punctuation stays."""
    if not vocab.spelling:
        return text
    text = _DIGIT_WORD.sub(lambda m: undigit(m.group(0), vocab), text)

    def one(m: re.Match[str]) -> str:
        w = m.group(0)
        if (read := _read_word(w, vocab)) is not None:
            return read
        return vocab.unknown if vocab.unknown and len(w) > 1 else w

    return re.sub(r"[a-z]+", one, text)


def lm_prompt(task: Task, text: str, vocab: Vocabulary | None = None) -> str:
    """The model's input for one task; the answer follows it. ``vocab``: the model folder's, whose
    words decide how the text is read (:func:`read_words`)."""
    if task not in ("prompt", "event"):
        raise ValueError(f"unknown task {task!r}")
    text = normalize_text(text)
    if vocab is not None:
        text = read_words(text, vocab)
    return f"{task}: {text}\n"


def answer_json(obj: Mapping[str, Any]) -> str:
    """The canonical text of an answer: compact JSON, keys in insertion order."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True)


def prompt_answer(spec: grammar.WorldSpec | None, *, ground: bool, time: bool, rain: bool) -> dict[str, Any]:
    """The training target for a prompt describing ``spec``; a field the text did not mention
    (``ground=False``...) is null. ``spec=None``: the text named nothing."""
    if spec is None:
        return {"objects": [], "ground": None, "time": None, "rain": None}
    d = grammar.spec_to_dict(spec)
    return {
        "objects": d["objects"],
        "ground": d["ground"] if ground else None,
        "time": d["time"] if time else None,
        "rain": d["rain"] if rain else None,
    }


@dataclass(frozen=True)
class Vocabulary:
    """The words a text model was trained to answer with (its folder's ``world.json``)."""

    colours: tuple[str, ...] = tuple(grammar.COLORS)
    kinds: tuple[str, ...] = grammar.KINDS
    sides: tuple[str, ...] = grammar.SIDES
    grounds: tuple[str, ...] = tuple(grammar.GROUNDS)
    times: tuple[str, ...] = grammar.TIMES
    events: tuple[str, ...] = tuple(grammar.EVENTS)
    extra: Mapping[str, Any] = field(default_factory=dict)
    spelling: frozenset[str] = frozenset()
    """Words the model was trained to read (attribute words and their synonyms; optional): a typo
    one edit from exactly one of them is corrected before the model reads the text."""
    known: frozenset[str] = frozenset()
    """Every other word the training texts spell out: never corrected."""
    unknown: str = ""
    """Set: a word neither known nor correctable is read as this marker (models trained so)."""
    aliases: Mapping[str, str] = field(default_factory=dict)
    """Words the model never saw, each read as a spelling or known word (its form or synonym)."""
    real: frozenset[str] = frozenset()
    """Common real words one edit from a spelling word ("glass", "hall", "bench"): never corrected
    to it ("a glass door" says no grass), read as the unknown marker."""

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "colours": list(self.colours),
            "kinds": list(self.kinds),
            "sides": list(self.sides),
            "grounds": list(self.grounds),
            "times": list(self.times),
            "events": list(self.events),
        }
        if self.spelling:
            d["spelling"] = sorted(self.spelling)
            d["known"] = sorted(self.known)
        if self.unknown:
            d["unknown"] = self.unknown
        if self.aliases:
            d["aliases"] = dict(sorted(self.aliases.items()))
        if self.real:
            d["real"] = sorted(self.real)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any], *, where: str = WORLD_FILE) -> Vocabulary:
        names = ("colours", "kinds", "sides", "grounds", "times", "events")
        missing = [n for n in names if n not in d]
        if missing:
            raise ValueError(f"{where}: missing field(s) {missing}")
        out: dict[str, Any] = {}
        for n in names:
            v = d[n]
            if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
                raise ValueError(f"{where}: {n} must be a non-empty list of strings, got {v!r}")
            out[n] = tuple(v)
        lists: dict[str, frozenset[str]] = {}
        for n in ("spelling", "known", "real"):
            v = d.get(n, [])
            if not isinstance(v, list) or not all(isinstance(x, str) and x.isalpha() and x == x.lower() for x in v):
                raise ValueError(f"{where}: {n} must be a list of lower-case words")
            lists[n] = frozenset(v)
        unknown = d.get("unknown", "")
        if not isinstance(unknown, str) or len(unknown) > 3 or any(c.isalnum() or c.isspace() for c in unknown):
            raise ValueError(f"{where}: unknown must be a short marker of neither letters nor digits, got {unknown!r}")
        aliases = d.get("aliases", {})
        reads = lists["spelling"] | lists["known"]
        if not isinstance(aliases, dict) or not all(
            isinstance(k, str) and k.isalpha() and k == k.lower() and k not in reads and v in reads
            for k, v in aliases.items()
        ):
            raise ValueError(f"{where}: aliases must map lower-case words it does not read to words it reads")
        if lists["real"] & (reads | set(aliases)):
            raise ValueError(f"{where}: real must list words it neither reads nor aliases")
        return cls(
            **out,
            spelling=lists["spelling"],
            known=lists["known"],
            unknown=unknown,
            aliases=aliases,
            real=lists["real"],
        )

    @classmethod
    def read(cls, folder: str | Path) -> Vocabulary:
        """``folder/world.json``; ValueError naming the file when it is missing or malformed."""
        path = Path(folder) / WORLD_FILE
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"{path}: not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not readable JSON ({e})") from None
        return cls.from_json(d, where=str(path))

    def write(self, folder: str | Path) -> None:
        (Path(folder) / WORLD_FILE).write_text(json.dumps(self.to_json(), indent=2) + "\n")


def prompt_schema(vocab: Vocabulary) -> dict[str, Any]:
    """The JSON schema a prompt's answer is decoded under (at most one object per side)."""
    obj = {
        "type": "object",
        "properties": {
            "colour": {"enum": list(vocab.colours)},
            "kind": {"enum": list(vocab.kinds)},
            "side": {"enum": list(vocab.sides)},
        },
        "required": ["colour", "kind", "side"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {
            "objects": {"type": "array", "items": obj, "maxItems": len(vocab.sides)},
            "ground": {"enum": [*vocab.grounds, None]},
            "time": {"enum": [*vocab.times, None]},
            "rain": {"enum": [True, False, None]},
        },
        "required": ["objects", "ground", "time", "rain"],
        "additionalProperties": False,
    }


def event_schema(events: Sequence[str]) -> dict[str, Any]:
    """The JSON schema an event's answer is decoded under: one of ``events`` or null."""
    return {
        "type": "object",
        "properties": {"event": {"enum": [*events, None]}},
        "required": ["event"],
        "additionalProperties": False,
    }


def understood_nothing(answer: Mapping[str, Any]) -> bool:
    """True when a prompt's answer names no object and leaves every field null."""
    return not answer.get("objects") and all(answer.get(k) is None for k in ("ground", "time", "rain"))
