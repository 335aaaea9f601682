"""The real path through vLLM's engine (offline, no Ray): a tiny random model folder, the served
engine settings (worldserve.text.service.LLM_DEFAULTS), TextCore over it. Every answer decodes
under the schema and parses, so each text is understood as a valid spec or event, or refused with
INVALID_ARGUMENT: never a crash, never an answer cut at the token budget (a free-whitespace grammar
let an untrained model spend its budget on blanks: the engine disallows whitespace).

vLLM starts worker processes: it runs in a subprocess of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = r"""
import asyncio, json, sys

from worldserve.common.errors import InvalidArgument
from worldserve.text.core import TextCore, check_model_folder
from worldserve.text.service import LLM_DEFAULTS
from worldserve.text.spec import MAX_ANSWER_TOKENS

PROMPTS = ["a snowy night with a pink door to my right", "gimme a blue crate on the left", "hello there",
           "sand, rain, and a cyan box on the right", "the quarterly tax report"]
EVENTS = ["make it rain", "lights out", "bake a cake"]


async def main(llm, vocab):
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    raw = []

    async def complete(prompt, schema):
        sp = SamplingParams(temperature=0, max_tokens=MAX_ANSWER_TOKENS,
                            structured_outputs=StructuredOutputsParams(json=schema))
        out = llm.generate([prompt], sp, use_tqdm=False)[0].outputs[0]
        raw.append([out.text, len(out.token_ids), out.finish_reason])
        return out.text

    core = TextCore(complete, vocab)
    results = []
    for text in PROMPTS:
        try:
            results.append(["prompt", text, "ok", await core.parse_prompt(text)])
        except InvalidArgument as e:
            results.append(["prompt", text, "invalid", str(e)])
    for text in EVENTS:
        try:
            results.append(["event", text, "ok", await core.parse_event(text, ["it starts to rain", "night falls"])])
        except InvalidArgument as e:
            results.append(["event", text, "invalid", str(e)])
    print("RESULT " + json.dumps({"results": results, "raw": raw}), flush=True)


if __name__ == "__main__":
    from vllm import LLM

    folder = sys.argv[1]
    vocab = check_model_folder(folder)
    llm = LLM(model=folder, **LLM_DEFAULTS["engine_kwargs"])
    asyncio.run(main(llm, vocab))
"""


@pytest.mark.timeout(600)
def test_tiny_model_through_vllm_answers_parse(tmp_path):
    pytest.importorskip("vllm")
    from worldserve.common import caption as grammar
    from worldserve.text.testing import write_tiny_text_model

    folder = write_tiny_text_model(tmp_path / "tiny")
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", PYTHONPATH=f"{root / 'services'}:{root}")
    out = subprocess.run(
        [sys.executable, str(script), str(folder)], capture_output=True, text=True, timeout=540, env=env
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    assert out.returncode == 0 and lines, out.stderr[-3000:]
    got = json.loads(lines[0][len("RESULT ") :])
    for text, n_tokens, finish in got["raw"]:
        assert finish == "stop" and n_tokens < 64, (text, n_tokens, finish)  # ended by the grammar, not the budget
        assert text == json.dumps(json.loads(text), separators=(",", ":")), text  # compact JSON: no blanks
    for task, text, outcome, value in got["results"]:
        if outcome == "ok" and task == "prompt":
            spec = grammar.spec_from_dict(value["spec"])
            assert value["caption"] == grammar.caption_of(spec) and value["source"] == "text"
        elif outcome == "ok":
            assert value in ("it starts to rain", "night falls")
        elif task == "prompt":
            assert value.startswith(f"understood nothing in {text!r}") or "cannot draw" in value, value
        else:
            assert value == f"{text!r} names none of the events: 'it starts to rain', 'night falls'", value
