"""The Wan2.1 video diffusion transformer, made block-causal and cut at the seams streaming needs.

``CausalWanTransformer`` has exactly the module tree and parameter names of diffusers'
``WanTransformer3DModel`` (diffusers 0.42.1), so a published diffusers state dict loads with
``strict=True``; blocks listed by ``action_config.blocks`` add ``blocks.N.action_model.*``
(actions.py). Its full ``forward`` equals diffusers' (tested to 1e-4 in fp32) and takes an optional
(F, F) frame mask that makes self-attention block-causal by latent frame.

The streaming seam (inference.py calls these and never re-implements them):

    x, grid = net.embed(latents)                  # (B, N, D), (f, h, w)
    t = net.time_embed(timestep)                  # timestep (B, f) -> TimeConditioning
    ctx = net.text_context(text)                  # (B, L, D) or None: no cross-attention
    rope = net.rope(first_frame, f, h, w)         # (cos, sin) of absolute frames first_frame..
    win = net.action_windows(actions, first_frame, f)   # ActionWindows or None
    for i in range(num_layers):
        x = net.block_forward(i, x, t, ctx, rope, self_attn, win)
    out = net.head(x, t, grid)                    # (B, C_out, f, H, W)

where ``self_attn(q, k, v) -> o``, all (B, heads, N, head_dim) with q and k already RMS-normed and
rotated, is the pluggable self-attention: ``forward`` passes SDPA under the frame mask; the
streaming inference passes paged attention over the session's KV cache.

Refinements of the shared contract (issue 24): ``block_forward``'s ``actions`` is the
``ActionWindows`` that ``action_windows(actions, first_frame, f)`` gathers once per pass (a frame's
window reaches back before the chunk, so the first frame must be known; the blocks reuse it);
``rope`` and ``action_windows`` also take one first frame per session (a batch of sessions at
different frames: cos/sin become (B, N, head_dim)); ``pad_text`` zero-pads prompt embeddings to
Wan's 512 tokens as its pipelines do; ``to_serving_dtype`` keeps diffusers' float32 parameters.

Differences from diffusers, all outside what a diffusers checkpoint exercises: per-frame timesteps
are given as (B, F) (diffusers takes per-token (B, N); the same values repeated over a frame's
tokens give the same result); ``text=None`` skips the cross-attention; RoPE is computed for any
absolute frame index (diffusers' table stops at ``rope_max_seq_len`` frames; below it the values
are identical); fused projections, LoRA scaling, gradient checkpointing and image conditioning
are not supported.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .actions import ActionModule, ActionWindows, FrameActions, action_windows
from .config import WanTransformerConfig

SelfAttention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Rope = tuple[torch.Tensor, torch.Tensor]


# ---------------------------------------------------------------------------------------------
# Frame visibility
# ---------------------------------------------------------------------------------------------


def chunk_of_frame(frame: int, chunk_frames: int) -> int:
    """Chunk index of an absolute latent frame: frame 0 is chunk 0, then chunks of ``chunk_frames``."""
    return 0 if frame == 0 else (frame - 1) // chunk_frames + 1


def chunk_start(chunk: int, chunk_frames: int) -> int:
    """First latent frame of a chunk."""
    return 0 if chunk == 0 else 1 + (chunk - 1) * chunk_frames


def block_causal_frame_mask(
    num_frames: int, chunk_frames: int, sink_frames: int, window_frames: int | None
) -> torch.Tensor:
    """(F, F) bool, True where query frame (row) may see key frame (column).

    The frames of chunk j see all of chunk j and, of earlier frames, the first ``sink_frames``
    frames plus the last ``window_frames`` frames before chunk j's first frame (None or 0: all).
    """
    if num_frames < 0 or chunk_frames < 1 or sink_frames < 0 or (window_frames is not None and window_frames < 0):
        raise ValueError(
            f"bad mask arguments: num_frames={num_frames}, chunk_frames={chunk_frames}, "
            f"sink_frames={sink_frames}, window_frames={window_frames}"
        )
    frames = torch.arange(num_frames)  # (F,)
    chunk = torch.where(frames == 0, 0, (frames - 1) // chunk_frames + 1)  # (F,)
    start = torch.where(chunk == 0, 0, 1 + (chunk - 1) * chunk_frames)  # (F,) first frame of the row's chunk
    q_chunk, k_chunk = chunk[:, None], chunk[None, :]  # (F, 1), (1, F)
    q_start, k = start[:, None], frames[None, :]  # (F, 1), (1, F)
    same = q_chunk == k_chunk  # (F, F)
    earlier = k < q_start  # (F, F)
    recent = torch.ones_like(earlier) if not window_frames else k >= q_start - window_frames  # (F, F)
    sink = k < sink_frames  # (1, F)
    return same | (earlier & (sink | recent))  # (F, F)


def token_mask(frame_mask: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """(F, F) frame mask -> (N, N) token mask, N = F * tokens_per_frame."""
    return frame_mask.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)  # (N, N)


def sdpa_self_attention(mask: torch.Tensor | None = None) -> SelfAttention:
    """The reference self_attn: SDPA over the whole sequence, ``mask`` (N, N) bool (True = attend)."""

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, N, hd)

    return attend


TEXT_LEN = 512
"""Wan's prompt length: its pipelines (original and diffusers') zero-pad the umT5 embedding to 512 tokens."""


def pad_text(texts: Sequence[torch.Tensor], length: int = TEXT_LEN) -> torch.Tensor:
    """Text embeddings (L_i, text_dim) zero-padded to (B, length, text_dim), as Wan's pipelines feed them."""
    if not texts:
        raise ValueError("pad_text needs at least one text embedding")
    width = texts[0].shape[-1]
    out = texts[0].new_zeros(len(texts), length, width)  # (B, length, text_dim)
    for b, t in enumerate(texts):
        if t.ndim != 2 or t.shape[-1] != width or t.shape[0] > length:
            raise ValueError(f"text embedding {b} must be (L <= {length}, {width}), got {tuple(t.shape)}")
        out[b, : t.shape[0]] = t
    return out


# ---------------------------------------------------------------------------------------------
# Modules (diffusers' names)
# ---------------------------------------------------------------------------------------------


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32, result in the input's dtype (diffusers' FP32LayerNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


class TimestepEmbedding(nn.Module):
    """linear_1 -> SiLU -> linear_2 (diffusers' TimestepEmbedding)."""

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class TextProjection(nn.Module):
    """linear_1 -> GELU(tanh) -> linear_2 (diffusers' PixArtAlphaTextProjection)."""

    def __init__(self, in_features: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, dim)
        self.act_1 = nn.GELU(approximate="tanh")
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act_1(self.linear_1(x)))


def timestep_sinusoids(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """(T,) timesteps -> (T, dim) [cos | sin] embedding (diffusers' Timesteps(flip_sin_to_cos=True, shift 0))."""
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half  # (half,)
    emb = timesteps[:, None].float() * torch.exp(exponent)[None, :]  # (T, half)
    emb = torch.cat([torch.cos(emb), torch.sin(emb)], dim=-1)  # (T, 2*half)
    if dim % 2:
        emb = F.pad(emb, (0, 1))  # (T, dim)
    return emb


class ConditionEmbedder(nn.Module):
    """The timestep and text embedders (diffusers' WanTimeTextImageEmbedding without the image part)."""

    def __init__(self, dim: int, freq_dim: int, text_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.time_embedder = TimestepEmbedding(freq_dim, dim)
        self.act_fn = nn.SiLU()
        self.time_proj = nn.Linear(dim, 6 * dim)
        self.text_embedder = TextProjection(text_dim, dim)


class Attention(nn.Module):
    """Projections of a Wan attention (diffusers' WanAttention names); the attention itself is the caller's."""

    def __init__(self, dim: int, heads: int, eps: float):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        self.norm_q = nn.RMSNorm(dim, eps=eps, elementwise_affine=True)
        self.norm_k = nn.RMSNorm(dim, eps=eps, elementwise_affine=True)

    def qkv(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """x (B, N, D), context (B, L, D) or None (self) -> q (B, N, H, hd), k, v (B, L or N, H, hd)."""
        src = x if context is None else context
        q = self.norm_q(self.to_q(x)).unflatten(2, (self.heads, -1))  # (B, N, H, hd)
        k = self.norm_k(self.to_k(src)).unflatten(2, (self.heads, -1))  # (B, L, H, hd)
        v = self.to_v(src).unflatten(2, (self.heads, -1))  # (B, L, H, hd)
        return q, k, v

    def out(self, o: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """o (B, H, N, hd) -> (B, N, D)."""
        o = o.transpose(1, 2).flatten(2, 3).type_as(like)  # (B, N, D)
        return self.to_out[1](self.to_out[0](o))  # (B, N, D)


class GELUProjection(nn.Module):
    """proj -> GELU(tanh) (diffusers' GELU activation module)."""

    def __init__(self, dim: int, inner_dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """net.0.proj -> GELU(tanh) -> net.2 (diffusers' FeedForward, activation gelu-approximate)."""

    def __init__(self, dim: int, inner_dim: int):
        super().__init__()
        self.net = nn.ModuleList([GELUProjection(dim, inner_dim), nn.Dropout(0.0), nn.Linear(inner_dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)  # (B, N, ffn_dim) then (B, N, D)
        return x


class WanBlock(nn.Module):
    """One transformer block (diffusers' WanTransformerBlock names) + an optional action module."""

    def __init__(self, config: WanTransformerConfig, with_actions: bool):
        super().__init__()
        dim, heads, eps = config.inner_dim, config.num_attention_heads, config.eps
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.attn1 = Attention(dim, heads, eps)
        self.attn2 = Attention(dim, heads, eps)
        self.norm2: nn.Module = (
            FP32LayerNorm(dim, eps, elementwise_affine=True) if config.cross_attn_norm else nn.Identity()
        )
        self.ffn = FeedForward(dim, config.ffn_dim)
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)
        self.action_model: ActionModule | None = None
        if with_actions:
            assert config.action_config is not None
            self.action_model = ActionModule(config.action_config, dim)


@dataclass(frozen=True)
class TimeConditioning:
    """What the blocks and the head take from the timesteps, per latent frame (broadcast over its tokens)."""

    temb: torch.Tensor  # (B, f, D) the head's conditioning
    modulation: torch.Tensor  # (B, f, 6, D) shift/scale/gate of attention and FFN, before each block's table

    @property
    def num_frames(self) -> int:
        return int(self.modulation.shape[1])


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, N, H, hd) rotated on interleaved pairs by cos/sin (N, hd) or (B, N, hd) (diffusers' Wan rotation)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)  # (B, N, H, hd/2) each
    if cos.ndim == 2:
        cos, sin = cos[None], sin[None]  # (1, N, hd)
    c = cos[:, :, None, 0::2]  # (B or 1, N, 1, hd/2)
    s = sin[:, :, None, 1::2]  # (B or 1, N, 1, hd/2)
    out = torch.empty_like(x)  # (B, N, H, hd)
    out[..., 0::2] = x1 * c - x2 * s
    out[..., 1::2] = x1 * s + x2 * c
    return out.type_as(x)


class CausalWanTransformer(nn.Module):
    """Wan2.1's transformer with diffusers' module tree, a frame-masked forward and a streaming seam."""

    def __init__(self, config: WanTransformerConfig):
        super().__init__()
        config.check("CausalWanTransformer")
        self.config = config
        dim = config.inner_dim
        action_blocks = set(config.action_config.blocks) if config.action_config is not None else set()
        p = config.patch_size
        patch = (p[0], p[1], p[2])
        self.patch_embedding = nn.Conv3d(config.in_channels, dim, kernel_size=patch, stride=patch)
        self.condition_embedder = ConditionEmbedder(dim, config.freq_dim, config.text_dim)
        self.blocks = nn.ModuleList([WanBlock(config, i in action_blocks) for i in range(config.num_layers)])
        self.norm_out = FP32LayerNorm(dim, config.eps, elementwise_affine=False)
        self.proj_out = nn.Linear(dim, config.out_channels * math.prod(config.patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    KEEP_FP32 = frozenset({"time_embedder", "scale_shift_table", "norm1", "norm2", "norm3"})
    """Parameters kept in float32 at a lower serving dtype (diffusers' _keep_in_fp32_modules)."""

    def to_serving_dtype(self, dtype: torch.dtype) -> CausalWanTransformer:
        """Cast to ``dtype`` except the KEEP_FP32 parameters, as diffusers loads a bf16 Wan; returns self."""
        self.to(dtype)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if self.KEEP_FP32.intersection(name.split(".")):
                    p.data = p.data.float()
        return self

    @property
    def has_actions(self) -> bool:
        return self.config.action_config is not None and bool(self.config.action_config.blocks)

    # --- the seam -----------------------------------------------------------------------------

    def embed(self, latents: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """latents (B, C, F, H, W) -> tokens (B, N, D), grid (f, h, w) with N = f*h*w."""
        x = self.patch_embedding(latents)  # (B, D, f, h, w)
        grid = (int(x.shape[2]), int(x.shape[3]), int(x.shape[4]))
        return x.flatten(2).transpose(1, 2).contiguous(), grid  # (B, N, D)

    def time_embed(self, timestep: torch.Tensor) -> TimeConditioning:
        """timestep (B, f) per latent frame (or (B,) for all frames) -> TimeConditioning."""
        ce = self.condition_embedder
        if timestep.ndim == 1:
            timestep = timestep[:, None]  # (B, 1)
        B, f = timestep.shape
        t = timestep_sinusoids(timestep.flatten(), ce.freq_dim)  # (B*f, freq_dim)
        t = t.to(ce.time_embedder.linear_1.weight.dtype)  # (B*f, freq_dim)
        temb = ce.time_embedder(t).to(self.patch_embedding.weight.dtype)  # (B*f, D)
        mod = ce.time_proj(ce.act_fn(temb))  # (B*f, 6D)
        return TimeConditioning(
            temb=temb.view(B, f, -1),  # (B, f, D)
            modulation=mod.view(B, f, 6, -1),  # (B, f, 6, D)
        )

    def text_context(self, text: torch.Tensor | None) -> torch.Tensor | None:
        """text (B, L, text_dim) -> the cross-attention's context (B, L, D); None -> None (no cross-attention)."""
        if text is None:
            return None
        return self.condition_embedder.text_embedder(text)  # (B, L, D)

    def rope(self, first_frame: int | Sequence[int], f: int, h: int, w: int) -> Rope:
        """(cos, sin) float32 of the tokens of frames first_frame .. first_frame+f-1 on an h x w
        token grid, in token order: each (N, head_dim) for one first frame, (B, N, head_dim) for a
        sequence of B first frames (a batch of sessions at different frames); N = f*h*w."""
        d = self.config.attention_head_dim
        h_dim = w_dim = 2 * (d // 6)
        t_dim = d - h_dim - w_dim
        device = self.patch_embedding.weight.device
        if device.type == "meta":
            device = torch.device("cpu")
        firsts = [first_frame] if isinstance(first_frame, int) else list(first_frame)
        frames = torch.tensor(firsts, dtype=torch.float64, device=device)[:, None] + torch.arange(
            f, dtype=torch.float64, device=device
        )  # (Bt, f)

        def table(pos: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
            freqs = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim))  # (dim/2,)
            angles = pos[..., None] * freqs  # (..., P, dim/2)
            return angles.cos().repeat_interleave(2, -1).float(), angles.sin().repeat_interleave(2, -1).float()

        Bt = len(firsts)
        tc, ts = table(frames, t_dim)  # (Bt, f, t_dim) each
        hc, hs = table(torch.arange(h, dtype=torch.float64, device=device), h_dim)  # (h, h_dim) each
        wc, ws = table(torch.arange(w, dtype=torch.float64, device=device), w_dim)  # (w, w_dim) each
        out = []
        for t_, h_, w_ in ((tc, hc, wc), (ts, hs, ws)):
            full = torch.cat(
                [
                    t_[:, :, None, None, :].expand(Bt, f, h, w, t_dim),
                    h_[None, None, :, None, :].expand(Bt, f, h, w, h_dim),
                    w_[None, None, None, :, :].expand(Bt, f, h, w, w_dim),
                ],
                dim=-1,
            ).reshape(Bt, f * h * w, d)  # (Bt, N, hd)
            out.append(full[0] if isinstance(first_frame, int) else full)  # (N, hd) or (B, N, hd)
        return out[0], out[1]

    def action_windows(
        self,
        actions: FrameActions | Sequence[FrameActions] | None,
        first_frame: int | Sequence[int],
        f: int,
    ) -> ActionWindows | None:
        """The action windows of latent frames first_frame .. first_frame+f-1 (None without actions);
        a sequence of FrameActions and of first frames (one per session of a batch) gives the batch's
        windows. ValueError when the model takes no actions but some are given, or they do not cover
        the windows."""
        if actions is None:
            return None
        if not self.has_actions:
            raise ValueError("model takes no actions (its transformer has no action modules)")
        cfg = self.config.action_config
        assert cfg is not None
        if isinstance(actions, FrameActions):
            if not isinstance(first_frame, int):
                raise ValueError("one FrameActions takes one first_frame")
            return action_windows(actions, cfg, first_frame, f)
        firsts = [first_frame] * len(actions) if isinstance(first_frame, int) else list(first_frame)
        if len(firsts) != len(actions):
            raise ValueError(f"{len(actions)} FrameActions but {len(firsts)} first frames")
        return ActionWindows.cat([action_windows(a, cfg, s, f) for a, s in zip(actions, firsts)])

    def block_forward(
        self,
        i: int,
        x: torch.Tensor,
        temb: TimeConditioning,
        context: torch.Tensor | None,
        rope: Rope,
        self_attn: SelfAttention,
        actions: ActionWindows | None = None,
    ) -> torch.Tensor:
        """Block i on tokens x (B, N, D) of temb.num_frames whole latent frames -> (B, N, D).

        ``self_attn(q, k, v) -> o``, all (B, heads, N, head_dim), q and k normed and rotated.
        """
        blk = self.blocks[i]
        assert isinstance(blk, WanBlock)
        B, N, D = x.shape
        f = temb.num_frames
        S = N // f  # tokens per frame
        e = blk.scale_shift_table[:, None] + temb.modulation.float()  # (B, f, 6, D)
        shift_msa, scale_msa, gate_msa, c_shift, c_scale, c_gate = e[:, :, None].unbind(3)  # (B, f, 1, D) each

        def frames(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, f, S, D)  # (B, f, S, D)

        # 1. self-attention
        h = (frames(blk.norm1(x.float())) * (1 + scale_msa) + shift_msa).view(B, N, D).type_as(x)  # (B, N, D)
        q, k, v = blk.attn1.qkv(h)  # (B, N, H, hd) each
        q = apply_rope(q, *rope)  # (B, N, H, hd)
        k = apply_rope(k, *rope)  # (B, N, H, hd)
        o = self_attn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (B, H, N, hd)
        a = blk.attn1.out(o, q)  # (B, N, D)
        x = (frames(x.float()) + frames(a) * gate_msa).view(B, N, D).type_as(x)  # (B, N, D)

        # 2. cross-attention to the text
        if context is not None:
            h = blk.norm2(x.float()).type_as(x)  # (B, N, D)
            q, k, v = blk.attn2.qkv(h, context)  # (B, N, H, hd), (B, L, H, hd) x2
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (B, H, N, hd)
            x = x + blk.attn2.out(o, q)  # (B, N, D)

        # 3. actions (Matrix-Game 2.0 places them after the cross-attention)
        if blk.action_model is not None and actions is not None:
            x = blk.action_model(x, f, actions)  # (B, N, D)

        # 4. feed-forward
        h = (frames(blk.norm3(x.float())) * (1 + c_scale) + c_shift).view(B, N, D).type_as(x)  # (B, N, D)
        ff = blk.ffn(h)  # (B, N, D)
        x = (frames(x.float()) + frames(ff.float()) * c_gate).view(B, N, D).type_as(x)  # (B, N, D)
        return x

    def head(self, x: torch.Tensor, temb: TimeConditioning, grid: tuple[int, int, int]) -> torch.Tensor:
        """x (B, N, D) of grid (f, h, w) -> (B, C_out, f*p_t, h*p_h, w*p_w)."""
        B, N, D = x.shape
        f, h, w = grid
        p_t, p_h, p_w = self.config.patch_size
        e = self.scale_shift_table[:, None] + temb.temb[:, :, None]  # (B, f, 2, D)
        shift, scale = e[:, :, None].unbind(3)  # (B, f, 1, D) each
        y = self.norm_out(x.float()).view(B, f, h * w, D)  # (B, f, S, D)
        y = (y * (1 + scale) + shift).view(B, N, D).type_as(x)  # (B, N, D)
        y = self.proj_out(y)  # (B, N, p_t*p_h*p_w*C_out)
        y = y.reshape(B, f, h, w, p_t, p_h, p_w, -1)  # (B, f, h, w, p_t, p_h, p_w, C_out)
        y = y.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C_out, f, p_t, h, p_h, w, p_w)
        return y.flatten(6, 7).flatten(4, 5).flatten(2, 3)  # (B, C_out, F, H, W)

    # --- the full forward -------------------------------------------------------------------------

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor | None = None,
        actions: FrameActions | None = None,
        frame_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """latents (B, C, F, H, W), timestep (B,) or (B, F) -> the flow prediction (B, C_out, F, H, W).

        ``text`` (B, L, text_dim) or None (no cross-attention); ``actions`` for pixel frames from 0
        (see actions.py); ``frame_mask`` (F, F) bool, True = row frame sees column frame (None: full
        attention, which equals diffusers' forward).
        """
        x, grid = self.embed(latents)  # (B, N, D)
        f, h, w = grid
        B = x.shape[0]
        if timestep.ndim == 1:
            timestep = timestep[:, None].expand(B, f)  # (B, f)
        if tuple(timestep.shape) != (B, f):
            raise ValueError(f"timestep must be (B,) or (B, F) = ({B}, {f}), got {tuple(timestep.shape)}")
        temb = self.time_embed(timestep)
        context = self.text_context(text)  # (B, L, D) or None
        rope = self.rope(0, f, h, w)  # (N, hd) x2
        windows = self.action_windows(actions, 0, f)
        mask = None
        if frame_mask is not None:
            if tuple(frame_mask.shape) != (f, f) or frame_mask.dtype != torch.bool:
                raise ValueError(f"frame_mask must be a ({f}, {f}) bool tensor, got {tuple(frame_mask.shape)}")
            mask = token_mask(frame_mask.to(x.device), h * w)  # (N, N)
        self_attn = sdpa_self_attention(mask)
        for i in range(len(self.blocks)):
            x = self.block_forward(i, x, temb, context, rope, self_attn, windows)  # (B, N, D)
        return self.head(x, temb, grid)  # (B, C_out, F, H, W)
