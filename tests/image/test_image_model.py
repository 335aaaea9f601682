"""TinyTextToImage: the built-in ImageBackend."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from worldserve.image.model import ImageBackend, TinyTextToImage, TinyTextToImageConfig, tokenize

OPTS = dict(width=64, height=64, steps=4, guidance=3.0)


@pytest.fixture(scope="module")
def model() -> TinyTextToImage:
    return TinyTextToImage.random(seed=0)


def test_is_an_image_backend(model):
    assert isinstance(model, ImageBackend)
    assert model.name == "tiny-t2i"
    assert model.supported_sizes == ((64, 64),)
    assert (model.default_steps, model.default_guidance) == (4, 3.0)


def test_generate_shape_dtype_and_determinism(model):
    a = model.generate("a castle on a hill", seed=1, **OPTS)
    assert isinstance(a, np.ndarray) and a.shape == (64, 64, 3) and a.dtype == np.uint8
    b = model.generate("a castle on a hill", seed=1, **OPTS)
    assert np.array_equal(a, b)
    assert np.array_equal(TinyTextToImage.random(seed=0).generate("a castle on a hill", seed=1, **OPTS), a)


def test_prompt_seed_and_options_change_the_image(model):
    base = model.generate("a castle on a hill", seed=1, **OPTS).astype(np.int16)
    for other in (
        model.generate("an underwater cave", seed=1, **OPTS),
        model.generate("a castle on a hill", seed=2, **OPTS),
        model.generate("a castle on a hill", seed=1, **{**OPTS, "guidance": 1.0}),
        model.generate("a castle on a hill", seed=1, **{**OPTS, "steps": 2}),
    ):
        assert np.abs(base - other).mean() > 0.2


def test_seed_accepts_uint64(model):
    img = model.generate("x", seed=2**64 - 1, **OPTS)
    assert img.shape == (64, 64, 3)


def test_batch_matches_single(model):
    batch = model.generate_batch(["a castle", "a cave"], seeds=[3, 4], **OPTS, batch_invariant=False)
    single = model.generate("a cave", seed=4, **OPTS)
    assert batch.shape == (2, 64, 64, 3)
    assert np.abs(batch[1].astype(int) - single).max() <= 1  # float rounding may flip a pixel by one level


def test_batch_invariant_images_are_bitwise_independent_of_the_batch():
    """The default on CPU: an image is the same bytes alone, in a batch of 8, and beside other neighbours."""
    from worldserve.image.model import TinyTextToImage

    model = TinyTextToImage.random(seed=0)
    opts = {"width": 64, "height": 64, "steps": 2, "guidance": 3.0}
    target = ("a red door on the left, a blue box on the right, grass, day", 11)
    alone = model.generate(target[0], seed=target[1], **opts)
    others = [f"a {c} box on the {side}, snow, night" for c in ("pink", "cyan", "yellow") for side in ("left", "right")]
    batch8 = model.generate_batch(
        [*others[:3], target[0], *others[3:], "rain"], seeds=[1, 2, 3, 11, 4, 5, 6, 7], **opts
    )
    batch2 = model.generate_batch([target[0], "x"], seeds=[11, 99], **opts)
    assert np.array_equal(batch8[3], alone) and np.array_equal(batch2[0], alone)
    assert not np.array_equal(batch8[0], alone)


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_empty_prompt_is_rejected(model, prompt):
    with pytest.raises(ValueError, match="empty"):
        model.generate(prompt, seed=0, **OPTS)


@pytest.mark.parametrize(
    "overrides, quoted",
    [
        ({"width": 128}, "128x64"),
        ({"height": 32}, "64x32"),
        ({"width": 64.0}, "64.0"),
        ({"steps": 0}, "0"),
        ({"steps": 65}, "65"),
        ({"guidance": 21.0}, "21.0"),
        ({"guidance": float("nan")}, "nan"),
    ],
)
def test_bad_options_are_rejected_quoting_the_value(model, overrides, quoted):
    with pytest.raises(ValueError, match=quoted):
        model.generate("a castle", seed=0, **{**OPTS, **overrides})


def test_check_size(model):
    model.check_size(64, 64)
    with pytest.raises(ValueError, match="96x64"):
        model.check_size(96, 64)


def test_too_long_prompt_is_rejected(model):
    with pytest.raises(ValueError, match="513 bytes"):
        model.generate("a" * 513, seed=0, **OPTS)
    assert model.generate("é" * 256, seed=0, **OPTS).shape == (64, 64, 3)  # 512 bytes: fits


def test_tokenizer_is_byte_level():
    ids, mask = tokenize(["hé", ""], max_bytes=8)
    assert ids[0].tolist() == [256, ord("h"), 0xC3, 0xA9, 257]
    assert ids[1].tolist() == [256, 257, 258, 258, 258]
    assert mask.sum(1).tolist() == [5, 2]


def test_sizes_are_configurable():
    m = TinyTextToImage.random(TinyTextToImageConfig(sizes=((48, 32), (64, 64))), seed=0)
    img = m.generate("a castle", seed=0, width=48, height=32, steps=2, guidance=2.0)
    assert img.shape == (32, 48, 3)
    with pytest.raises(ValueError, match="32x48"):
        m.generate("a castle", seed=0, width=32, height=48, steps=2, guidance=2.0)


@pytest.mark.parametrize(
    "kwargs, quoted",
    [
        ({"sizes": ((63, 64),)}, "63"),
        ({"sizes": ()}, r"\(\)"),
        ({"default_steps": 100}, "100"),
        ({"text_dim": 100, "text_heads": 3}, "100"),
        ({"default_guidance": -1.0}, "-1.0"),
    ],
)
def test_config_validation(kwargs, quoted):
    with pytest.raises(ValueError, match=quoted):
        TinyTextToImageConfig(**kwargs)


def test_random_is_deterministic_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = TinyTextToImage.random(seed=5), TinyTextToImage.random(seed=6)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not torch.equal(a.denoiser.out.weight, b.denoiser.out.weight)
    assert torch.equal(a.denoiser.out.weight, TinyTextToImage.random(seed=5).denoiser.out.weight)


def test_save_load_roundtrip(tmp_path, model):
    cfg = TinyTextToImageConfig(name="castles-v1", sizes=((64, 64), (32, 32)))
    m = TinyTextToImage.random(cfg, seed=1)
    m.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["sizes"] == [[64, 64], [32, 32]]
    loaded = TinyTextToImage.from_pretrained(tmp_path)
    assert loaded.config == cfg and loaded.name == "castles-v1"
    want = m.generate("a castle", seed=9, **OPTS)
    assert np.array_equal(loaded.generate("a castle", seed=9, **OPTS), want)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        (tmp_path / "model.safetensors").unlink()
        TinyTextToImage.from_pretrained(tmp_path)


def test_coordinate_channels_and_legacy_checkpoints(tmp_path):
    on = TinyTextToImage.random(seed=0)
    assert on.config.coord_channels and on.denoiser.inp.in_channels == 5
    off = TinyTextToImage.random(TinyTextToImageConfig(coord_channels=False), seed=0)
    assert off.denoiser.inp.in_channels == 3
    off.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.pop("coord_channels")  # written before the field existed
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    legacy = TinyTextToImage.from_pretrained(tmp_path)
    assert not legacy.config.coord_channels
    assert np.array_equal(legacy.generate("a cave", seed=1, **OPTS), off.generate("a cave", seed=1, **OPTS))
