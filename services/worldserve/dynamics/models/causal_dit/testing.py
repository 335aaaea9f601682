"""A tiny random causal DiT in the published layout: for tests, the end-to-end cluster and the GPU check.

    from worldserve.dynamics.models.causal_dit.testing import TINY_OPTIONS, write_tiny_folder

    folder = write_tiny_folder(tmp_path / "open-world")             # transformer/ + vae/
    model = CausalDiTWorldModel.load(folder, options=TINY_OPTIONS)  # 64x64 frames, 2 keys... see below

The transformer (2 layers, 2 heads of 32, patch (1, 2, 2), text_dim 16 by default) and the VAE (Wan2.1's
layout at base_dim 8, 4 latent channels) are random (seeded). With ``actions`` the blocks carry
Matrix-Game-style action modules (keyboard forward/back/left/right, mouse pitch/yaw) whose output
projections are random too (not zero), so that actions change the frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .config import ActionConfig, WanTransformerConfig, save_transformer_folder
from .model import CausalDiTWorldModel
from .vae import tiny_vae_config

TINY_OPTIONS: dict[str, Any] = {
    "chunk_frames": 1,
    "sink_frames": 1,
    "window_frames": 3,
    "timesteps": [1000, 750, 500, 250],
    "shift": 5.0,
    "latent_height": 8,
    "latent_width": 8,
    "text_len": 8,
}
"""The serve options of :func:`write_tiny_folder`'s model: 64x64 frames, one latent frame per step
(4 pixel frames), the first frame as the sink and a window of 3 latent frames, 4 denoising passes."""

TINY_TEXT_DIM = 16


def tiny_action_config(**overrides: Any) -> ActionConfig:
    """The tiny Matrix-Game-style action config (keyboard 4, mouse 2, both blocks); ``overrides``:
    fields to change."""
    fields: dict[str, Any] = dict(
        blocks=(0, 1),
        heads_num=2,
        hidden_size=16,
        img_hidden_size=64,
        keyboard_dim_in=4,
        keyboard_hidden_dim=32,
        mouse_dim_in=2,
        mouse_hidden_dim=32,
        rope_dim_list=(8, 4, 4),
        windows_size=2,
    )
    return ActionConfig(**{**fields, **overrides})


def tiny_config(
    *, actions: bool | ActionConfig = True, text_dim: int = TINY_TEXT_DIM, **overrides: Any
) -> WanTransformerConfig:
    """The tiny transformer config (diffusers' field names): 2 layers, 2 heads of 32, 4 latent
    channels; ``actions``: the tiny action config (True), none (False) or this one; ``overrides``:
    other fields to change."""
    action_config = tiny_action_config() if actions is True else (actions or None)
    fields: dict[str, Any] = dict(
        num_attention_heads=2,
        attention_head_dim=32,
        in_channels=4,
        out_channels=4,
        text_dim=text_dim,
        freq_dim=32,
        ffn_dim=128,
        num_layers=2,
        action_config=action_config,
    )
    return WanTransformerConfig(**{**fields, **overrides})


def tiny_model(
    *, actions: bool = True, text_dim: int = TINY_TEXT_DIM, seed: int = 0, options: dict[str, Any] | None = None
) -> CausalDiTWorldModel:
    """The model :func:`write_tiny_folder` writes, in memory (float32, CPU)."""
    return CausalDiTWorldModel.random(
        tiny_config(actions=actions, text_dim=text_dim),
        tiny_vae_config(z_dim=4),
        seed=seed,
        options={**TINY_OPTIONS, **(options or {})},
        dtype=torch.float32,
    )


def write_tiny_folder(
    path: str | Path,
    *,
    actions: bool = True,
    text_dim: int = TINY_TEXT_DIM,
    layout: str = "diffusers",
    seed: int = 0,
) -> Path:
    """Write the tiny random model as a published folder at ``path`` and return it: ``transformer/``
    (``layout="diffusers"``: diffusers' config.json and diffusion_pytorch_model.safetensors;
    ``"original"``: the original Wan repository's config.json fields and tensor names) and ``vae/``
    (AutoencoderKLWan). ``actions=False``: no action modules (a prompt-only world). ``text_dim`` is
    the prompt embedding's width (every Wan transformer has a text projection, so at least 1)."""
    if text_dim < 1:
        raise ValueError(f"text_dim must be >= 1 (a Wan transformer always projects a text embedding), got {text_dim}")
    model = tiny_model(actions=actions, text_dim=text_dim, seed=seed)
    root = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
    save_transformer_folder(root / "transformer", model.net.config, state, layout=layout)
    model.vae.save_folder(root / "vae")
    return root


__all__ = ["TINY_OPTIONS", "TINY_TEXT_DIM", "tiny_config", "tiny_model", "write_tiny_folder"]
