"""Free-text world events through the step front and a real engine (real Redis, the toy model): a
model that declares its events gets the declared event a text means (the text app is a function
here), the step says the event in force, and the log keeps both the event and the text."""

import pytest

from worldserve.common.caption import EVENTS
from worldserve.common.config import Config
from worldserve.common.errors import FailedPrecondition, InvalidArgument
from worldserve.dynamics.engine.core import Engine
from worldserve.dynamics.front import StepFront

from .test_engine import MODEL, new_session, req
from .toy_model import ToyModel

DECLARED = list(EVENTS)


class Server:
    """A model deployment's handle shape over an engine (``h.options(...).step.remote(req)``)."""

    def __init__(self, engine: Engine, events: list[str]):
        self.engine, self.events = engine, events
        self.seen: list = []

    def options(self, **kw):
        return self

    def __getattr__(self, name):
        async def remote(*a):
            if name == "step":
                self.seen.append(a[0])
                return await self.engine.step(a[0]), "replica-1"
            if name == "check_actions":
                self.seen.append(a[0])
                return self.engine.check_actions(a[0])
            assert name == "info"
            return {"name": MODEL, "events": self.events}

        return type("Method", (), {"remote": staticmethod(remote)})()


class TextApp:
    def __init__(self):
        self.asked: list[str] = []

    async def parse_event(self, text, events):
        self.asked.append(text)
        if "rain" in text.lower():
            return "it starts to rain"
        raise InvalidArgument(f"{text!r} names none of the events: {', '.join(map(repr, events))}")


@pytest.fixture
async def engine(store):
    e = Engine(ToyModel(), store, Config.load({}, env={}), model_name=MODEL)
    e.start()
    yield e
    await e.close()


def front_of(store, engine, *, events=DECLARED, text: TextApp | None = None):
    server = Server(engine, events)
    front = StepFront(store, {MODEL: server}, [MODEL], MODEL, parse_event=text.parse_event if text else None)
    return front, server


async def test_a_free_text_event_is_mapped_recorded_and_kept(store, engine):
    text = TextApp()
    front, server = front_of(store, engine, text=text)
    sid = (await new_session(store)).session_id
    out, _, _ = await front.step(req(sid, ["right"], event="Make it RAIN please"))
    assert out.event == "it starts to rain" and server.seen[-1].event == "it starts to rain"
    out, _, _ = await front.step(req(sid, ["right"]))  # unset: in force still
    assert out.event == "it starts to rain"
    out, _, _ = await front.step(req(sid, event="Night  Falls"))  # a declared event: no text app
    assert out.event == "night falls"
    for _ in range(3):  # a Play stream repeats its text: the text app is asked once
        await front.step(req(sid, event="make it rain please"))
    assert text.asked == ["Make it RAIN please"]
    entries = [e async for e in store.export("t", sid, frames=False)]
    assert [(e.action or {}).get("event") for e in entries[1:4]] == ["it starts to rain"] * 2 + ["night falls"]
    assert [(e.action or {}).get("event_text") for e in entries[1:5]] == [
        "Make it RAIN please",
        None,
        None,
        "make it rain please",
    ]


async def test_text_naming_no_event_or_no_text_app_takes_no_step(store, engine):
    sid = (await new_session(store)).session_id
    front, _ = front_of(store, engine, text=TextApp())
    with pytest.raises(InvalidArgument, match="names none of the events: 'it starts to rain'"):
        await front.step(req(sid, event="sing a song"))
    with pytest.raises(InvalidArgument, match="exceeds the limit of 300 characters"):
        await front.step(req(sid, event="x" * 301))
    off, _ = front_of(store, engine, text=None)  # text_app "" (not deployed)
    with pytest.raises(FailedPrecondition, match="text understanding is not deployed"):
        await off.step(req(sid, event="make it rain"))
    assert (await store.get("t", sid)).step == 0
    out, _, _ = await off.step(req(sid, event="day breaks"))  # exact names keep working
    assert (out.step, out.event) == (1, "day breaks")


async def test_a_rollouts_free_text_is_checked_before_its_first_step(store, engine):
    sid = (await new_session(store)).session_id
    front, server = front_of(store, engine, text=TextApp())
    await front.check_actions("t", sid, [((), {}, None), (("right",), {}, "let it rain " * 10)])
    assert server.seen[-1][1][2] == "it starts to rain"  # the engine checked the declared event
    with pytest.raises(InvalidArgument, match=r"actions\[1\]: 'sing' names none"):
        await front.check_actions("t", sid, [((), {}, "night falls"), ((), {}, "sing")])


async def test_a_model_declaring_no_events_takes_text_as_before(store, engine):
    text = TextApp()
    front, server = front_of(store, engine, events=[], text=text)
    sid = (await new_session(store)).session_id
    out, _, _ = await front.step(req(sid, event="whatever the model makes of it"))
    assert out.event == "whatever the model makes of it" and text.asked == []
    entries = [e async for e in store.export("t", sid, frames=False)]
    assert "event_text" not in entries[1].action


async def test_a_retried_step_answers_the_event_it_applied(store, engine):
    front, _ = front_of(store, engine, text=TextApp())
    sid = (await new_session(store)).session_id
    first, _, _ = await front.step(req(sid, event="rain now", request_id="r-1"))
    again, _, _ = await front.step(req(sid, event="rain now", request_id="r-1"))  # the recorded step
    assert (again.step, again.event) == (first.step, first.event) == (1, "it starts to rain")
