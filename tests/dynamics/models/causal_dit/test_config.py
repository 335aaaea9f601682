"""The transformer config and the published folder layouts (diffusers, sharded, original Wan)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from worldserve.common.registry import ModelLoadError
from worldserve.dynamics.models.causal_dit.actions import FrameActions
from worldserve.dynamics.models.causal_dit.config import (
    WanTransformerConfig,
    expected_shapes,
    read_transformer_folder,
    save_transformer_folder,
    to_original_dict,
)
from worldserve.dynamics.models.causal_dit.network import CausalWanTransformer
from worldserve.dynamics.models.causal_dit.testing import tiny_action_config, tiny_config

TINY = tiny_config(
    actions=tiny_action_config(blocks=(1,), keyboard_dim_in=4, mouse_dim_in=2, windows_size=1), text_dim=32
)

# The published config.json of Wan-AI/Wan2.1-T2V-1.3B (original layout) and the transformer
# config.json of Wan-AI/Wan2.1-T2V-1.3B-Diffusers.
WAN_1_3B_ORIGINAL = {
    "_class_name": "WanModel",
    "_diffusers_version": "0.30.0",
    "dim": 1536,
    "eps": 1e-06,
    "ffn_dim": 8960,
    "freq_dim": 256,
    "in_dim": 16,
    "model_type": "t2v",
    "num_heads": 12,
    "num_layers": 30,
    "out_dim": 16,
    "text_len": 512,
}
WAN_1_3B_DIFFUSERS = {
    "_class_name": "WanTransformer3DModel",
    "_diffusers_version": "0.33.0.dev0",
    "added_kv_proj_dim": None,
    "attention_head_dim": 128,
    "cross_attn_norm": True,
    "eps": 1e-06,
    "ffn_dim": 8960,
    "freq_dim": 256,
    "image_dim": None,
    "in_channels": 16,
    "num_attention_heads": 12,
    "num_layers": 30,
    "out_channels": 16,
    "patch_size": [1, 2, 2],
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 1024,
    "text_dim": 4096,
}


def test_published_configs_agree() -> None:
    a = WanTransformerConfig.from_original_dict(WAN_1_3B_ORIGINAL)
    b = WanTransformerConfig.from_dict(WAN_1_3B_DIFFUSERS)
    assert a == b
    assert a.inner_dim == 1536 and a.action_config is None
    assert WanTransformerConfig.from_dict(TINY.to_dict()) == TINY
    assert WanTransformerConfig.from_original_dict(to_original_dict(TINY)) == TINY


def test_diffusers_reference_takes_our_fields() -> None:
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.WanTransformer3DModel(**dataclasses.replace(TINY, action_config=None).diffusers_kwargs())
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    base = expected_shapes(dataclasses.replace(TINY, action_config=None))
    assert base == want


@pytest.mark.parametrize(
    ("data", "original", "match"),
    [
        ({**WAN_1_3B_DIFFUSERS, "flux_capacitor": 1}, False, "unknown config field 'flux_capacitor'"),
        ({**WAN_1_3B_ORIGINAL, "flux_capacitor": 1}, True, "unknown config field 'flux_capacitor'"),
        ({**WAN_1_3B_DIFFUSERS, "action_config": {"blocks": [0], "warp": 2}}, False, "unknown config field 'warp'"),
        ({**WAN_1_3B_DIFFUSERS, "num_layers": 0}, False, "num_layers"),
        ({**WAN_1_3B_DIFFUSERS, "image_dim": 1280}, False, "image_dim"),
        ({**WAN_1_3B_DIFFUSERS, "patch_size": [2, 2, 2]}, False, "patch_size"),
        ({**WAN_1_3B_ORIGINAL, "model_type": "i2v", "in_dim": 36}, True, "model_type 'i2v'"),
        ({**WAN_1_3B_ORIGINAL, "window_size": [4, 4]}, True, "window_size"),
        ({**WAN_1_3B_ORIGINAL, "qk_norm": False}, True, "qk_norm"),
        (
            {**WAN_1_3B_DIFFUSERS, "action_config": {"blocks": [0], "img_hidden_size": 64}},
            False,
            "img_hidden_size 64",
        ),
        ({**WAN_1_3B_DIFFUSERS, "action_config": {"blocks": [30], "img_hidden_size": 1536}}, False, "beyond"),
    ],
)
def test_bad_configs_name_the_field_and_file(data: dict, original: bool, match: str) -> None:
    read = WanTransformerConfig.from_original_dict if original else WanTransformerConfig.from_dict
    with pytest.raises(ValueError, match=match) as e:
        read(data, "some/transformer/config.json")
    assert "some/transformer/config.json" in str(e.value)


def _random_state(config: WanTransformerConfig, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) * 0.2 for k, shape in expected_shapes(config).items()}


def _outputs(net: CausalWanTransformer) -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    latents = torch.randn(1, 4, 3, 4, 4, generator=g)
    text = torch.randn(1, 5, 32, generator=g)
    actions = FrameActions(keyboard=torch.ones(1, 9, 4), mouse=torch.randn(1, 9, 2, generator=g))
    with torch.no_grad():
        return net.eval()(latents, torch.tensor([[900.0, 500.0, 100.0]]), text, actions)


@pytest.mark.parametrize("layout", ["diffusers", "sharded", "original"])
def test_folder_layouts_load_the_same_module(tmp_path: Path, layout: str) -> None:
    state = _random_state(TINY, 0)
    net = CausalWanTransformer(TINY)
    net.load_state_dict(state, strict=True)
    want = _outputs(net)
    if layout == "original":
        save_transformer_folder(tmp_path, TINY, state, layout="original")  # a flat folder, as Wan-AI publishes
        names = set(load_file(str(tmp_path / "diffusion_pytorch_model.safetensors")))
        assert "blocks.0.self_attn.q.weight" in names and "head.modulation" in names
        assert "blocks.1.action_model.proj_keyboard.weight" in names
        assert json.loads((tmp_path / "config.json").read_text())["dim"] == 64
        folder = tmp_path
    else:
        shard = 20_000 if layout == "sharded" else None
        save_transformer_folder(tmp_path / "transformer", TINY, state, max_shard_bytes=shard)
        if layout == "sharded":
            assert len(list((tmp_path / "transformer").glob("*-of-*.safetensors"))) > 2
        folder = tmp_path  # the model folder: transformer/ is found inside it
    config, loaded = read_transformer_folder(folder)
    assert config == TINY
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    again = CausalWanTransformer(config)
    again.load_state_dict(loaded, strict=True)
    assert torch.equal(_outputs(again), want)


@pytest.mark.parametrize("layout", ["diffusers", "original"])
def test_folder_faults_name_file_and_tensor(tmp_path: Path, layout: str) -> None:
    state = _random_state(TINY, 1)
    tdir = save_transformer_folder(tmp_path / "transformer", TINY, state, layout=layout)
    weights = tdir / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(weights))
    q = "blocks.1.self_attn.q.weight" if layout == "original" else "blocks.1.attn1.to_q.weight"

    # a missing tensor
    save_file({k: v for k, v in tensors.items() if k != q}, str(weights))
    with pytest.raises(ModelLoadError, match=f"missing tensor '{q}'") as e:
        read_transformer_folder(tmp_path)
    assert str(weights) in str(e.value)
    if layout == "original":
        assert "blocks.1.attn1.to_q.weight" in str(e.value)  # and its diffusers name

    # a tensor of the wrong shape
    save_file({**tensors, q: torch.zeros(64, 32)}, str(weights))
    with pytest.raises(ModelLoadError, match=rf"tensor '{q}' has shape \[64, 32\], expected \[64, 64\]") as e:
        read_transformer_folder(tmp_path)
    assert str(weights) in str(e.value)

    # an unexpected tensor (e.g. an action module the config does not list)
    extra = "blocks.0.action_model.proj_mouse.weight"
    save_file({**tensors, extra: torch.zeros(64, 32)}, str(weights))
    with pytest.raises(ModelLoadError, match=f"unexpected tensor '{extra}'"):
        read_transformer_folder(tmp_path)
    if layout == "original":
        save_file({**tensors, "blocks.0.norm2.weight": torch.zeros(64)}, str(weights))  # no rule maps it
        with pytest.raises(ModelLoadError, match="unexpected tensor 'blocks.0.norm2.weight'"):
            read_transformer_folder(tmp_path)

    # an unknown config field
    save_file(tensors, str(weights))
    cfg = json.loads((tdir / "config.json").read_text())
    (tdir / "config.json").write_text(json.dumps({**cfg, "num_heads_typo": 3}))
    with pytest.raises(ModelLoadError, match="unknown config field 'num_heads_typo'") as e:
        read_transformer_folder(tmp_path)
    assert str(tdir / "config.json") in str(e.value)


def test_pickle_only_and_empty_folders_are_refused(tmp_path: Path) -> None:
    tdir = tmp_path / "transformer"
    tdir.mkdir()
    (tdir / "config.json").write_text(json.dumps(TINY.to_dict()))
    (tdir / "model.pth").write_bytes(b"\x80\x04not read")
    with pytest.raises(ModelLoadError, match=r"pickle files \['model.pth'\].*convert them to safetensors"):
        read_transformer_folder(tmp_path)
    (tdir / "model.pth").unlink()
    with pytest.raises(ModelLoadError, match="no transformer weights"):
        read_transformer_folder(tmp_path)
    (tdir / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="config.json: missing"):
        read_transformer_folder(tmp_path)


def test_sharded_index_faults(tmp_path: Path) -> None:
    tdir = save_transformer_folder(tmp_path, TINY, _random_state(TINY, 2), max_shard_bytes=20_000)
    shards = sorted(tdir.glob("*-of-*.safetensors"))
    shards[1].unlink()
    with pytest.raises(ModelLoadError, match=f"shard '{shards[1].name}' is missing"):
        read_transformer_folder(tmp_path)
