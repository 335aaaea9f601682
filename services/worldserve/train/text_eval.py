"""``python -m worldserve.train text-eval --model FOLDER [--set NAME ...]``: the text model on held-out
sets (default ``text_heldout``), decoded as the served app decodes it: vLLM (offline ``LLM``, loaded
once for all the sets), greedy, under ``prompt_schema(Vocabulary.read(FOLDER))`` / ``event_schema(EVENTS)``.

Figures per set: exact spec % (the answer through ``spec_from_dict`` equals the expected spec,
defaults applied, and it understood something exactly when the text named something), exact answer %
(every field, nulls included), exact event %, per-field error counts; over the sets, their means; once
per model, answer tokens, the in-distribution check and the latency of single requests. A JSON report
(with every miss) goes to ``--report``.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

from worldserve.common import caption as grammar
from worldserve.text.spec import (
    MAX_ANSWER_TOKENS,
    Task,
    Vocabulary,
    event_schema,
    lm_prompt,
    prompt_schema,
    understood_nothing,
)

from . import text_data
from .text_heldout import Item, heldout


def _field(answer: dict[str, Any], key: str) -> Any:
    """One field of an answer; the objects in left-to-right order (the order an answer lists
    them in means nothing: the model lists them as the text names them)."""
    value = answer.get(key)
    if key == "objects" and isinstance(value, list):
        return sorted(
            value,
            key=lambda o: (str(o.get("side")), json.dumps(o, sort_keys=True)) if isinstance(o, dict) else ("", str(o)),
        )
    return value


def score_prompt(expected: dict[str, Any], got: dict[str, Any] | None) -> dict[str, Any]:
    """Compare one prompt answer with the expected one: ``spec_ok`` (what the world would render,
    and whether it would be refused as naming nothing), ``exact`` (every field) and the fields that differ."""
    if got is None:
        return {"spec_ok": False, "exact": False, "fields": ["unparsable"]}
    fields = [k for k in ("objects", "ground", "time", "rain") if _field(got, k) != _field(expected, k)]
    try:
        spec_got = grammar.spec_from_dict(got)
    except ValueError:
        return {"spec_ok": False, "exact": False, "fields": [*fields, "invalid"]}
    ok = understood_nothing(got) == understood_nothing(expected)
    if ok and not understood_nothing(expected):
        ok = spec_got == grammar.spec_from_dict(expected)
    return {"spec_ok": ok, "exact": not fields, "fields": fields}


def prompt_miss(item: Item, text: str, score: dict[str, Any]) -> dict[str, Any] | None:
    """The report's entry for a prompt answered ``text`` and scored ``score`` (``score_prompt``):
    every answer that is not exact, spec misses and field-only misses (``spec_ok``) alike, so the
    misses account for every figure of the report."""
    if score["exact"]:
        return None
    return {"task": "prompt", "text": item.text, "expected": item.answer, "got": text, "spec_ok": score["spec_ok"]}


def score_set(items: list[Item], prompt_answers: list[str], event_answers: list[str]) -> dict[str, Any]:
    """One set's figures from the model's answers (``prompt_answers`` for the set's prompts and
    ``event_answers`` for its event texts, each in the set's order): exact spec, exact answer and exact
    event %, per-field error counts, answer sizes and every miss."""
    prompts = [it for it in items if it.task == "prompt"]
    events = [it for it in items if it.task == "event"]
    field_errors: Counter[str] = Counter()
    misses: list[dict[str, Any]] = []
    spec_ok = exact = 0
    for it, text in zip(prompts, prompt_answers, strict=True):
        try:
            got = json.loads(text)
        except json.JSONDecodeError:
            got = None
        s = score_prompt(it.answer, got)
        spec_ok += s["spec_ok"]
        exact += s["exact"]
        field_errors.update(s["fields"])
        if (miss := prompt_miss(it, text, s)) is not None:
            misses.append(miss)
    ev_ok = 0
    for it, text in zip(events, event_answers, strict=True):
        try:
            got_ev = json.loads(text).get("event", "?")
        except (json.JSONDecodeError, AttributeError):
            got_ev = "?"
        if got_ev == it.answer["event"]:
            ev_ok += 1
        else:
            field_errors["event"] += 1
            misses.append({"task": "event", "text": it.text, "expected": it.answer, "got": text})
    return {
        "prompts": len(prompts),
        "events": len(events),
        "exact_spec_pct": round(100 * spec_ok / max(1, len(prompts)), 2),
        "exact_answer_pct": round(100 * exact / max(1, len(prompts)), 2),
        "exact_event_pct": round(100 * ev_ok / max(1, len(events)), 2),
        "field_errors": dict(field_errors),
        "misses": misses,
    }


def mean_figures(per_set: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The sets' mean exact spec %, mean exact event % and the mean of the two (each set weighs the same)."""
    n = max(1, len(per_set))
    spec = sum(r["exact_spec_pct"] for r in per_set.values()) / n
    event = sum(r["exact_event_pct"] for r in per_set.values()) / n
    return {
        "mean_spec_pct": round(spec, 3),
        "mean_event_pct": round(event, 3),
        "mean_pct": round((spec + event) / 2, 3),
    }


def offline_llm(model: Path, dtype: str = "float32") -> Any:
    """vLLM's offline engine on a text model folder, as every offline measure loads it (eager, at most
    256 positions, a 1 GiB CPU KV cache unless ``VLLM_CPU_KVCACHE_SPACE`` says otherwise). Call it
    under ``if __name__ == "__main__":`` (vLLM starts processes)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM

    return LLM(
        model=str(model),
        dtype=dtype,  # type: ignore[arg-type]  # checked by the caller
        max_model_len=256,
        enforce_eager=True,
        gpu_memory_utilization=0.1,
    )


def evaluate_folder(
    model: Path, *, dtype: str = "float32", sets: dict[str, list[Item]] | None = None
) -> dict[str, Any]:
    """Run held-out sets (``{name: items}``; default: ``text_heldout``) through vLLM, loaded once;
    the report as a dict: each set's figures (``score_set``) under ``sets``, their means, and once for
    the model the in-distribution check and the latency of single requests. Call it under
    ``if __name__ == "__main__":`` (vLLM starts processes)."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    sets = {"heldout": heldout()} if sets is None else sets
    vocab = Vocabulary.read(model)
    t0 = time.monotonic()
    llm = offline_llm(model, dtype)
    startup_s = time.monotonic() - t0

    def params(schema: dict[str, Any]) -> Any:
        return SamplingParams(
            temperature=0, max_tokens=MAX_ANSWER_TOKENS, structured_outputs=StructuredOutputsParams(json=schema)
        )

    sp, se = params(prompt_schema(vocab)), params(event_schema(list(grammar.EVENTS)))

    def answers(texts: list[str], task: Task) -> tuple[list[str], list[int]]:
        outs = llm.generate([lm_prompt(task, t, vocab) for t in texts], sp if task == "prompt" else se, use_tqdm=False)
        return [o.outputs[0].text for o in outs], [len(o.outputs[0].token_ids) for o in outs]

    per_set: dict[str, dict[str, Any]] = {}
    tokens: list[int] = []
    t0 = time.monotonic()
    for name, items in sets.items():
        out_p, tok = answers([it.text for it in items if it.task == "prompt"], "prompt")
        out_e, _ = answers([it.text for it in items if it.task == "event"], "event")
        tokens += tok
        per_set[name] = score_set(items, out_p, out_e)
    batch_s = time.monotonic() - t0

    # in-distribution check: fresh pairs of the training generator
    train_pairs = list(text_data.samples(424242, 200, vocab))
    outs = llm.generate(
        [p for p, _ in train_pairs],
        [sp if p.startswith("prompt:") else se for p, _ in train_pairs],
        use_tqdm=False,
    )
    train_exact = sum(o.outputs[0].text == a for o, (_, a) in zip(outs, train_pairs, strict=True))

    # latency of single requests, one at a time (the first set's first prompts)
    first = next(iter(sets.values()), [])
    lat = []
    for it in [it for it in first if it.task == "prompt"][:30]:
        t = time.monotonic()
        llm.generate([lm_prompt("prompt", it.text, vocab)], sp, use_tqdm=False)
        lat.append(time.monotonic() - t)
    return {
        "model": str(model),
        "dtype": dtype,
        "sets": per_set,
        **mean_figures(per_set),
        "train_generator_exact_pct": round(100 * train_exact / len(train_pairs), 2),
        "answer_tokens_mean": round(statistics.mean(tokens), 2) if tokens else 0,
        "answer_tokens_max": max(tokens, default=0),
        "startup_s": round(startup_s, 1),
        "batch_s": round(batch_s, 2),
        "single_request_p50_ms": round(1000 * statistics.median(lat), 1) if lat else None,
        "single_request_p90_ms": round(1000 * sorted(lat)[int(0.9 * (len(lat) - 1))], 1) if lat else None,
    }
