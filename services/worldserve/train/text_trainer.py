"""Train the text app's language model: a small Llama (Hugging Face layout, vLLM loads it) that reads
``lm_prompt(task, text)`` and writes ``answer_json`` (``worldserve.text.spec``).

* Tokenizer: byte-level BPE (GPT-2 style, so vLLM's structured output handles every token), split
  only before spaces and around an answer's values: JSON fragments such as ``{"objects":[{"colour":"``
  merge into single tokens, so answers are a few tokens long (13 for one object). ``<s>`` is prepended to every prompt (the post-processor does
  it, for vLLM as for the trainer), ``</s>`` ends every answer.
* Model: ``LlamaForCausalLM``, tied embeddings, the loss on the answer tokens and ``</s>`` only.
* Data: drawn on the fly from ``text_data`` (batch ``i`` from a generator seeded with
  ``seed`` and ``i``: a resumed run sees the batches the uninterrupted one would have).
* Resumable: ``OUT/ckpt.pt`` (model, optimizer, schedule, step) every ``ckpt_every`` steps;
  ``resume=True`` continues from it. ``OUT/model`` is the exported folder (config.json,
  model.safetensors, tokenizer files, generation_config.json, world.json).
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from worldserve.text.spec import MAX_ANSWER_TOKENS

from . import text_data

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
MAX_LEN = 256
ANSWER_VALUE = r'(?<=:")[a-z][a-z ]*(?=")|(?<=:)(?:null|true|false)'
"""An answer's values (``red``, ``null``...) are pieces of their own: tokens never merge a value
into the JSON around it, so each field is learnt apart (a one-object answer is 13 tokens)."""


@dataclass
class TextModelConfig:
    hidden: int = 192
    layers: int = 4
    heads: int = 4
    intermediate: int = 512
    vocab_size: int = 1024


@dataclass
class TextTrainConfig:
    out: Path = Path("out/text")
    steps: int = 4000
    batch: int = 64
    lr: float = 2e-3
    warmup: int = 200
    weight_decay: float = 0.01
    seed: int = 0
    ckpt_every: int = 250
    eval_every: int = 500
    eval_n: int = 128
    threads: int = 2
    dtype: str = "float32"  # the saved weights: float32 or bfloat16
    init_from: Path | None = None  # warm start: a training folder (tokenizer/, ckpt.pt) or a model folder
    tokenizer_n: int = 30000  # generated pairs the tokenizer is trained on
    chunks: int = 2  # a step's batch is computed in this many length-sorted chunks
    budget_min: float = 0.0  # > 0: also stop (and finish the LR schedule) after this many minutes
    model: TextModelConfig = field(default_factory=TextModelConfig)


# --------------------------------------------------------------------------------------------------
# Tokenizer


def train_tokenizer(vocab_size: int, *, seed: int = 12345, n: int = 30000) -> Any:
    """A byte-level BPE tokenizer trained on ``n`` generated prompts and answers
    (a ``transformers.PreTrainedTokenizerFast``)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(ANSWER_VALUE), behavior="isolated"),
            pre_tokenizers.Split(Regex(" "), behavior="merged_with_next"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def corpus():
        for p, a in text_data.samples(seed, n, text_data.reading_vocabulary()):
            yield p
            yield a

    tok.train_from_iterator(corpus(), trainer=trainer, length=2 * n)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, bos_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=MAX_LEN,
        clean_up_tokenization_spaces=False,
    )


def encode_pair(tok: Any, prompt: str, answer: str) -> tuple[list[int], int]:
    """Token ids of prompt + answer + ``</s>`` (the prompt with ``<s>``, encoded apart from the
    answer exactly as vLLM encodes a prompt) and the prompt's length."""
    p = tok(prompt)["input_ids"]
    a = tok(answer, add_special_tokens=False)["input_ids"]
    return p + a + [tok.eos_token_id], len(p)


# --------------------------------------------------------------------------------------------------
# Model


def build_model(mc: TextModelConfig, tok: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=mc.hidden,
        intermediate_size=mc.intermediate,
        num_hidden_layers=mc.layers,
        num_attention_heads=mc.heads,
        num_key_value_heads=mc.heads,
        max_position_embeddings=MAX_LEN,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        rms_norm_eps=1e-5,
    )
    return LlamaForCausalLM(cfg)


def collate(tok: Any, pairs: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
    seqs = [encode_pair(tok, p, a) for p, a in pairs]
    n = max(len(s) for s, _ in seqs)
    ids = torch.full((len(seqs), n), tok.pad_token_id, dtype=torch.long)
    labels = torch.full((len(seqs), n), -100, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, (s, lp) in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        labels[i, lp : len(s)] = torch.tensor(s[lp:])
        mask[i, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batch_pairs(seed: int, step: int, batch: int) -> list[tuple[str, str]]:
    rng = random.Random(seed * 1_000_003 + step)
    return [text_data.sample(rng, text_data.reading_vocabulary()) for _ in range(batch)]


@torch.no_grad()
def greedy_answers(model: Any, tok: Any, prompts: Sequence[str], max_new: int = MAX_ANSWER_TOKENS) -> list[str]:
    """Unconstrained greedy answers (monitoring; the served path decodes under the JSON schema)."""
    model.eval()
    enc = [tok(p)["input_ids"] for p in prompts]
    n = max(len(e) for e in enc)
    ids = torch.full((len(enc), n), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(enc), n), dtype=torch.long)
    for i, e in enumerate(enc):  # left padding for generation
        ids[i, n - len(e) :] = torch.tensor(e)
        mask[i, n - len(e) :] = 1
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=max_new,
        do_sample=False,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model.train()
    return [tok.decode(o[n:], skip_special_tokens=True) for o in out]


def quick_eval(model: Any, tok: Any, seed: int, n: int) -> float:
    """Exact-match rate of greedy answers on ``n`` fresh training-generator pairs."""
    pairs = list(text_data.samples(seed, n, text_data.reading_vocabulary()))
    got = greedy_answers(model, tok, [p for p, _ in pairs])
    return sum(g.strip() == a for g, (_, a) in zip(got, pairs, strict=True)) / max(1, n)


# --------------------------------------------------------------------------------------------------
# Export


def export_model(model: Any, tok: Any, folder: Path, *, dtype: str, card: str | None = None) -> Path:
    """The Hugging Face folder vLLM loads, plus ``world.json``."""
    from transformers import GenerationConfig

    folder.mkdir(parents=True, exist_ok=True)
    m = model
    if dtype == "bfloat16":
        import copy

        m = copy.deepcopy(model).to(torch.bfloat16)
    m.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        do_sample=False,
        max_new_tokens=MAX_ANSWER_TOKENS,
    ).save_pretrained(folder)
    text_data.reading_vocabulary().write(folder)
    if card is not None:
        (folder / "MODEL_CARD.md").write_text(card)
    return folder


# --------------------------------------------------------------------------------------------------
# Training


def _progress(step: int, elapsed_s: float, tc: TextTrainConfig) -> float:
    """How far the run is, 0..1: by steps, or by the wall-clock budget when that comes first."""
    p = step / max(1, tc.steps)
    if tc.budget_min > 0:
        p = max(p, elapsed_s / (tc.budget_min * 60))
    return min(1.0, p)


def _lr(step: int, progress: float, tc: TextTrainConfig) -> float:
    """Linear warm-up, then cosine down to 5% of the peak as ``progress`` goes to 1."""
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    return tc.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def _init_tokenizer_dir(init_from: Path) -> Path:
    """A warm start's tokenizer: a training folder's ``tokenizer/``, or an exported model folder."""
    if (init_from / "tokenizer").is_dir():
        return init_from / "tokenizer"
    if (init_from / "tokenizer.json").is_file() and (init_from / "config.json").is_file():
        return init_from
    raise FileNotFoundError(f"{init_from}: neither a training folder (tokenizer/, ckpt.pt) nor a model folder")


_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
GROWN_ZEROED = ("self_attn.o_proj.weight", "mlp.down_proj.weight")
"""A grown layer's output projections, zeroed: it adds nothing to the residual stream at first."""


def grow_depth(state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """A warm start's weights deepened to ``layers`` decoder layers, computing the same function:
    old layer ``i`` becomes layer ``i * layers // n``, and each layer between two old ones is a copy
    of the one below it with ``GROWN_ZEROED`` zeroed (its attention and MLP read the residual stream
    from the first step, and write to it once training moves those projections off zero). ``layers``
    must be a multiple of the old count ``n``; the same count returns ``state`` as it is."""
    by_layer: dict[int, dict[str, torch.Tensor]] = {}
    rest: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if m := _LAYER.fullmatch(k):
            by_layer.setdefault(int(m.group(1)), {})[m.group(2)] = v
        else:
            rest[k] = v
    n = len(by_layer)
    if n == 0 or layers == n:
        return state
    if layers < n or layers % n:
        raise ValueError(f"cannot grow {n} layers to {layers}: a multiple of {n} is needed")
    out = dict(rest)
    per = layers // n
    for i in range(n):
        for j in range(per):
            for name, v in by_layer[i].items():
                v = v.clone()
                if j and name in GROWN_ZEROED:
                    v.zero_()
                out[f"model.layers.{i * per + j}.{name}"] = v
    return out


def average_runs(runs: list[Path], out: Path, *, dtype: str = "bfloat16") -> Path:
    """A weight average ("model soup") of training folders warm-started from one another (one
    tokenizer, one shape): ``OUT/ckpt.pt`` (float32, a warm start's ``--init-from``), ``OUT/tokenizer``
    and the exported ``OUT/model``. Averaging a run with the one it was warm-started from keeps
    what each learned and smooths what either over-fitted."""
    import shutil

    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    if len(runs) < 2:
        raise ValueError("average_runs: at least two training folders")
    states = [torch.load(r / "ckpt.pt", map_location="cpu", weights_only=False)["model"] for r in runs]
    for r, st in zip(runs[1:], states[1:], strict=True):
        if st.keys() != states[0].keys() or any(st[k].shape != states[0][k].shape for k in st):
            raise ValueError(f"{r}: its weights differ in shape from {runs[0]}'s")
    avg = {k: sum(st[k].float() for st in states) / len(states) for k in states[0]}
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"model": avg, "averaged": [str(r) for r in runs]}, out / "ckpt.pt")
    if (out / "tokenizer").exists():
        shutil.rmtree(out / "tokenizer")
    shutil.copytree(runs[0] / "tokenizer", out / "tokenizer")
    tok = PreTrainedTokenizerFast.from_pretrained(out / "tokenizer")
    model = LlamaForCausalLM.from_pretrained(runs[0] / "model", torch_dtype=torch.float32)
    model.load_state_dict(avg)
    return export_model(model, tok, out / "model", dtype=dtype)


def train_text(
    tc: TextTrainConfig,
    *,
    resume: bool = False,
    log: Callable[[str], None] = print,
    progress: Callable[[int, int, float], None] | None = None,
) -> Path:
    """Train (or resume) and export ``OUT/model``; returns that folder."""
    from transformers import PreTrainedTokenizerFast

    torch.set_num_threads(tc.threads)
    tc.out.mkdir(parents=True, exist_ok=True)
    tok_dir = tc.out / "tokenizer"
    ckpt_path = tc.out / "ckpt.pt"
    if resume and ckpt_path.is_file() and tok_dir.is_dir():
        tok = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    elif tc.init_from is not None:
        resume = False
        tok = PreTrainedTokenizerFast.from_pretrained(_init_tokenizer_dir(tc.init_from))
        tok.save_pretrained(tok_dir)
    else:
        resume = False
        tok = train_tokenizer(tc.model.vocab_size, seed=tc.seed + 12345, n=tc.tokenizer_n)
        tok.save_pretrained(tok_dir)
    torch.manual_seed(tc.seed)
    model = build_model(tc.model, tok)
    if tc.init_from is not None and not resume:
        if (tc.init_from / "ckpt.pt").is_file():
            state = torch.load(tc.init_from / "ckpt.pt", map_location="cpu", weights_only=False)["model"]
            log(f"weights from {tc.init_from / 'ckpt.pt'}")
        else:  # an exported model folder (e.g. the shipped weights/text); its shape must match --hidden...
            from transformers import LlamaForCausalLM

            state = LlamaForCausalLM.from_pretrained(tc.init_from, torch_dtype=torch.float32).state_dict()
            log(f"weights from {tc.init_from / 'model.safetensors'}")
        grown = grow_depth(state, tc.model.layers)
        if grown is not state:
            log(f"deepened to {tc.model.layers} layers (grow_depth: the same function at first)")
        model.load_state_dict(grown)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=(0.9, 0.98), weight_decay=tc.weight_decay)
    step, elapsed0 = 0, 0.0
    history: list[dict[str, Any]] = []
    if resume:
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step = int(ck["step"])
        elapsed0 = float(ck.get("elapsed_s", 0.0))
        history = list(ck.get("history", []))
        torch.set_rng_state(ck["torch_rng"])
        log(f"resumed from {ckpt_path} at step {step}")
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f}M parameters, vocab {len(tok)}; steps {tc.steps}, batch {tc.batch}")
    model.train()

    def save() -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save(
            {
                "model": model.state_dict(),
                "opt": opt.state_dict(),
                "step": step,
                "elapsed_s": elapsed(),
                "history": history,
                "torch_rng": torch.get_rng_state(),
                "config": json.loads(json.dumps(asdict(tc), default=str)),
            },
            tmp,
        )
        tmp.replace(ckpt_path)

    t0, loss_avg = time.monotonic(), None

    def elapsed() -> float:
        return elapsed0 + time.monotonic() - t0

    while _progress(step, elapsed(), tc) < 1.0:
        lr = _lr(step, _progress(step, elapsed(), tc), tc)
        for g in opt.param_groups:
            g["lr"] = lr
        # sorted by length and cut in chunks, each padded to its own longest: less padding computed
        pairs = sorted(batch_pairs(tc.seed, step, tc.batch), key=lambda pa: len(pa[0]) + len(pa[1]))
        k = max(1, len(pairs) // tc.chunks)
        chunks = [collate(tok, pairs[i : i + k]) for i in range(0, len(pairs), k)]
        n_labels = sum(int((c["labels"] != -100).sum()) for c in chunks)
        opt.zero_grad(set_to_none=True)
        loss = torch.zeros(())
        for c in chunks:
            part = model(**c).loss * (int((c["labels"] != -100).sum()) / n_labels)
            part.backward()
            loss += part.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
        last = _progress(step, elapsed(), tc) >= 1.0
        if progress is not None:
            progress(step, tc.steps, loss_avg)
        if step % 50 == 0 or last:
            log(f"step {step}/{tc.steps} loss {loss_avg:.4f} lr {lr:.2e} {elapsed():.0f}s")
        if step % tc.eval_every == 0 or last:
            acc = quick_eval(model, tok, 777_000 + step, tc.eval_n)
            history.append({"step": step, "loss": loss_avg, "exact": acc, "elapsed_s": round(elapsed())})
            log(f"step {step}: exact match {acc:.3f} on {tc.eval_n} fresh training-generator pairs")
        if step % tc.ckpt_every == 0 or last:
            save()
        if step % tc.eval_every == 0 or last:
            export_model(model, tok, tc.out / "model", dtype=tc.dtype)
    (tc.out / "history.json").write_text(json.dumps(history, indent=1))
    log(f"done: {step} steps in {elapsed():.0f}s; model in {tc.out / 'model'}")
    return tc.out / "model"
