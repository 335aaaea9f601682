"""What a prompt or an event text means, for the apps that take them (sessions, image, dynamics,
web): the caption grammar when the text is in it, else the text app (torch- and ray-free).

- :func:`understand_prompt`: a prompt -> ``{"spec": dict, "caption": str, "source": str}``. A
  caption in the grammar (``worldserve.common.caption``) is read here (``source="grammar"``; the
  image model gets the prompt as it is); any other prompt goes to the text app's ``parse_prompt``
  (``source="text"``; the image model gets the understood caption).
- :class:`EventResolver`: an ``Action.event`` -> the model's declared event it means. An event
  that is one of the declared events (case and spaces aside) is taken as it is; free text goes to
  the text app's ``parse_event``, its answers kept in a small LRU (a Play stream sends its event
  text with every frame; the text app is asked once).

The free-text bound (``max_chars``) is the text app's (``worldserve.text.spec.MAX_TEXT_CHARS``,
passed in by the callers: this layer sits below the text package). The text app is reached through a callable (``worldserve.text.client.TextClient``'s methods in the
served apps, a plain function in unit tests); None means it is not deployed: free text then
answers FAILED_PRECONDITION while grammar prompts and exact event names keep working.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from worldserve.common.caption import caption_of, is_caption, normalize_text, spec_from_dict, spec_to_dict
from worldserve.common.errors import FailedPrecondition, InvalidArgument

if TYPE_CHECKING:
    from worldserve.v1 import common_pb2

GRAMMAR, TEXT = "grammar", "text"
"""``Understood.source``: the prompt was a caption / free text read by the text app."""
NOT_DEPLOYED = "text understanding is not deployed"
EVENT_CACHE_SIZE = 1024
"""(text, declared events) -> event answers an :class:`EventResolver` remembers."""

ParsePrompt = Callable[[str], Awaitable[Mapping[str, Any]]]
"""The text app's ``parse_prompt(text) -> {"spec", "caption", "source"}``."""
ParseEvent = Callable[[str, list[str]], Awaitable[str]]
"""The text app's ``parse_event(text, events) -> one of events``."""


def check_free_text(text: str, what: str, max_chars: int) -> None:
    """INVALID_ARGUMENT for free text the text app would not take: empty, or over the bound."""
    if not text or not text.strip():
        raise InvalidArgument(f"{what} is empty")
    if len(text) > max_chars:
        raise InvalidArgument(
            f"{what} of {len(text)} characters is not in the caption grammar, and free text exceeds "
            f"the limit of {max_chars} characters"
        )


async def understand_prompt(prompt: str, parse_prompt: ParsePrompt | None, *, max_chars: int) -> dict[str, Any]:
    """How ``prompt`` is understood: ``{"spec": spec_to_dict form, "caption": str, "source": str}``.
    A caption in the grammar never needs the text app; free text over ``MAX_TEXT_CHARS`` is
    refused before it is asked (``max_chars``); the text app's answer is checked against this world's grammar."""
    if not prompt or not prompt.strip():
        raise InvalidArgument("prompt is empty")
    spec = is_caption(prompt)
    if spec is not None:
        return {"spec": spec_to_dict(spec), "caption": caption_of(spec), "source": GRAMMAR}
    check_free_text(prompt, "prompt", max_chars)
    if parse_prompt is None:
        raise FailedPrecondition(NOT_DEPLOYED)
    answer = await parse_prompt(prompt)
    try:  # the text app checked it; the world this app draws is what counts
        spec = spec_from_dict(answer["spec"])
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidArgument(
            f"prompt {prompt[:80]!r} was understood as something this world cannot make: {e}"
        ) from None
    return {"spec": spec_to_dict(spec), "caption": caption_of(spec), "source": TEXT}


def image_prompt(prompt: str, understood: Mapping[str, Any]) -> str:
    """What the image model is given: a caption as it is, free text as its understood caption."""
    return prompt if understood["source"] == GRAMMAR else str(understood["caption"])


def understood_pb(understood: Mapping[str, Any] | None) -> common_pb2.Understood | None:
    """The ``Understood`` message of an understood dict (None: none)."""
    if not understood:
        return None
    from worldserve.v1 import common_pb2

    spec = understood["spec"]
    return common_pb2.Understood(
        spec=common_pb2.WorldSpec(
            objects=[
                common_pb2.WorldObject(colour=o["colour"], kind=o["kind"], side=o["side"]) for o in spec["objects"]
            ],
            ground=spec["ground"],
            time_of_day=spec["time"],
            rain=bool(spec["rain"]),
        ),
        caption=understood["caption"],
        source=understood["source"],
    )


class EventResolver:
    """Maps an event as sent (``Action.event``) to one of a model's declared events.

    ``resolve(event, declared) -> (event for the engine, event_text)``: ``event_text`` is the
    free text the event was given as ("" when it named a declared event word for word). Models
    that declare no events take any text as it is, as before. Answers of the text app, and its
    INVALID_ARGUMENT refusals (text naming no event), are remembered per (text, events)."""

    def __init__(self, parse_event: ParseEvent | None, *, max_chars: int, size: int = EVENT_CACHE_SIZE):
        self._parse = parse_event
        self._max_chars = max_chars
        self._size = size
        self._cache: collections.OrderedDict[tuple[str, tuple[str, ...]], str | InvalidArgument] = (
            collections.OrderedDict()
        )
        self.asked = 0
        """How many times the text app was asked (the rest came from the cache)."""

    async def resolve(self, event: str | None, declared: Sequence[str]) -> tuple[str | None, str]:
        if not event or not declared:  # None keeps the event in force, "" clears it
            return event, ""
        norm = normalize_text(event)
        for d in declared:
            if normalize_text(d) == norm:
                return d, ""
        key = (norm, tuple(declared))
        hit = self._cache.get(key)
        if hit is None:
            check_free_text(event, "event", self._max_chars)
            if self._parse is None:
                raise FailedPrecondition(NOT_DEPLOYED)
            self.asked += 1
            try:
                answer = await self._parse(event, list(declared))
                if answer not in declared:
                    raise InvalidArgument(
                        f"event {event[:80]!r} was understood as {str(answer)[:80]!r}, which is none of "
                        f"this model's events: {', '.join(map(repr, declared))}"
                    )
                hit = answer
            except InvalidArgument as e:  # the same text is refused the same way: remembered
                hit = e
            self._cache[key] = hit
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        if isinstance(hit, InvalidArgument):
            raise InvalidArgument(str(hit))
        return hit, event
