"""worldserve.common.understanding: prompts and events as the served apps read them (the grammar
first, the text app for free text), and its proto form."""

import re

import pytest

from worldserve.common.caption import EVENTS, normalize_text
from worldserve.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from worldserve.common.understanding import EventResolver, image_prompt, understand_prompt, understood_pb
from worldserve.text.spec import MAX_TEXT_CHARS, lm_prompt

DECLARED = list(EVENTS)


class TextApp:
    def __init__(self, answers: dict[str, str | Exception]):
        self.answers = answers
        self.asked: list[tuple[str, list[str]]] = []

    async def parse_event(self, text: str, events: list[str]) -> str:
        self.asked.append((text, events))
        a = self.answers[text]
        if isinstance(a, Exception):
            raise a
        return a


async def test_a_caption_is_read_here_and_free_text_by_the_text_app():
    async def parse(text):
        return {"spec": {"objects": [], "ground": "sand", "time": None, "rain": True}, "caption": "?", "source": "text"}

    u = await understand_prompt("grass, NIGHT", None, max_chars=MAX_TEXT_CHARS)
    assert u == {
        "spec": {"objects": [], "ground": "grass", "time": "night", "rain": False},
        "caption": "grass, night",
        "source": "grammar",
    }
    assert image_prompt("grass, NIGHT", u) == "grass, NIGHT"
    t = await understand_prompt(
        "a rainy beach", parse, max_chars=MAX_TEXT_CHARS
    )  # defaults applied, caption rebuilt here
    assert t["spec"] == {"objects": [], "ground": "sand", "time": "day", "rain": True}
    assert image_prompt("a rainy beach", t) == t["caption"] == "sand, day, rain"
    msg = understood_pb(t)
    assert (msg.spec.ground, msg.spec.time_of_day, msg.spec.rain, msg.source) == ("sand", "day", True, "text")
    assert understood_pb(None) is None
    with pytest.raises(InvalidArgument, match="prompt is empty"):
        await understand_prompt("  ", parse, max_chars=MAX_TEXT_CHARS)
    with pytest.raises(FailedPrecondition, match="text understanding is not deployed"):
        await understand_prompt("a rainy beach", None, max_chars=MAX_TEXT_CHARS)


async def test_declared_events_pass_and_free_text_is_mapped_once():
    app = TextApp({"Make it RAIN!": "it starts to rain", "bring the night": "night falls"})
    r = EventResolver(app.parse_event, max_chars=MAX_TEXT_CHARS)
    assert await r.resolve(None, DECLARED) == (None, "")  # keep the event in force
    assert await r.resolve("", DECLARED) == ("", "")  # clear it
    assert await r.resolve("  Night   FALLS ", DECLARED) == ("night falls", "")  # a declared event, case aside
    assert app.asked == []
    for _ in range(3):
        assert await r.resolve("Make it RAIN!", DECLARED) == ("it starts to rain", "Make it RAIN!")
    assert await r.resolve("make it  rain!", DECLARED) == ("it starts to rain", "make it  rain!")  # same text
    assert app.asked == [("Make it RAIN!", DECLARED)] and r.asked == 1  # cached
    assert await r.resolve("anything at all", []) == ("anything at all", "")  # the model declares none


async def test_refusals_and_faults():
    app = TextApp(
        {
            "sing a song": InvalidArgument("'sing a song' names none of the events: 'it starts to rain', ..."),
            "fly": "the sun explodes",  # an answer outside the declared events
            "slow": Unavailable("text understanding is unavailable: no answer within text_timeout_s=10 s"),
        }
    )
    r = EventResolver(app.parse_event, max_chars=MAX_TEXT_CHARS, size=2)
    for _ in range(2):  # a refusal is remembered: the same text is refused without asking again
        with pytest.raises(InvalidArgument, match="names none of the events"):
            await r.resolve("sing a song", DECLARED)
    assert r.asked == 1
    with pytest.raises(InvalidArgument, match=re.escape("understood as 'the sun explodes', which is none")):
        await r.resolve("fly", DECLARED)
    for _ in range(2):  # a fault is not remembered
        with pytest.raises(Unavailable):
            await r.resolve("slow", DECLARED)
    assert r.asked == 4
    with pytest.raises(InvalidArgument, match="exceeds the limit of 300 characters"):
        await r.resolve("rain " * 61, DECLARED)
    off = EventResolver(None, max_chars=MAX_TEXT_CHARS)
    with pytest.raises(FailedPrecondition, match="text understanding is not deployed"):
        await off.resolve("make it rain", DECLARED)
    assert await off.resolve("day breaks", DECLARED) == ("day breaks", "")  # exact names need no text app


async def test_free_text_is_read_without_accents_or_typographic_punctuation():
    """A phone's accent slip ("d\u00f3or") or smart quotes ("it\u2019s") read as the plain letters
    the text model learned; nothing is spelled out longer than it was typed."""
    assert normalize_text("A  D\u00f3or, CAF\u00c9 na\u00efve") == "a door, cafe naive"
    assert normalize_text("it\u2019s \u201cnight\u201d \u2014 ok") == 'it\'s "night" - ok'
    assert normalize_text("\u2026\ufb01") == "\u2026\ufb01"  # no compatibility forms (they could grow)
    assert lm_prompt("prompt", "a r\u00e8d d\u00f3or, sn\u00f6w") == "prompt: a red door, snow\n"
    resolver = EventResolver(None, max_chars=MAX_TEXT_CHARS)  # the text app not needed for it
    assert await resolver.resolve("N\u00cdght  Falls", DECLARED) == ("night falls", "")
