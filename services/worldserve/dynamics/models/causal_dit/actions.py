"""Per-frame keyboard + mouse conditioning, in the style of Matrix-Game 2.0's action module.

``FrameActions`` holds the actions per *pixel* frame (keyboard multi-hot (B, F_px, K), mouse axes
(B, F_px, M)) for absolute pixel frames ``first_pixel_frame ..``. Latent frame ``i`` reads the
window of ``W = windows_size * vae_time_compression_ratio`` pixel frames ``r*i - W .. r*i - 1``
(``r`` = vae_time_compression_ratio; pixel frames before 0 repeat frame 0), exactly the windows
Matrix-Game 2.0 (SkyworkAI/Matrix-Game, ``Matrix-Game-2/wan/modules/action_module.py``) groups.
``action_windows`` gathers them once per forward; every action block reuses them.

``ActionModule`` sits in a transformer block after the cross-attention and before the FFN (as in
Matrix-Game's ``CausalWanAttentionBlock``) and returns ``x`` plus:

- mouse: per token, ``proj_mouse(mouse_mlp(concat(token, frame's mouse window)))``;
- keyboard: each token's query (``mouse_attn_q``) cross-attends to its frame's window of W pixel-frame
  keyboard embeddings (``keyboard_embed`` -> ``keyboard_attn_kv``), with q/k RMS norms and a 1-D RoPE
  over the pixel-frame position (the query sits at position W, just after the window), then
  ``proj_keyboard``.

Where it differs from Matrix-Game's module (so that a latent frame's tokens see only their own
frame's action window and never another frame's hidden states, and the streaming KV cache needs no
action state):

- Matrix-Game's mouse branch runs a temporal self-attention over frames at each spatial position
  (``t_qkv``, ``img_attn_q_norm``/``img_attn_k_norm``, with its own rolling KV cache): a frame's
  tokens read other frames' hidden states. Ours has no such attention: ``mouse_mlp`` feeds
  ``proj_mouse`` directly (no ``t_qkv`` / ``img_attn_*`` parameters).
- Matrix-Game's keyboard branch attends from each token to one keyboard token per latent frame
  (the flattened window, over the causal frames in ``local_attn_size``); ours attends to the
  window's pixel frames of the token's own latent frame, so ``keyboard_attn_kv`` takes one pixel
  frame's embedding (``hidden_size`` inputs, not ``hidden_size * W``).
- ``proj_mouse`` and ``proj_keyboard`` start at zero, so a model with action modules equals its
  base model until they are trained.

Parameter names otherwise follow Matrix-Game's (``keyboard_embed``, ``mouse_mlp``, ``proj_mouse``,
``mouse_attn_q``, ``keyboard_attn_kv``, ``key_attn_q_norm``, ``key_attn_k_norm``, ``proj_keyboard``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ActionConfig


@dataclass(frozen=True)
class FrameActions:
    """Actions per pixel frame for absolute pixel frames first_pixel_frame .. first_pixel_frame + F_px - 1."""

    keyboard: torch.Tensor | None  # (B, F_px, K) multi-hot (0/1), float
    mouse: torch.Tensor | None  # (B, F_px, M) axes, float
    first_pixel_frame: int = 0

    @property
    def num_pixel_frames(self) -> int:
        t = self.keyboard if self.keyboard is not None else self.mouse
        return 0 if t is None else int(t.shape[1])


@dataclass(frozen=True)
class ActionWindows:
    """Each latent frame's action window, gathered once per forward (what the blocks read)."""

    keyboard: torch.Tensor | None  # (B, f, W, K)
    mouse: torch.Tensor | None  # (B, f, W, M)

    @staticmethod
    def cat(parts: Sequence[ActionWindows]) -> ActionWindows:
        """The windows of several sessions (same f) stacked along the batch."""
        out: dict[str, torch.Tensor | None] = {}
        for name in ("keyboard", "mouse"):
            ts = [getattr(p, name) for p in parts]
            if all(t is None for t in ts):
                out[name] = None
            elif any(t is None for t in ts):
                raise ValueError(f"some sessions have {name} actions and some have none")
            else:
                out[name] = torch.cat(ts, dim=0)  # (B, f, W, width)
        return ActionWindows(keyboard=out["keyboard"], mouse=out["mouse"])


def window_indices(config: ActionConfig, first_frame: int, num_frames: int) -> torch.Tensor:
    """(f, W) absolute pixel-frame index of each latent frame's window (clamped at pixel frame 0)."""
    r, w = config.vae_time_compression_ratio, config.window_pixel_frames
    frames = torch.arange(first_frame, first_frame + num_frames)  # (f,)
    idx = r * frames[:, None] - w + torch.arange(w)[None, :]  # (f, W)
    return idx.clamp(min=0)


def action_windows(actions: FrameActions, config: ActionConfig, first_frame: int, num_frames: int) -> ActionWindows:
    """The windows of latent frames first_frame .. first_frame + num_frames - 1; ValueError when
    ``actions`` does not cover the pixel frames they read (``config.pixel_range``) or has the wrong width."""
    idx = window_indices(config, first_frame, num_frames) - actions.first_pixel_frame  # (f, W)
    start, stop = config.pixel_range(first_frame, num_frames)
    have = (actions.first_pixel_frame, actions.first_pixel_frame + actions.num_pixel_frames)
    if int(idx.min()) < 0 or int(idx.max()) >= actions.num_pixel_frames:
        raise ValueError(
            f"actions cover pixel frames [{have[0]}, {have[1]}) but latent frames {first_frame}.."
            f"{first_frame + num_frames - 1} read pixel frames [{start}, {stop})"
        )
    out: dict[str, torch.Tensor | None] = {"keyboard": None, "mouse": None}
    for name, width, enabled in (
        ("keyboard", config.keyboard_dim_in, config.enable_keyboard),
        ("mouse", config.mouse_dim_in, config.enable_mouse),
    ):
        t = getattr(actions, name)
        if t is None or not enabled:
            continue
        if t.ndim != 3 or t.shape[-1] != width:
            raise ValueError(f"{name} actions must be (B, F_px, {width}), got {tuple(t.shape)}")
        out[name] = t[:, idx.to(t.device)]  # (B, f, W, width)
    return ActionWindows(keyboard=out["keyboard"], mouse=out["mouse"])


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Interleaved-pair rotation of the first cos.shape[-1] channels of x (..., L, H, d)."""
    n = cos.shape[-1]
    head, tail = x[..., :n].float(), x[..., n:]
    x1, x2 = head.unflatten(-1, (-1, 2)).unbind(-1)  # (..., L, H, n/2) each
    c, s = cos[..., 0::2], sin[..., 0::2]  # (L, 1, n/2)
    rot = torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).flatten(-2)  # (..., L, H, n)
    return torch.cat([rot.type_as(x), tail], dim=-1)


def _rope_1d(positions: torch.Tensor, dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (L, 1, dim), of positions (L,) on interleaved pairs."""
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))  # (dim/2,)
    angles = torch.outer(positions.to(torch.float64), freqs)  # (L, dim/2)
    cos = angles.cos().repeat_interleave(2, dim=1).float()[:, None, :]  # (L, 1, dim)
    sin = angles.sin().repeat_interleave(2, dim=1).float()[:, None, :]  # (L, 1, dim)
    return cos, sin


class ActionModule(nn.Module):
    """Keyboard + mouse injection for one transformer block (see the module docstring)."""

    def __init__(self, config: ActionConfig, dim: int):
        super().__init__()
        self.config = config
        c = config
        w = c.window_pixel_frames
        if c.enable_mouse:
            self.mouse_mlp = nn.Sequential(
                nn.Linear(dim + c.mouse_dim_in * w, c.mouse_hidden_dim),
                nn.GELU(approximate="tanh"),
                nn.Linear(c.mouse_hidden_dim, c.mouse_hidden_dim),
                nn.LayerNorm(c.mouse_hidden_dim),
            )
            self.proj_mouse = nn.Linear(c.mouse_hidden_dim, dim, bias=c.qkv_bias)
        if c.enable_keyboard:
            hd = c.keyboard_head_dim
            self.keyboard_embed = nn.Sequential(
                nn.Linear(c.keyboard_dim_in, c.hidden_size), nn.SiLU(), nn.Linear(c.hidden_size, c.hidden_size)
            )
            self.mouse_attn_q = nn.Linear(dim, c.keyboard_hidden_dim, bias=c.qkv_bias)
            self.keyboard_attn_kv = nn.Linear(c.hidden_size, 2 * c.keyboard_hidden_dim, bias=c.qkv_bias)
            self.key_attn_q_norm: nn.Module = nn.RMSNorm(hd, eps=1e-6) if c.qk_norm else nn.Identity()
            self.key_attn_k_norm: nn.Module = nn.RMSNorm(hd, eps=1e-6) if c.qk_norm else nn.Identity()
            self.proj_keyboard = nn.Linear(c.keyboard_hidden_dim, dim, bias=c.qkv_bias)
        self.zero_output()

    @torch.no_grad()
    def zero_output(self) -> None:
        """Zero the output projections: the module then adds nothing (equals the base model)."""
        for name in ("proj_mouse", "proj_keyboard"):
            proj = getattr(self, name, None)
            if proj is not None:
                nn.init.zeros_(proj.weight)
                if proj.bias is not None:
                    nn.init.zeros_(proj.bias)

    def forward(self, x: torch.Tensor, num_frames: int, windows: ActionWindows) -> torch.Tensor:
        """x (B, N, D) tokens of num_frames whole latent frames -> x with each frame's actions injected, (B, N, D)."""
        c = self.config
        f = num_frames
        B, N, D = x.shape
        S = N // f  # tokens per latent frame
        if c.enable_mouse and windows.mouse is not None:
            m = windows.mouse.to(x.dtype).flatten(2)  # (B, f, W*M)
            m = m[:, :, None, :].expand(B, f, S, m.shape[-1])  # (B, f, S, W*M)
            hm = torch.cat([x.view(B, f, S, D), m], dim=-1)  # (B, f, S, D + W*M)
            x = x + self.proj_mouse(self.mouse_mlp(hm)).view(B, N, D)  # (B, N, D)
        if c.enable_keyboard and windows.keyboard is not None:
            H, hd, W = c.heads_num, c.keyboard_head_dim, c.window_pixel_frames
            kb = self.keyboard_embed(windows.keyboard.to(x.dtype))  # (B, f, W, hidden_size)
            k, v = self.keyboard_attn_kv(kb).view(B, f, W, 2, H, hd).unbind(3)  # (B, f, W, H, hd) each
            q = self.mouse_attn_q(x).view(B, f, S, H, hd)  # (B, f, S, H, hd)
            q = self.key_attn_q_norm(q)  # (B, f, S, H, hd)
            k = self.key_attn_k_norm(k)  # (B, f, W, H, hd)
            rope_dim = c.rope_dim_list[0] if c.rope_dim_list else 0
            if rope_dim:
                pos = torch.arange(W + 1, device=x.device)  # keys 0..W-1, the query at W
                cos, sin = _rope_1d(pos, rope_dim, float(c.rope_theta))  # (W+1, 1, rope_dim) each
                cos, sin = cos.to(x.device), sin.to(x.device)
                q = _rotate(q, cos[W:], sin[W:])  # (B, f, S, H, hd)
                k = _rotate(k, cos[:W], sin[:W])  # (B, f, W, H, hd)
            qh = q.flatten(0, 1).transpose(1, 2)  # (B*f, H, S, hd)
            kh = k.flatten(0, 1).transpose(1, 2)  # (B*f, H, W, hd)
            vh = v.flatten(0, 1).transpose(1, 2)  # (B*f, H, W, hd)
            o = F.scaled_dot_product_attention(qh, kh, vh)  # (B*f, H, S, hd)
            o = o.transpose(1, 2).reshape(B, N, H * hd)  # (B, N, keyboard_hidden_dim)
            x = x + self.proj_keyboard(o)  # (B, N, D)
        return x
