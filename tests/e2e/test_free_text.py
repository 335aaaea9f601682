"""Free text through the whole stack (issue 25): a free-text prompt -> a world whose session says how
the prompt was understood; a free-text event mid-play -> the declared event in the step and in the
export beside the text; grammar prompts and exact event names never need the text app.

The shared cluster's text app may run a tiny random language model (what it answers is arbitrary
but always parses, or is refused as naming nothing): these tests then assert the structure and the
status codes. With the shipped text model (``weights/text``, ``shipped_text_model``) they also
assert what was understood. Without a text app in the serve config the free-text cases are skipped
here; tests/sessions/test_free_text_prompts.py and tests/dynamics/test_free_text_events.py cover
text_app "" (FAILED_PRECONDITION "text understanding is not deployed") against a real Redis.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from worldserve.client import action, understood
from worldserve.common.caption import EVENTS, caption_of, parse_caption, spec_from_dict

DECLARED = list(EVENTS)


def code_of(fn) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as ei:
        fn()
    assert "Traceback" not in (ei.value.details() or "")
    return ei.value.code(), ei.value.details()


SHIPPED_TEXT = Path(__file__).resolve().parents[2] / "services" / "worldserve" / "weights" / "text"


def text_served() -> bool:
    from worldserve.deploy import load_config

    return any(app.get("name") == "text" for app in load_config()["applications"])


def shipped_text_model(cluster) -> bool:
    """Whether the cluster's text app runs the shipped weights (not a tiny random model)."""
    return not cluster.get("text_model_path") and (SHIPPED_TEXT / "config.json").is_file()


needs_text = pytest.mark.skipif(not text_served(), reason="the serve config deploys no text app")


def check_understood(u: dict, source: str) -> None:
    """An understood spec is one this world can draw, and its caption says exactly that."""
    assert u["source"] == source
    spec = spec_from_dict(u["spec"])
    assert u["caption"] == caption_of(spec) and parse_caption(u["caption"]) == spec


def test_a_caption_is_understood_by_the_grammar(client):
    s = client.create_session(prompt="A pink door on the right, snow, NIGHT", seed=2)
    u = understood(s)
    check_understood(u, "grammar")
    assert u["caption"] == "a pink door on the right, snow, night"
    assert understood(client.get_session(s.session_id)) == u
    assert understood(client.fork_session(s.session_id)) == u
    img = client.generate_image("grass, day, rain", seed=1)
    assert understood(img)["caption"] == "grass, day, rain"


@needs_text
def test_a_free_text_prompt_makes_a_world(client, cluster):
    text = "a snowy night with a pink door to my right"
    try:
        s = client.create_session(prompt=text, seed=3, include_first_frame=True)
    except grpc.RpcError as e:  # a random model may understand nothing; the shipped one must not
        assert not shipped_text_model(cluster), e.details()
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "understood nothing" in e.details(), e.details()
        return
    u = understood(s)
    check_understood(u, "text")
    assert s.prompt == text and s.first_frame.data[:4] == b"\x89PNG"
    assert understood(client.get_session(s.session_id)) == u
    img = client.generate_image(text, seed=3)
    assert understood(img) == u  # the same text is understood the same way (greedy decoding)
    if shipped_text_model(cluster):
        assert u["caption"] == "a pink door on the right, snow, night"


@needs_text
def test_a_free_text_event_mid_play_is_in_the_export(client, cluster):
    info = client.model_info()
    assert list(info.events) == DECLARED and info.events_supported
    s = client.create_session(prompt="a red door on the left, grass, day", seed=4)
    got = [r.event for r in client.play(s.session_id, [action(["right"]), action(["right"], event="Night Falls")])]
    assert got == ["", "night falls"]  # a declared event, case aside: no text app
    text = "make it rain"
    try:
        r = client.step(s.session_id, ["right"], event=text)
    except grpc.RpcError as e:
        assert not shipped_text_model(cluster), e.details()
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "names none of the events" in e.details(), e.details()
        return
    assert r.event in DECLARED and r.step == 3
    if shipped_text_model(cluster):
        assert r.event == "it starts to rain"
    assert client.step(s.session_id, ["left"]).event == r.event  # in force until changed
    steps = list(client.export_session(s.session_id, include_frames=False))
    assert [(t.action.event, t.action.event_text) for t in steps[1:]] == [
        ("", ""),
        ("night falls", ""),
        (r.event, text),
        (r.event, ""),
    ]


@needs_text
def test_bad_free_text_is_refused_with_what_is_wrong(client):
    code, msg = code_of(lambda: client.create_session(prompt="a door " * 60))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "exceeds the limit of 300" in msg
    s = client.create_session(prompt="grass, day", seed=5)
    code, msg = code_of(lambda: client.step(s.session_id, [], event="rain " * 61))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "exceeds the limit of 300" in msg
    assert client.get_session(s.session_id).step == 0
