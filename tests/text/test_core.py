"""TextCore: validation and errors over the language model's answers, and the model-folder check.

The answers here are canned (``complete`` stands in for the language model's output, not for
Serve); one test runs the real path through vLLM's engine on a tiny random model
(tests/text/test_vllm.py)."""

from __future__ import annotations

import json
import struct

import pytest

from worldserve.common.errors import InvalidArgument
from worldserve.common.registry import ModelLoadError
from worldserve.text.core import MAX_EVENTS, TextCore, check_model_folder
from worldserve.text.spec import MAX_TEXT_CHARS, Vocabulary, answer_json, lm_prompt


class Canned:
    """The model's answers by prompt line; records what it was asked."""

    def __init__(self, answers: dict[str, object] | None = None, default: object = None):
        self.answers = answers or {}
        self.default = default
        self.calls: list[tuple[str, dict]] = []

    async def __call__(self, prompt: str, schema: dict) -> str:
        self.calls.append((prompt, schema))
        a = self.answers.get(prompt, self.default)
        return a if isinstance(a, str) else answer_json(a)  # type: ignore[arg-type]


NOTHING = {"objects": [], "ground": None, "time": None, "rain": None}


async def test_a_prompt_becomes_a_spec_with_defaults_and_its_caption():
    lm = Canned(
        {
            lm_prompt("prompt", "A snowy night with a pink door to my right"): {
                "objects": [{"colour": "pink", "kind": "door", "side": "right"}],
                "ground": "snow",
                "time": "night",
                "rain": None,
            }
        }
    )
    core = TextCore(lm, Vocabulary())
    out = await core.parse_prompt("A snowy night with a pink door to my right")
    assert out == {
        "spec": {
            "objects": [{"colour": "pink", "kind": "door", "side": "right"}],
            "ground": "snow",
            "time": "night",
            "rain": False,
        },
        "caption": "a pink door on the right, snow, night",
        "source": "text",
    }
    prompt, schema = lm.calls[0]
    assert prompt == "prompt: a snowy night with a pink door to my right\n"
    assert schema["properties"]["objects"]["items"]["properties"]["colour"]["enum"] == list(Vocabulary().colours)


@pytest.mark.parametrize("text", ["", "   \n"])
async def test_empty_text_is_refused_before_the_model(text):
    lm = Canned(default=NOTHING)
    core = TextCore(lm, Vocabulary())
    with pytest.raises(InvalidArgument, match="prompt is empty"):
        await core.parse_prompt(text)
    with pytest.raises(InvalidArgument, match="event text is empty"):
        await core.parse_event(text, ["night falls"])
    assert lm.calls == []


async def test_text_over_the_bound_names_the_bound():
    lm = Canned(default=NOTHING)
    core = TextCore(lm, Vocabulary())
    with pytest.raises(InvalidArgument, match=f"of {MAX_TEXT_CHARS + 1} characters exceeds the limit of 300"):
        await core.parse_prompt("x" * (MAX_TEXT_CHARS + 1))
    with pytest.raises(InvalidArgument, match="exceeds the limit of 300"):
        await core.parse_event("y" * 301, [])
    assert lm.calls == []


async def test_text_that_names_nothing_says_what_the_world_knows():
    core = TextCore(Canned(default=NOTHING), Vocabulary())
    with pytest.raises(InvalidArgument) as e:
        await core.parse_prompt("the quarterly tax report")
    msg = str(e.value)
    assert "understood nothing in 'the quarterly tax report'" in msg
    for word in ("red", "cyan", "door", "box", "left", "right", "grass", "snow", "night", "rain"):
        assert word in msg


async def test_an_answer_the_world_cannot_draw_is_invalid_argument_naming_the_value():
    # a model trained with a colour the served world does not draw
    vocab = Vocabulary(colours=("red", "orange"))
    answer = {
        "objects": [{"colour": "orange", "kind": "box", "side": "left"}],
        "ground": None,
        "time": None,
        "rain": None,
    }
    lm = Canned(default=answer)
    core = TextCore(lm, vocab)
    with pytest.raises(InvalidArgument, match="unknown colour 'orange'"):
        await core.parse_prompt("an orange crate on the left")
    assert "orange" in lm.calls[0][1]["properties"]["objects"]["items"]["properties"]["colour"]["enum"]


@pytest.mark.parametrize(
    "raw, match",
    [
        ('{"objects":[{"colour":"red","kind":"door","side":"le', "is not JSON"),  # cut at the token budget
        ("[1, 2]", "answered"),
        ('{"objects":[],"ground":"lava","time":null,"rain":null}', "unknown ground 'lava'"),
        ('{"objects":[],"ground":null,"time":"dusk","rain":null}', "unknown time of day 'dusk'"),
        (
            '{"objects":[{"colour":"red","kind":"door","side":"left"},{"colour":"blue","kind":"box","side":"left"}],'
            '"ground":null,"time":null,"rain":null}',
            "at most one object per side",
        ),
    ],
)
async def test_a_malformed_answer_is_invalid_argument_never_a_crash(raw, match):
    core = TextCore(Canned(default=raw), Vocabulary())
    with pytest.raises(InvalidArgument, match=match):
        await core.parse_prompt("a red door on the left")


async def test_an_event_text_maps_to_one_of_the_given_events():
    lm = Canned({lm_prompt("event", "make it rain"): {"event": "it starts to rain"}})
    core = TextCore(lm, Vocabulary())
    assert await core.parse_event("make it rain", ["night falls", "it starts to rain"]) == "it starts to rain"
    schema = lm.calls[0][1]
    assert schema["properties"]["event"]["enum"] == ["night falls", "it starts to rain", None]


async def test_no_events_given_means_every_event_the_model_knows():
    lm = Canned(default={"event": "day breaks"})
    core = TextCore(lm, Vocabulary())
    assert await core.parse_event("sunrise please", []) == "day breaks"
    assert lm.calls[0][1]["properties"]["event"]["enum"] == [*Vocabulary().events, None]


async def test_an_event_text_that_means_none_names_the_events():
    core = TextCore(Canned(default={"event": None}), Vocabulary())
    with pytest.raises(InvalidArgument) as e:
        await core.parse_event("bake a cake", ["night falls", "day breaks"])
    assert str(e.value) == "'bake a cake' names none of the events: 'night falls', 'day breaks'"


async def test_an_event_answer_outside_the_choices_is_refused():
    core = TextCore(Canned(default={"event": "it starts to rain"}), Vocabulary())
    with pytest.raises(InvalidArgument, match="not one of: 'night falls'"):
        await core.parse_event("make it rain", ["night falls"])


@pytest.mark.parametrize(
    "events, match",
    [
        ("night falls", "must be a list"),
        (["night falls", ""], "non-empty string"),
        (["night falls", 3], "non-empty string"),
        ([f"e{i}" for i in range(MAX_EVENTS + 1)], f"exceed the limit of {MAX_EVENTS}"),
        (["x" * 101], "exceeds the limit of 100"),
    ],
)
async def test_bad_event_lists_are_refused(events, match):
    lm = Canned(default={"event": None})
    with pytest.raises(InvalidArgument, match=match):
        await TextCore(lm, Vocabulary()).parse_event("make it rain", events)
    assert lm.calls == []


async def test_repeated_texts_are_answered_from_the_cache():
    lm = Canned(default={"event": "night falls"})
    core = TextCore(lm, Vocabulary(), cache_size=2)
    for _ in range(3):
        assert await core.parse_event("Make it  DARK", ["night falls"]) == "night falls"
    assert len(lm.calls) == 1  # normalized text: one model call
    await core.parse_event("make it dark", ["night falls", "day breaks"])  # other events: asked again
    await core.parse_event("lights out", ["night falls"])
    await core.parse_event("make it dark", ["night falls"])  # evicted (LRU of 2)
    assert len(lm.calls) == 4


async def test_metrics_count_parses_by_task_and_outcome():
    import prometheus_client as pc

    from worldserve.common.metrics import ServiceMetrics

    core = TextCore(Canned(default=NOTHING), Vocabulary(), metrics=ServiceMetrics("text"))

    def count(task, outcome):
        return pc.REGISTRY.get_sample_value("worldserve_text_parses_total", {"task": task, "outcome": outcome}) or 0

    before = count("prompt", "nothing"), count("prompt", "invalid")
    with pytest.raises(InvalidArgument):
        await core.parse_prompt("tax report")
    with pytest.raises(InvalidArgument):
        await core.parse_prompt("")
    assert (count("prompt", "nothing"), count("prompt", "invalid")) == (before[0] + 1, before[1] + 1)
    assert pc.REGISTRY.get_sample_value("worldserve_text_parse_duration_seconds_count", {"task": "prompt"}) >= 2


# -- the model folder ------------------------------------------------------------------------------


def _folder(tmp_path):
    """A folder with every file a text model needs (tiny, not loadable: the check reads headers)."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {}}))
    Vocabulary().write(tmp_path)
    return tmp_path


def test_a_complete_folder_passes_and_gives_its_vocabulary(tmp_path):
    assert check_model_folder(_folder(tmp_path)) == Vocabulary()


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("config.json", None, "not found"),
        ("config.json", b"{not json", "not readable JSON"),
        ("config.json", b'{"vocab_size": 3}', "has no model_type"),
        ("model.safetensors", None, "not found"),
        ("model.safetensors", b"\x01\x02", "not a safetensors file"),
        ("model.safetensors", struct.pack("<Q", 10**9) + b"{}", "not a safetensors file"),
        ("tokenizer.json", None, "not found"),
        ("tokenizer.json", b"\xff\xfe", "not readable JSON"),
        ("world.json", None, "not found"),
        ("world.json", b'{"colours": []}', "missing field"),
    ],
)
def test_a_missing_or_corrupt_file_is_a_start_up_error_naming_it(tmp_path, name, content, match):
    folder = _folder(tmp_path)
    if content is None:
        (folder / name).unlink()
    else:
        (folder / name).write_bytes(content)
    with pytest.raises(ModelLoadError, match=match) as e:
        check_model_folder(folder)
    assert str(folder / name) in str(e.value)


def test_a_truncated_weights_file_is_named(tmp_path):
    folder = _folder(tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:-4])
    with pytest.raises(ModelLoadError, match="model.safetensors' is truncated"):
        check_model_folder(folder)


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="folder .*nope.* not found"):
        check_model_folder(tmp_path / "nope")
