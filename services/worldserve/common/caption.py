"""The worlds' caption grammar: its vocabulary, ``WorldSpec`` and captions <-> specs.

Served code reads captions (the sessions app decides whether a prompt is in the grammar or goes to
the text app; the text app checks a language model's answer against this vocabulary), so the
grammar lives here, torch-free; the game (``worldserve.worlds.platformer``) renders what it says.

Captions read like ``"a red door on the left, a blue box on the right, grass, night"``:
``parse_caption`` and ``caption_of`` convert between captions and ``WorldSpec``; ``spec_to_dict``
and ``spec_from_dict`` between specs and their JSON form (the text app's structured output)::

    {"objects": [{"colour": "red", "kind": "door", "side": "left"}],
     "ground": "grass", "time": "night", "rain": false}
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "blue": (40, 90, 230),
    "yellow": (245, 215, 40),
    "purple": (150, 60, 200),
    "pink": (250, 110, 180),
    "cyan": (40, 210, 220),
}
"""Object colours a caption may name (chosen far from the sky, ground and player colours)."""
KINDS = ("door", "box")
"""Object kinds a caption may name."""
GROUNDS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "grass": ((60, 180, 60), (120, 80, 40)),  # (top layer, soil)
    "sand": ((225, 205, 145), (190, 160, 100)),
    "snow": ((240, 240, 250), (165, 165, 185)),
}
SIDES = ("left", "right")
EVENTS: dict[str, tuple[str, bool]] = {
    "it starts to rain": ("rain", True),
    "the rain stops": ("rain", False),
    "night falls": ("night", True),
    "day breaks": ("night", False),
}
"""Event text -> (world flag, value it takes)."""


def _norm(text: str) -> str:
    """The grammar's reading of a caption: case and runs of whitespace aside, nothing else (a
    caption's words are exact; free text is read with :func:`normalize_text`)."""
    return " ".join(text.lower().split())


_TYPOGRAPHIC = str.maketrans(
    {
        **dict.fromkeys("\u2018\u2019\u201a\u201b\u2032", "'"),
        **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb", '"'),
        **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212", "-"),
    }
)
"""Typographic quotes and dashes (a phone's "smart punctuation") -> their ASCII forms."""


def normalize_text(text: str) -> str:
    """Free text as it is compared and read (the text model was trained on this form): accents
    dropped ("d\u00f3or" -> "door", "caf\u00e9" -> "cafe"), typographic quotes and dashes as ASCII
    ("it\u2019s" -> "it's"), lower-case, runs of whitespace collapsed. Canonical decomposition only:
    an accented letter becomes its base letter, and no ligature or symbol is spelled out."""
    text = unicodedata.normalize("NFD", text.translate(_TYPOGRAPHIC))
    return " ".join("".join(c for c in text if not unicodedata.combining(c)).lower().split())


# --------------------------------------------------------------------------------------------------
# World spec <-> caption


@dataclass(frozen=True)
class ObjectSpec:
    color: str
    kind: str
    side: str

    def __post_init__(self) -> None:
        if self.color not in COLORS:
            raise ValueError(f"unknown colour {self.color!r}; expected one of {tuple(COLORS)}")
        if self.kind not in KINDS:
            raise ValueError(f"unknown object {self.kind!r}; expected one of {KINDS}")
        if self.side not in SIDES:
            raise ValueError(f"unknown side {self.side!r}; expected one of {SIDES}")

    @property
    def phrase(self) -> str:
        return f"a {self.color} {self.kind} on the {self.side}"


@dataclass(frozen=True)
class WorldSpec:
    """What a caption says about a world: objects on the first view, ground, time, weather."""

    objects: tuple[ObjectSpec, ...] = ()
    ground: str = "grass"
    night: bool = False
    rain: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.objects, list):
            object.__setattr__(self, "objects", tuple(self.objects))
        if self.ground not in GROUNDS:
            raise ValueError(f"unknown ground {self.ground!r}; expected one of {tuple(GROUNDS)}")
        sides = [o.side for o in self.objects]
        if len(set(sides)) != len(sides):
            raise ValueError(f"at most one object per side, got {[o.phrase for o in self.objects]!r}")
        # canonical order: left before right
        object.__setattr__(self, "objects", tuple(sorted(self.objects, key=lambda o: SIDES.index(o.side))))


def caption_of(spec: WorldSpec) -> str:
    """Canonical caption, e.g. ``"a red door on the left, a blue box on the right, grass, night"``."""
    parts = [o.phrase for o in spec.objects] + [spec.ground, "night" if spec.night else "day"]
    if spec.rain:
        parts.append("rain")
    return ", ".join(parts)


_OBJ_RE = re.compile(r"^(?:an?\s+)?(\w+)\s+(\w+)\s+on\s+the\s+(\w+)$")


def parse_caption(caption: str) -> WorldSpec:
    """Caption -> WorldSpec. Clauses are comma-separated (``and`` also splits); case and extra
    spaces are ignored. Raises ValueError quoting a clause it does not understand."""
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"caption must be a non-empty string, got {caption!r}")
    objects: list[ObjectSpec] = []
    ground, night, rain = "grass", False, False
    for clause in re.split(r",|\band\b", _norm(caption)):
        clause = clause.strip().strip(".")
        if not clause:
            continue
        m = _OBJ_RE.match(clause)
        if m:
            objects.append(ObjectSpec(m.group(1), m.group(2), m.group(3)))
        elif clause in GROUNDS:
            ground = clause
        elif clause in ("night", "at night"):
            night = True
        elif clause in ("day", "daytime"):
            night = False
        elif clause in ("rain", "raining", "rainy"):
            rain = True
        else:
            raise ValueError(f"caption clause {clause!r} not understood (in {caption!r})")
    return WorldSpec(tuple(objects), ground, night, rain)


TIMES = ("day", "night")
"""Times of day a spec may name (``WorldSpec.night`` is ``time == "night"``)."""


def is_caption(prompt: str) -> WorldSpec | None:
    """The spec of a prompt in the caption grammar, else None (it is free text)."""
    try:
        return parse_caption(prompt)
    except ValueError:
        return None


def spec_to_dict(spec: WorldSpec) -> dict[str, Any]:
    """The JSON form of a spec (see the module docstring)."""
    return {
        "objects": [{"colour": o.color, "kind": o.kind, "side": o.side} for o in spec.objects],
        "ground": spec.ground,
        "time": "night" if spec.night else "day",
        "rain": spec.rain,
    }


def spec_from_dict(d: Mapping[str, Any]) -> WorldSpec:
    """A spec from its JSON form; ``ground``, ``time`` and ``rain`` may be missing or null (the
    defaults: grass, day, no rain). ValueError naming the first field or value this world does
    not know (an unknown colour, two objects on one side, a field of another type)."""
    if not isinstance(d, Mapping):
        raise ValueError(f"a world spec must be a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - {"objects", "ground", "time", "rain"})
    if unknown:
        raise ValueError(f"unknown world spec field(s) {unknown}")
    objs = d.get("objects") or []
    if not isinstance(objs, list):
        raise ValueError(f"objects must be a list, got {objs!r}")
    objects = []
    for o in objs:
        if not isinstance(o, Mapping) or set(o) != {"colour", "kind", "side"}:
            raise ValueError(f"an object must have exactly colour, kind and side, got {o!r}")
        objects.append(ObjectSpec(str(o["colour"]), str(o["kind"]), str(o["side"])))
    ground = d.get("ground") or "grass"
    time = d.get("time") or "day"
    if time not in TIMES:
        raise ValueError(f"unknown time of day {time!r}; expected one of {TIMES}")
    rain = d.get("rain")
    if rain is not None and not isinstance(rain, bool):
        raise ValueError(f"rain must be true, false or null, got {rain!r}")
    return WorldSpec(tuple(objects), str(ground), time == "night", bool(rain))
