"""A tiny random text model folder for tests: what vLLM loads, in the shipped model's layout.

``write_tiny_text_model(folder)`` writes a randomly initialised ``LlamaForCausalLM`` (about 100k
parameters) with a byte-level BPE tokenizer trained on the task's own strings (``lm_prompt`` lines
and ``answer_json`` answers, so JSON fragments are single tokens) and ``world.json``. Its answers
are random but, decoded under the JSON schema, always parse: enough to exercise the serving path
(Ray Serve LLM, structured outputs, validation) without the trained weights.

Needs torch, transformers and tokenizers (the ``text`` extra); imported only by tests and tools.
"""

from __future__ import annotations

import random
from pathlib import Path

from worldserve.common import caption as grammar
from worldserve.text.spec import Vocabulary, answer_json, lm_prompt, prompt_answer

SPECIALS = ("<s>", "</s>", "<pad>")


def _corpus(rng: random.Random, vocab: Vocabulary, n: int = 400) -> list[str]:
    words = ["a", "the", "with", "on", "to", "my", "and", "please", "make", "it", "world", "an", "no", "at"]
    out = []
    for _ in range(n):
        objects = []
        for side in rng.sample(list(vocab.sides), rng.randint(0, len(vocab.sides))):
            objects.append(grammar.ObjectSpec(rng.choice(list(grammar.COLORS)), rng.choice(grammar.KINDS), side))
        spec = grammar.WorldSpec(
            tuple(objects), rng.choice(list(grammar.GROUNDS)), rng.random() < 0.5, rng.random() < 0.5
        )
        text = " ".join(rng.choice(words + [o.color for o in objects] + [spec.ground]) for _ in range(6))
        answer = prompt_answer(spec, ground=rng.random() < 0.5, time=rng.random() < 0.5, rain=rng.random() < 0.5)
        out.append(lm_prompt("prompt", text) + answer_json(answer))
        event = rng.choice([*vocab.events, None])
        out.append(lm_prompt("event", f"{rng.choice(words)} {event or 'hello'}") + answer_json({"event": event}))
    return out


def write_tiny_text_model(folder: str | Path, seed: int = 0, *, vocab: Vocabulary | None = None) -> Path:
    """Write a tiny random text model into ``folder`` (created); returns the folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = vocab or Vocabulary()
    rng = random.Random(seed)

    tok = Tokenizer(models.BPE())
    # byte-level, no regex pre-split: merges cross punctuation (`{"objects":[{"colour":"` is a few tokens)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=list(SPECIALS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_corpus(rng, vocab), trainer=trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.save_pretrained(str(folder))

    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        pad_token_id=ids["<pad>"],
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)  # type: ignore[no-untyped-call]
    model.save_pretrained(str(folder), safe_serialization=True)
    vocab.write(folder)
    return folder
