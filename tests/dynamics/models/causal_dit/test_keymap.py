"""The one key map between the original Wan tensor names and diffusers' names."""

from __future__ import annotations

from worldserve.dynamics.models.causal_dit import keymap
from worldserve.dynamics.models.causal_dit.config import expected_shapes
from worldserve.dynamics.models.causal_dit.testing import tiny_action_config, tiny_config

TINY = tiny_config(actions=tiny_action_config(blocks=(1,)), text_dim=32)


def test_keymap_round_trips_every_name() -> None:
    names = list(expected_shapes(TINY))
    for name in names:
        original = keymap.diffusers_to_original(name)
        assert keymap.original_to_diffusers(original) == name
        assert keymap.lookup_original("model.diffusion_model." + original) == name
    # names checked against Wan-Video/Wan2.1 wan/modules/model.py (WanModel)
    pairs = {
        "blocks.3.self_attn.o.bias": "blocks.3.attn1.to_out.0.bias",
        "blocks.3.cross_attn.norm_k.weight": "blocks.3.attn2.norm_k.weight",
        "blocks.3.norm3.weight": "blocks.3.norm2.weight",
        "blocks.3.ffn.0.weight": "blocks.3.ffn.net.0.proj.weight",
        "blocks.3.modulation": "blocks.3.scale_shift_table",
        "time_projection.1.weight": "condition_embedder.time_proj.weight",
        "text_embedding.2.bias": "condition_embedder.text_embedder.linear_2.bias",
        "head.head.weight": "proj_out.weight",
        "head.modulation": "scale_shift_table",
    }
    for original, diffusers_name in pairs.items():
        assert keymap.original_to_diffusers(original) == diffusers_name
        assert keymap.diffusers_to_original(diffusers_name) == original
    assert keymap.lookup_original("img_emb.proj.0.weight") is None


def test_whole_state_dict_renames() -> None:
    state = {name: i for i, name in enumerate(expected_shapes(TINY))}
    original = keymap.to_original(state)
    assert "blocks.0.cross_attn.q.weight" in original and "blocks.0.attn2.to_q.weight" not in original
    assert keymap.to_diffusers(original) == state
