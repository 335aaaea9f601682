"""A new session from a prompt: a caption in the grammar goes to the image app as it is; free text
goes through the text app (``understand``) and the image app draws the understood caption; the
record keeps how the prompt was understood, forks copy it. Against a real Redis; the text app is a
function here (the real one in tests/e2e/test_free_text.py)."""

import re

import numpy as np
import pytest

from worldserve.common.codec import PNG, encode_frame
from worldserve.common.config import Config
from worldserve.common.errors import FailedPrecondition, InvalidArgument
from worldserve.sessions.core import SessionsCore
from worldserve.text.spec import MAX_TEXT_CHARS

SNOWY = {
    "spec": {
        "objects": [{"colour": "pink", "kind": "door", "side": "right"}],
        "ground": "snow",
        "time": "night",
        "rain": False,
    },
    "caption": "a pink door on the right, snow, night",
    "source": "text",
}


class Apps:
    """The image app (what it was asked to draw) and the text app (what it was asked to read)."""

    def __init__(self, answer=SNOWY):
        self.drawn: list[str] = []
        self.read: list[str] = []
        self.answer = answer

    async def generate(self, prompt, seed, steps, guidance):
        self.drawn.append(prompt)
        return encode_frame(np.zeros((8, 8, 3), np.uint8), PNG).data

    async def parse_prompt(self, text):
        self.read.append(text)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def make_core(store, apps: Apps, *, deployed: bool = True) -> SessionsCore:
    async def info():
        return {"width": 8, "height": 8}

    async def catalog():
        return {"default": "m", "models": {"m": {"width": 8, "height": 8, "text_dim": 0}}}

    return SessionsCore(
        store,
        Config.load({}, env={}),
        generate=apps.generate,
        frame_info=info,
        catalog=catalog,
        understand=apps.parse_prompt if deployed else None,
    )


async def test_free_text_is_read_by_the_text_app_and_the_image_app_draws_its_caption(store):
    apps = Apps()
    core = make_core(store, apps)
    text = "A snowy night with a pink door to my right"
    rec, _ = await core.create_from_prompt("t", text, seed=3)
    assert apps.read == [text] and apps.drawn == ["a pink door on the right, snow, night"]
    assert rec.prompt == text  # the record keeps what the user wrote ...
    assert rec.understood == SNOWY  # ... and how it was understood
    again = await store.get("t", rec.session_id)
    assert again.understood == SNOWY and again.understood_source == "text"
    child = await core.fork("t", rec.session_id, step=None, seed=None)
    assert child.understood == SNOWY and child.prompt == text


async def test_a_caption_never_reaches_the_text_app(store):
    apps = Apps()
    core = make_core(store, apps)
    prompt = "A Blue box on the left,  sand, night, rain"
    rec, _ = await core.create_from_prompt("t", prompt, seed=1)
    assert apps.read == [] and apps.drawn == [prompt]  # the image app gets the prompt as it was
    assert rec.understood == {
        "spec": {
            "objects": [{"colour": "blue", "kind": "box", "side": "left"}],
            "ground": "sand",
            "time": "night",
            "rain": True,
        },
        "caption": "a blue box on the left, sand, night, rain",
        "source": "grammar",
    }


async def test_without_the_text_app_free_text_is_refused_and_captions_still_work(store):
    apps = Apps()
    core = make_core(store, apps, deployed=False)
    with pytest.raises(FailedPrecondition, match="text understanding is not deployed"):
        await core.create_from_prompt("t", "a cosy beach at dusk", seed=1)
    assert await store.r.zcard(store._index("t")) == 0 and apps.drawn == []  # nothing made
    rec, _ = await core.create_from_prompt("t", "a red door on the left, grass, day", seed=1)
    assert rec.understood["source"] == "grammar"


async def test_bad_free_text_is_invalid_argument_and_makes_nothing(store):
    apps = Apps()
    core = make_core(store, apps)
    with pytest.raises(InvalidArgument, match=re.escape(f"exceeds the limit of {MAX_TEXT_CHARS} characters")):
        await core.create_from_prompt("t", "a door " * 60, seed=1)
    assert apps.read == []  # refused before the text app is asked
    apps.answer = InvalidArgument("understood nothing in 'qwerty'; this world knows: red, blue, ...")
    with pytest.raises(InvalidArgument, match="understood nothing in 'qwerty'"):
        await core.create_from_prompt("t", "qwerty", seed=1)
    # an answer this world cannot draw (a colour it does not know) is refused, never drawn
    apps.answer = {**SNOWY, "spec": {**SNOWY["spec"], "objects": [{"colour": "green", "kind": "door", "side": "left"}]}}
    with pytest.raises(InvalidArgument, match="cannot make: unknown colour 'green'"):
        await core.create_from_prompt("t", "a green door", seed=1)
    assert apps.drawn == [] and await store.r.zcard(store._index("t")) == 0


async def test_a_record_written_before_understood_existed_reads_as_none(store):
    rec = await store.create("t", model="m", prompt="p", seed=0, width=8, height=8, first_frame=b"png")
    await store.r.hdel(store._rec("t", rec.session_id), "understood_spec", "understood_caption", "understood_source")
    old = await store.get("t", rec.session_id)
    assert old.understood is None and old.understood_spec == ""
    assert (await store.fork("t", rec.session_id)).understood is None
