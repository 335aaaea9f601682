"""The causal transformer over latent frames.

A frame is ``F = h * w`` tokens (a 1x1 patchify of the latent grid, then a linear layer). Each token
gets a spatial position embedding; time enters attention only through RoPE on the *absolute frame
index*, so an attention score depends only on the frame offset between query and key. That is what
keeps cached keys valid when the context window slides. All tokens of one frame share one RoPE
position; the spatial embedding tells them apart.

Per-frame conditioning (action embedding + flow timestep embedding) is added to every token of the
frame. Blocks are pre-norm (RMSNorm) with QK RMSNorm; attention itself is delegated to a callback
(``attend``) so the same blocks serve full sequences (prefill, training) and ragged decode batches
against KV caches; either way the callback ends in ``worldserve.dynamics.attention.backend``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from worldserve.dynamics.layers.rowwise import rowwise

from .config import WorldModelConfig

# attend(layer_index, q, k, v) -> attention output; q, k, v and the output are (B, T, H, D)
AttendFn = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------------
# QK-norm and RoPE: small separate functions, applied before attention (a kernel may fuse them).


def qk_rmsnorm(
    q: torch.Tensor,  # (B, T, H, D)
    k: torch.Tensor,  # (B, T, H, D)
    q_weight: torch.Tensor,  # (D,)
    k_weight: torch.Tensor,  # (D,)
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm over the head dim of q and k: bounds attention logits whatever the residual scale."""
    d = q.shape[-1]
    return F.rms_norm(q, (d,), q_weight, eps), F.rms_norm(k, (d,), k_weight, eps)


def rope_cos_sin(
    positions: torch.Tensor,  # (...,) integer absolute frame indices
    head_dim: int,
    theta: float,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:  # 2 x (..., D/2)
    """cos/sin tables for RoPE at integer positions.

    Angles are computed in float64: a session can run for millions of frames, and a float32 angle
    ``pos * freq`` at pos ~ 1e6 loses ~0.06 rad, which would break the "scores depend only on the
    offset" property that the sliding KV cache relies on.
    """
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim)
    angles = positions.to(torch.float64)[..., None] * inv_freq  # (..., D/2)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(
    x: torch.Tensor,  # (B, T, H, D)
    cos: torch.Tensor,  # (B, T, D/2)
    sin: torch.Tensor,  # (B, T, D/2)
) -> torch.Tensor:  # (B, T, H, D)
    """Rotate (x1, x2) = halves of the head dim by the per-token angle (GPT-NeoX layout)."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, T, H, D/2) each
    c, s = cos[:, :, None, :], sin[:, :, None, :]  # broadcast over heads
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of flow times t in [0, 1]: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]  # (B, dim/2)
    return torch.cat([args.cos(), args.sin()], dim=-1)


# --------------------------------------------------------------------------------------------------


class MLP(nn.Module):
    def __init__(self, cfg: WorldModelConfig):
        super().__init__()
        hidden = int(cfg.dim * cfg.mlp_ratio)
        self.fc = nn.Linear(cfg.dim, hidden)
        self.proj = nn.Linear(hidden, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        # SiLU rather than GELU: same quality class, ~6x cheaper on CPU at serving batch sizes
        return self.proj(F.silu(self.fc(x)))


class Block(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: WorldModelConfig):
        super().__init__()
        self.n_heads, self.head_dim, self.eps = cfg.n_heads, cfg.head_dim, cfg.norm_eps
        self.norm1 = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.q_norm = nn.Parameter(torch.ones(cfg.head_dim))
        self.k_norm = nn.Parameter(torch.ones(cfg.head_dim))
        self.attn_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.norm2 = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)

    def qkv_raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v (B, T, H, D) before QK-norm and RoPE (strided views of one projection)."""
        B, T, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, self.n_heads, self.head_dim).unbind(2)  # (B, T, H, D)
        return q, k, v

    def qkv_heads(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normed + rotated q, k and plain v, each (B, T, H, D), from the residual stream x (B, T, C)."""
        q, k, v = self.qkv_raw(x)
        q, k = qk_rmsnorm(q, k, self.q_norm, self.k_norm, self.eps)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def finish(self, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """Residual add of the attention output (B, T, H, D), then the MLP; returns (B, T, C)."""
        x = x + self.attn_proj(attn_out.flatten(2))
        return x + self.mlp(self.norm2(x))


class DynamicsTransformer(nn.Module):
    """Embeddings, blocks and the velocity head. Knows nothing of caches or sampling."""

    def __init__(self, cfg: WorldModelConfig):
        super().__init__()
        self.cfg = cfg
        C, D = cfg.latent_channels, cfg.dim
        self.latent_in = nn.Linear(C, D)  # 1x1 patchify: one token per latent cell
        self.spatial_pos = nn.Parameter(torch.zeros(cfg.frame_tokens, D))  # learned, (F, C)
        self.action_mlp = nn.Sequential(nn.Linear(cfg.action_dim, D), nn.SiLU(), nn.Linear(D, D))
        self.first_frame = nn.Parameter(torch.zeros(D))  # stands in for the action of frame 0 (no action made it)
        self.null_action = nn.Parameter(torch.zeros(D))  # unconditional branch of classifier-free guidance
        self.time_mlp = nn.Sequential(nn.Linear(D, D), nn.SiLU(), nn.Linear(D, D))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm_out = nn.RMSNorm(D, eps=cfg.norm_eps)
        self.head = nn.Linear(D, C)  # velocity per latent cell

    # --- conditioning -----------------------------------------------------------------------------

    def action_embed(
        self,
        actions: torch.Tensor,  # (B, A)
        steps: torch.Tensor,  # (B,) absolute frame index of the frame each action produced
        drop: torch.Tensor | None = None,  # (B,) bool: use the null (unconditional) action
        *,
        per_row: bool = False,
    ) -> torch.Tensor:  # (B, C)
        """``per_row`` (serving on CPU): the MLP runs on each action alone, so a session's
        embedding does not depend on the batch, bitwise (:mod:`worldserve.dynamics.layers.rowwise`)."""
        a = actions.to(self.head.weight.dtype)
        e = rowwise(self.action_mlp, a) if per_row else self.action_mlp(a)
        if drop is not None:
            e = torch.where(drop[:, None], self.null_action.expand_as(e), e)
        # frame 0 was made by the image model, not by an action: it always gets its own embedding
        return torch.where((steps == 0)[:, None], self.first_frame.expand_as(e), e)

    def unconditional_embed(self, steps: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, C)
        """What ``action_embed`` gives a dropped action (classifier-free guidance's unconditional
        branch): the learned null action, frame 0's own embedding at step 0. No MLP runs."""
        e = self.null_action.expand(steps.shape[0], -1)
        return torch.where((steps == 0)[:, None], self.first_frame.expand_as(e), e)

    def time_embed(self, t: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, C)
        return self.time_mlp(timestep_embedding(t, self.cfg.dim).to(self.head.weight.dtype))

    def embed(
        self,
        latents: torch.Tensor,  # (B, T, Cl, h, w)
        frame_cond: torch.Tensor,  # (B, T, C): action + time embedding per frame
    ) -> torch.Tensor:  # (B, T*F, C)
        B, T = latents.shape[:2]
        x = latents.flatten(3).transpose(2, 3)  # (B, T, F, Cl)
        x = self.latent_in(x.to(self.head.weight.dtype)) + self.spatial_pos + frame_cond[:, :, None, :]  # (B, T, F, C)
        return x.reshape(B, T * self.cfg.frame_tokens, self.cfg.dim)

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        """Velocity head: (B, T*F, C) -> (B, T, Cl, h, w)."""
        c = self.cfg
        B = x.shape[0]
        v = self.head(self.norm_out(x))  # (B, T*F, Cl)
        v = v.view(B, -1, c.frame_tokens, c.latent_channels).transpose(2, 3)  # (B, T, Cl, F)
        return v.reshape(B, -1, c.latent_channels, c.latent_height, c.latent_width)

    def rope(self, frame_index: torch.Tensor, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) absolute frame indices -> cos, sin (B, T*F, D/2), one position per token, in
        ``dtype`` (default: the parameters' dtype; the fused attention prologue takes fp32 tables).

        Without ``spatial_rope`` all tokens of a frame share the frame's angles. With it, the first
        D/4 pairs rotate by the frame index and the last D/4 by the token's row (D/8) and column
        (D/8) in the latent grid; the frame-index part uses head_dim/2 as its "head dim" so its
        frequencies span the same range."""
        c, dt = self.cfg, self.head.weight.dtype if dtype is None else dtype
        F_ = c.frame_tokens
        if not c.spatial_rope:
            cos, sin = rope_cos_sin(frame_index, c.head_dim, c.rope_theta, dt)
            return cos.repeat_interleave(F_, dim=1), sin.repeat_interleave(F_, dim=1)
        B, T = frame_index.shape
        cos_t, sin_t = rope_cos_sin(frame_index, c.head_dim // 2, c.rope_theta, dt)  # (B, T, D/4)
        cos_s, sin_s = self._spatial_tables(frame_index.device, dt)  # (F, D/4)
        cos = torch.cat([cos_t.repeat_interleave(F_, dim=1), cos_s.repeat(T, 1).expand(B, -1, -1)], dim=-1)
        sin = torch.cat([sin_t.repeat_interleave(F_, dim=1), sin_s.repeat(T, 1).expand(B, -1, -1)], dim=-1)
        return cos, sin  # (B, T*F, D/2)

    def _spatial_tables(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin (F, D/4) of each token's (row, column): D/8 pairs per axis, base 100."""
        c = self.cfg
        rows = torch.arange(c.latent_height, device=device).repeat_interleave(c.latent_width)  # (F,)
        cols = torch.arange(c.latent_width, device=device).repeat(c.latent_height)  # (F,)
        cr, sr = rope_cos_sin(rows, c.head_dim // 4, 100.0, dtype)  # (F, D/8)
        cc, sc = rope_cos_sin(cols, c.head_dim // 4, 100.0, dtype)
        return torch.cat([cr, cc], dim=-1), torch.cat([sr, sc], dim=-1)

    # --- the blocks -------------------------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,  # (B, T, C) embedded tokens
        cos: torch.Tensor | None,  # (B, T, D/2); unused with fused_prologue
        sin: torch.Tensor | None,  # (B, T, D/2)
        attend: AttendFn,
        need_output: bool = True,
        fused_prologue: bool = False,
    ) -> tuple[torch.Tensor | None, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Run the blocks. Returns (velocity tokens (B, T, C) or None, per-layer (k, v) each (B, T, H, D)).

        ``need_output=False`` (prefill, cache commit) stops after the last layer's k/v: its
        attention, MLP and the head would only feed an output nobody reads.

        ``fused_prologue=True`` (the served decode path): ``attend`` gets the *raw* q and k (before
        QK-norm and RoPE) and applies them itself (``attention_decode`` fuses them into the kernel
        and stores the keys in the KV cache); no (k, v) are returned, and with ``need_output=False``
        the last layer's ``attend`` still runs (it is what writes that layer's keys/values).
        """
        kvs: list[tuple[torch.Tensor, torch.Tensor]] = []
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            if fused_prologue:
                q, k, v = block.qkv_raw(x)  # (B, T, H, D) each, before QK-norm / RoPE
                out = attend(i, q, k, v)
                if i == last and not need_output:
                    return None, kvs
                x = block.finish(x, out)
                continue
            q, k, v = block.qkv_heads(x, cos, sin)  # (B, T, H, D) each
            kvs.append((k, v))
            if i == last and not need_output:
                return None, kvs
            x = block.finish(x, attend(i, q, k, v))  # (B, T, C)
        return x, kvs
