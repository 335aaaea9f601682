"""What a larger text model would cost to decode on this machine: `python -m loadtest.text_shapes`.

For the shipped text model and for models of larger shapes (random weights, the shipped tokenizer and
``world.json``: decoding cost depends on the shape, not on the weights), the time vLLM takes to decode
one answer of ``--tokens`` tokens (greedy, ``ignore_eos``), one request at a time: p50 over ``--n``
requests after three unmeasured ones. Each model is loaded in its own process (one vLLM engine per
process). The figure is the model's part of a parse; `loadtest.text_bench` measures the whole stack.

Shapes: ``NAME=HIDDENxLAYERSxHEADSxKV_HEADSxMLP`` (``--shape``, repeatable); by default a 27 M-parameter
shape and SmolLM2-135M's transformer (its 49 k-token embedding left out: the vocabulary stays 1,024).
Prints one JSON object (also written to ``--out``). A shape vLLM cannot run fails with the engine's
error (seen: a head size of 16 on this CPU; 48 and 64 run).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHIPPED = Path(__file__).resolve().parent.parent / "services" / "worldserve" / "weights" / "text"
DEFAULT_SHAPES = ("27m=384x12x6x6x1536", "smollm2-135m-body=576x30x9x3x1536")
PROMPT = "prompt: a snowy night with a pink door to my right and a blue crate on the left, no rain please"


def parse_shape(spec: str) -> tuple[str, dict[str, int]]:
    """``NAME=HIDDENxLAYERSxHEADSxKV_HEADSxMLP`` -> (name, LlamaConfig fields); ValueError saying the form."""
    name, _, dims = spec.partition("=")
    parts = dims.split("x")
    if not name or len(parts) != 5 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"shape {spec!r}: expected NAME=HIDDENxLAYERSxHEADSxKV_HEADSxMLP, e.g. 27m=384x12x6x6x1536")
    hidden, layers, heads, kv, mlp = map(int, parts)
    if hidden % heads or heads % kv:
        raise ValueError(f"shape {spec!r}: the heads must divide the width and the KV heads the heads")
    return name, {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "intermediate_size": mlp,
    }


def make_shape_folder(shape: dict[str, int], out: Path, *, source: Path = SHIPPED, seed: int = 0) -> int:
    """A model folder at ``out``: ``source``'s config with ``shape``'s dimensions, random bfloat16
    weights, ``source``'s tokenizer and ``world.json``; its parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = json.loads((source / "config.json").read_text())
    cfg = {k: v for k, v in cfg.items() if k not in ("architectures", "transformers_version")}
    cfg.update(shape, head_dim=shape["hidden_size"] // shape["num_attention_heads"])
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    for f in source.iterdir():
        if f.is_file() and f.name not in ("config.json", "model.safetensors", "MODEL_CARD.md"):
            shutil.copy(f, out / f.name)
    return sum(p.numel() for p in model.parameters())


def measure(folder: Path, *, tokens: int, n: int) -> float:
    """p50 ms of one ``tokens``-token answer, one request at a time (``text_eval.offline_llm``, float32)."""
    from vllm import SamplingParams

    from worldserve.train.text_eval import offline_llm

    llm = offline_llm(folder)
    sp = SamplingParams(temperature=0, max_tokens=tokens, min_tokens=tokens, ignore_eos=True)
    for _ in range(3):
        llm.generate([PROMPT], sp, use_tqdm=False)
    lat = []
    for _ in range(n):
        t = time.monotonic()
        llm.generate([PROMPT], sp, use_tqdm=False)
        lat.append(time.monotonic() - t)
    return round(1000 * statistics.median(lat), 1)


def _measure_in_child(folder: Path, tokens: int, n: int) -> float:
    cmd = [
        sys.executable,
        "-m",
        "loadtest.text_shapes",
        "--measure",
        str(folder),
        "--tokens",
        str(tokens),
        "--n",
        str(n),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"measuring {folder} failed (rc {r.returncode}): {r.stderr.strip()[-400:]}")
    return float(json.loads(lines[-1])["p50_ms"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", action="append", help="NAME=HIDDENxLAYERSxHEADSxKV_HEADSxMLP (repeatable)")
    ap.add_argument("--model", type=Path, default=SHIPPED, help="the baseline model folder (default: the shipped one)")
    ap.add_argument("--tokens", type=int, default=15, help="answer length in tokens (the shipped model's mean is 14.9)")
    ap.add_argument("--n", type=int, default=30, help="measured requests per model")
    ap.add_argument("--out", type=Path, default=Path("out/text-shapes.json"))
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child: one folder
    a = ap.parse_args(argv)
    if a.measure is not None:
        print(json.dumps({"p50_ms": measure(a.measure, tokens=a.tokens, n=a.n)}))
        return 0
    try:
        shapes = [parse_shape(s) for s in (a.shape or DEFAULT_SHAPES)]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    models: dict[str, dict[str, object]] = {}
    report = {"tokens": a.tokens, "n": a.n, "models": models}
    base = _measure_in_child(a.model, a.tokens, a.n)
    models["baseline"] = {"folder": str(a.model), "p50_ms": base}
    print(f"baseline ({a.model}): p50 {base} ms", flush=True)
    with tempfile.TemporaryDirectory(prefix="text-shapes-") as tmp:
        for name, shape in shapes:
            folder = Path(tmp) / name
            params = make_shape_folder(shape, folder, source=a.model)
            p50 = _measure_in_child(folder, a.tokens, a.n)
            models[name] = {
                **shape,
                "params_m": round(params / 1e6, 2),
                "p50_ms": p50,
                "vs_baseline": round(p50 / base, 2),
            }
            print(f"{name} ({params / 1e6:.1f} M parameters): p50 {p50} ms, {p50 / base:.2f}x the baseline", flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
