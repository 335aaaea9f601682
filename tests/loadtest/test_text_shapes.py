"""loadtest.text_shapes: the shapes it reads and the model folders it builds (vLLM runs only in the benchmark)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.text_shapes import SHIPPED, parse_shape


def test_a_shape_is_read_from_its_five_numbers_and_a_bad_one_says_the_form():
    name, shape = parse_shape("27m=384x12x6x6x1536")
    assert name == "27m"
    assert shape == {
        "hidden_size": 384,
        "num_hidden_layers": 12,
        "num_attention_heads": 6,
        "num_key_value_heads": 6,
        "intermediate_size": 1536,
    }
    for bad in ("384x12x6x6x1536", "a=384x12x6x6", "a=384x12x0x6x1536", "a=384x12x5x5x1536", "a=384x12x6x4x1536"):
        with pytest.raises(ValueError, match="shape"):
            parse_shape(bad)


def test_a_shape_folder_is_a_model_folder_of_that_shape_with_the_shipped_tokenizer(tmp_path: Path):
    from transformers import LlamaForCausalLM

    from loadtest.text_shapes import make_shape_folder
    from worldserve.text.core import check_model_folder

    _, shape = parse_shape("tiny=64x3x4x2x96")
    params = make_shape_folder(shape, tmp_path / "m")
    check_model_folder(tmp_path / "m")  # what the text app checks before it loads a model
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert {k: cfg[k] for k in shape} == shape and cfg["head_dim"] == 16
    assert cfg["vocab_size"] == json.loads((SHIPPED / "config.json").read_text())["vocab_size"]
    for f in ("tokenizer.json", "world.json"):
        assert (tmp_path / "m" / f).read_bytes() == (SHIPPED / f).read_bytes()
    model = LlamaForCausalLM.from_pretrained(tmp_path / "m")
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(model.model.layers) == 3
