"""The text app's core: free text -> a world spec or an event, protocol-free.

``TextCore(complete, vocab)`` turns free text into what the world understands, with one call of
``complete(prompt, schema) -> answer`` per text: the language model, greedy, its decoding
constrained to ``schema`` (vLLM's structured outputs; see worldserve.text.service). The answer is
then checked against the served world (``worldserve.common.caption``), so whatever the model says,
a caller gets a spec the world can draw, or INVALID_ARGUMENT saying why not:

- empty text, text over ``MAX_TEXT_CHARS`` (the message names the bound);
- text that names nothing the world knows (the message lists what it knows);
- an event text that means none of the events asked about (the message lists them);
- an answer the world cannot draw (a colour the model knows and the world does not: the message
  names the value) or that does not parse (cut at ``MAX_ANSWER_TOKENS``).

``check_model_folder(folder)`` checks a model folder before anything loads it: a missing or
corrupt file is a ``ModelLoadError`` naming the file.

No Ray, vLLM or torch here; metrics go through the project's helper when a ``ServiceMetrics`` is given.
"""

from __future__ import annotations

import json
import struct
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from worldserve.common import caption as grammar
from worldserve.common.caption import normalize_text
from worldserve.common.errors import InvalidArgument
from worldserve.common.metrics import LATENCY_BUCKETS_S, ServiceMetrics
from worldserve.common.registry import ModelLoadError
from worldserve.text.spec import (
    MAX_TEXT_CHARS,
    WORLD_FILE,
    Task,
    Vocabulary,
    event_schema,
    lm_prompt,
    prompt_schema,
    understood_nothing,
)

Complete = Callable[[str, dict[str, Any]], Awaitable[str]]
"""``complete(prompt, schema) -> answer``: the language model's greedy answer to ``prompt``,
decoded under the JSON ``schema``."""

MAX_EVENTS = 64
"""Most events one ParseEvent may choose from."""
MAX_EVENT_CHARS = 100
"""Longest event name one ParseEvent may list."""
CACHE_SIZE = 4096
"""Answers kept per replica (by task, normalized text and events): a Play loop that sends the same
event text every step asks the model once."""

MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", WORLD_FILE)
"""What a text model folder must hold (Hugging Face layout, plus the vocabulary it was trained with)."""


def _quote(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def knows(vocab: Vocabulary) -> str:
    """What a world's prompt may name, for an "understood nothing" message."""
    colours = [c for c in vocab.colours if c in grammar.COLORS]
    grounds = [g for g in vocab.grounds if g in grammar.GROUNDS]
    return (
        f"colours {', '.join(colours)}; objects {', '.join(vocab.kinds)} on the {' or '.join(vocab.sides)}; "
        f"grounds {', '.join(grounds)}; {' or '.join(vocab.times)}; rain or no rain"
    )


def check_text(text: object, what: str = "text") -> str:
    """``text`` when it is a non-empty string of at most ``MAX_TEXT_CHARS`` characters; else InvalidArgument."""
    if not isinstance(text, str):
        raise InvalidArgument(f"{what} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise InvalidArgument(f"{what} is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidArgument(f"{what} of {len(text)} characters exceeds the limit of {MAX_TEXT_CHARS}")
    return text


def check_events(events: object, default: Sequence[str]) -> tuple[str, ...]:
    """The events to choose from: ``events`` (deduplicated, in order) or, when empty, ``default``."""
    if events is None:
        events = ()
    if isinstance(events, str) or not isinstance(events, Sequence):
        raise InvalidArgument(f"events must be a list of event names, got {type(events).__name__}")
    if not events:
        return tuple(default)
    if len(events) > MAX_EVENTS:
        raise InvalidArgument(f"{len(events)} events exceed the limit of {MAX_EVENTS}")
    out: list[str] = []
    for e in events:
        if not isinstance(e, str) or not e.strip():
            raise InvalidArgument(f"an event must be a non-empty string, got {e!r}")
        if len(e) > MAX_EVENT_CHARS:
            raise InvalidArgument(f"event {_quote(e)} of {len(e)} characters exceeds the limit of {MAX_EVENT_CHARS}")
        if e not in out:
            out.append(e)
    return tuple(out)


class TextCore:
    """Free text -> what the world understands (see the module docstring)."""

    def __init__(
        self,
        complete: Complete,
        vocab: Vocabulary,
        *,
        metrics: ServiceMetrics | None = None,
        cache_size: int = CACHE_SIZE,
    ):
        self.complete = complete
        self.vocab = vocab
        self._prompt_schema = prompt_schema(vocab)
        self._cache: OrderedDict[tuple[str, str, tuple[str, ...]], str] = OrderedDict()
        self.cache_size = cache_size
        self.m_parses = self.m_latency = self.m_cache_hits = None
        if metrics is not None:
            self.m_parses = metrics.counter("parses", "Free texts parsed, by task and outcome", ("task", "outcome"))
            self.m_latency = metrics.histogram(
                "parse_duration_seconds",
                "Time to parse one free text (model included), by task",
                ("task",),
                LATENCY_BUCKETS_S,
            )
            self.m_cache_hits = metrics.counter("cache_hits", "Free texts answered from the cache, by task", ("task",))

    async def _answer(self, task: Task, text: str, schema: dict[str, Any], events: tuple[str, ...] = ()) -> Any:
        """The model's answer to ``text`` as JSON (cached)."""
        key = (task, normalize_text(text), events)
        raw = self._cache.get(key)
        if raw is not None:
            self._cache.move_to_end(key)
            if self.m_cache_hits is not None:
                self.m_cache_hits.inc(task=task)
        else:
            raw = await self.complete(lm_prompt(task, text, self.vocab), schema)
        try:
            answer = json.loads(raw)
        except (TypeError, ValueError):
            raise InvalidArgument(
                f"could not understand {_quote(text)}: the language model's answer {_quote(str(raw))} is not JSON"
            ) from None
        self._cache[key] = raw
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return answer

    def _record(self, task: str, outcome: str, t0: float) -> None:
        if self.m_parses is not None:
            self.m_parses.inc(task=task, outcome=outcome)
        if self.m_latency is not None:
            self.m_latency.observe(time.perf_counter() - t0, task=task)

    async def parse_prompt(self, text: str) -> dict[str, Any]:
        """``{"spec": <spec_to_dict form, defaults applied>, "caption": ..., "source": "text"}``."""
        t0 = time.perf_counter()
        outcome = "error"
        try:
            check_text(text, "prompt")
            answer = await self._answer("prompt", text, self._prompt_schema)
            if not isinstance(answer, dict):
                raise InvalidArgument(
                    f"could not understand {_quote(text)}: the language model answered {_quote(json.dumps(answer))}"
                )
            if understood_nothing(answer):
                outcome = "nothing"
                raise InvalidArgument(f"understood nothing in {_quote(text)}; this world knows: {knows(self.vocab)}")
            try:
                spec = grammar.spec_from_dict(answer)
            except ValueError as e:
                outcome = "unfit"
                raise InvalidArgument(f"{_quote(text)} was read as something this world cannot draw: {e}") from None
            outcome = "ok"
            return {"spec": grammar.spec_to_dict(spec), "caption": grammar.caption_of(spec), "source": "text"}
        except InvalidArgument:
            if outcome == "error":
                outcome = "invalid"
            raise
        finally:
            self._record("prompt", outcome, t0)

    async def parse_event(self, text: str, events: Sequence[str] = ()) -> str:
        """The one of ``events`` (empty: every event the model knows) that ``text`` means."""
        t0 = time.perf_counter()
        outcome = "error"
        try:
            check_text(text, "event text")
            choices = check_events(events, self.vocab.events)
            answer = await self._answer("event", text, event_schema(choices), choices)
            event = answer.get("event") if isinstance(answer, dict) else None
            if event is None:
                outcome = "nothing"
                raise InvalidArgument(f"{_quote(text)} names none of the events: {', '.join(repr(e) for e in choices)}")
            if event not in choices:
                outcome = "unfit"
                raise InvalidArgument(
                    f"{_quote(text)} was read as event {event!r}, not one of: {', '.join(repr(e) for e in choices)}"
                )
            outcome = "ok"
            return str(event)
        except InvalidArgument:
            if outcome == "error":
                outcome = "invalid"
            raise
        finally:
            self._record("event", outcome, t0)


# --------------------------------------------------------------------------------------------------
# The model folder


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"text model: {str(path)!r} not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelLoadError(f"text model: {str(path)!r} is not readable JSON: {str(e)[:200]}") from None


def _check_safetensors(path: Path) -> None:
    """The safetensors header (an 8-byte length, then that much JSON) reads and names tensors that fit the file."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("shorter than a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100 * 1024 * 1024):
                raise ValueError(f"header length {n} does not fit the file ({size} bytes)")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise ModelLoadError(f"text model: {str(path)!r} not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelLoadError(f"text model: {str(path)!r} is not a safetensors file: {str(e)[:200]}") from None
    tensors = {k: v for k, v in header.items() if k != "__metadata__"} if isinstance(header, dict) else {}
    if not tensors:
        raise ModelLoadError(f"text model: {str(path)!r} is not a safetensors file: it holds no tensors")
    end = max((int(v.get("data_offsets", [0, 0])[1]) for v in tensors.values() if isinstance(v, dict)), default=0)
    if 8 + n + end > size:
        raise ModelLoadError(
            f"text model: {str(path)!r} is truncated: its tensors need {8 + n + end} bytes, the file has {size}"
        )


def check_model_folder(folder: str | Path) -> Vocabulary:
    """The vocabulary of the text model in ``folder`` once every file it needs is there and reads
    (config.json with a model_type, model.safetensors' header, tokenizer.json, world.json);
    ``ModelLoadError`` naming the first missing or corrupt file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelLoadError(f"text model: folder {str(folder)!r} not found")
    config = _read_json(folder / "config.json")
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ModelLoadError(f"text model: {str(folder / 'config.json')!r} has no model_type")
    _check_safetensors(folder / "model.safetensors")
    if not isinstance(_read_json(folder / "tokenizer.json"), dict):
        raise ModelLoadError(f"text model: {str(folder / 'tokenizer.json')!r} is not a tokenizer")
    try:
        return Vocabulary.read(folder)
    except ValueError as e:
        raise ModelLoadError(f"text model: {e}") from None
