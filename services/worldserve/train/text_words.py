"""The English filler words of the text model's training data (``text_words.json``): words of
Python's own documentation (``pydoc_data.topics``, so no download) that say nothing about a world
(no attribute word or synonym, the generator's or a writer's in ``text_sources``; no colour, place,
weather, time, negation or number) and that the held-out set (``text_heldout``) never uses. The
training generator scatters them through prompts and event texts so that the model learns to skip
words it has no use for.

Rebuild with ``python -m worldserve.train.text_words`` (the committed file is what training read).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

FILE = Path(__file__).with_name("text_words.json")

EXCLUDE = set(
    """
    green orange black white brown grey gray silver colour color colours colors dark light bright
    left right side sides top bottom middle center centre front back behind above below under near far
    edge corner border end start begin stop off over halt cancel enough more less no not none nothing
    without never one two three four five six seven eight nine ten first second third last
    rain water wet dry clear cloud clouds sky skies sun moon star stars weather storm wind snow ice
    sand grass ground floor earth world level scene day days night nights time times hour hours
    morning evening noon dusk dawn today tonight now late early door doors box boxes gate window wall
    object objects item items thing things place places make made want give show put
    """.split()
)


def held_out_words() -> set[str]:
    from . import text_heldout as th

    strings = list(th.template_strings())
    for table in (th.COLOURS, th.KINDS, th.GROUND, th.GROUND_ADJ, th.TIME, th.RAIN):
        for v in table.values():
            strings.extend(v)
    return {w for s in strings for w in re.findall(r"[a-z]+", s.lower())}


def attribute_words() -> set[str]:
    from . import text_data as td
    from . import text_sources

    tables: tuple[dict[Any, tuple[str, ...]], ...] = (*td.ATTRIBUTE_TABLES, td.RAIN_PHRASES, td.RAIN_ADJS)
    tables += td.EVENT_TABLES
    words = {w for t in tables for v in t.values() for s in v for w in re.findall(r"[a-z]+", s.lower())}
    return words | {
        w for src in text_sources.sources() for s in src.attribute_strings() for w in re.findall(r"[a-z]+", s.lower())
    }


def build() -> list[str]:
    from pydoc_data.topics import topics

    counts = Counter(re.findall(r"\b[a-z]{3,10}\b", " ".join(topics.values()).lower()))
    banned = EXCLUDE | held_out_words() | attribute_words()
    return sorted(w for w, n in counts.items() if n >= 3 and w not in banned)


if __name__ == "__main__":
    words = build()
    FILE.write_text(json.dumps(words, indent=0) + "\n")
    print(f"{len(words)} words -> {FILE}")
