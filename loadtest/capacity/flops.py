"""FLOPs of one served step of one session, counted from a model's config (no model is built).

Convention of ``torch.utils.flop_counter`` (so a count can be checked against ``FlopCounterMode``
on the real step): 2 per multiply-add of matrix products (linear layers, attention's QK^T and PV)
and convolutions (bias, norms, activations, softmax and elementwise work count nothing).

Per model kind:

- ``world_model`` (the latent transformer, :mod:`worldserve.dynamics.models.transformer`): per
  frame ``sample_steps`` denoising passes, each over 2 copies when classifier-free guidance is on
  (guidance != 1), of ``F`` = (H/ds)(W/ds) tokens against ``context_frames x F`` keys (the cached
  window and the frame itself), then one commit pass (the new frame's keys/values: every layer but
  the last one's projection and MLP), then the autoencoder's decoder (convolutions).
- ``scroll_canvas`` (:mod:`worldserve.dynamics.models.canvas`): one U-Net pass (convolutions at full,
  1/2 and 1/4 resolution, self-attention over the 1/4 grid), the scroll head, the conditioning
  MLP and, with ``player_layer``, the lighting head; its latent is the frame itself (no decoder).
- ``causal_dit``: :func:`loadtest.dit_bench_common.chunk_flops` (already checked against
  ``FlopCounterMode`` in tests/loadtest/test_dit_bench.py), divided by the chunk's frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one step of one session, by kind of work."""

    linear: int = 0  # projections, MLPs, embeddings, heads
    attention: int = 0  # QK^T and PV
    conv: int = 0  # convolutions (U-Net, autoencoder decoder, heads)

    @property
    def total(self) -> int:
        return self.linear + self.attention + self.conv

    def __add__(self, o: StepFlops) -> StepFlops:
        return StepFlops(self.linear + o.linear, self.attention + o.attention, self.conv + o.conv)

    def scaled(self, k: int) -> StepFlops:
        return StepFlops(self.linear * k, self.attention * k, self.conv * k)

    def as_dict(self) -> dict[str, int]:
        return dict(linear=self.linear, attention=self.attention, conv=self.conv, total=self.total)


def conv2d(c_in: int, c_out: int, k: int, h_out: int, w_out: int) -> int:
    """FLOPs of a k x k convolution producing (c_out, h_out, w_out)."""
    return 2 * c_in * c_out * k * k * h_out * w_out


def _down(n: int) -> int:
    """Output size of a stride-2, padding-1, 3x3 convolution."""
    return (n - 1) // 2 + 1


# --------------------------------------------------------------------------------------------------
# world_model: the latent transformer


def _transformer_pass(cfg: Any, tokens: int, keys: int, *, head: bool, last_layer_full: bool = True) -> StepFlops:
    """One pass of ``tokens`` query tokens (one copy) attending to ``keys`` keys in every layer."""
    D, L = cfg.dim, cfg.n_layers
    hidden = int(cfg.dim * cfg.mlp_ratio)
    qkv = 2 * tokens * D * 3 * D
    rest = 2 * tokens * D * D + 2 * 2 * tokens * D * hidden  # attention output projection + MLP
    linear = 2 * tokens * cfg.latent_channels * D  # latent_in
    linear += L * qkv + (L if last_layer_full else L - 1) * rest
    if head:
        linear += 2 * tokens * D * cfg.latent_channels
    attention = L * 4 * tokens * keys * D
    return StepFlops(linear=linear, attention=attention)


def transformer_decoder_flops(cfg: Any) -> int:
    """The autoencoder's decoder (worldserve.dynamics.models.transformer.autoencoder.Decoder) on one frame."""
    n_stages = cfg.downsample.bit_length() - 1
    widths = [cfg.ae_channels * min(2**i, 4) for i in range(n_stages + 1)][::-1]  # coarsest first
    h, w = cfg.latent_height, cfg.latent_width
    f = conv2d(cfg.latent_channels, widths[0], 3, h, w)  # stem
    for i in range(len(widths) - 1):
        h, w = 2 * h, 2 * w
        f += conv2d(widths[i], widths[i + 1], 3, h, w)  # upsample + conv
        f += 2 * conv2d(widths[i + 1], widths[i + 1], 3, h, w)  # ResBlock
    f += conv2d(widths[-1], 3, 3, h, w)  # out
    return f


def transformer_step_flops(cfg: Any, *, sample_steps: int | None = None, guidance: float | None = None) -> StepFlops:
    """One frame of one session at steady state (a full window of ``context_frames - 1`` cached
    frames): the denoising passes, the commit pass and the decode. ``cfg``: a WorldModelConfig."""
    S = cfg.sample_steps if sample_steps is None else sample_steps
    g = cfg.guidance if guidance is None else guidance
    G = 2 if g != 1.0 else 1
    F_, D, A = cfg.frame_tokens, cfg.dim, len(cfg.keys) + len(cfg.mouse_axes)
    keys = cfg.context_frames * F_
    denoise = _transformer_pass(cfg, F_, keys, head=True).scaled(G * S)
    commit = _transformer_pass(cfg, F_, keys, head=False, last_layer_full=False)
    # conditioning: the action MLP once in the step (the unconditional copy takes the learned null
    # action) and once in the commit; the time MLP once per pass
    cond = 2 * (A * D + D * D) * 2 + 2 * (2 * D * D) * (S + 1)
    return denoise + commit + StepFlops(linear=cond, conv=transformer_decoder_flops(cfg))


def transformer_prefill_flops(cfg: Any, frames: int) -> int:
    """A cache-miss prefill of ``frames`` frames (one frame-block-causal pass, no output head):
    what the first round of a CPU measurement costs beyond its steps."""
    F_ = cfg.frame_tokens
    total = 0
    for i in range(1, frames + 1):  # frame i attends to itself and the frames before it
        total += _transformer_pass(cfg, F_, i * F_, head=False, last_layer_full=False).total
    return total


# --------------------------------------------------------------------------------------------------
# scroll_canvas


def canvas_step_flops(cfg: Any) -> StepFlops:
    """One step of one session of the scroll-canvas model. ``cfg``: a CanvasConfig."""
    H, W = cfg.frame_height, cfg.frame_width
    c0, c1, c2 = cfg.channels
    d = cfg.cond_dim
    A = len(cfg.keys) + len(cfg.mouse_axes)
    in_ch = 11 + cfg.world_channels + 1 + A + (3 if cfg.background_canvas else 0)
    H2, W2 = _down(H), _down(W)
    H4, W4 = _down(H2), _down(W2)
    conv = linear = attention = 0

    def res(ch: int, h: int, w: int) -> None:
        nonlocal conv, linear
        conv += 2 * conv2d(ch, ch, 3, h, w)
        linear += 2 * d * 2 * ch  # FiLM

    conv += conv2d(in_ch, c0, 3, H, W)  # inp
    res(c0, H, W)  # e0
    conv += conv2d(c0, c1, 3, H2, W2)  # down1
    res(c1, H2, W2)  # e1
    conv += conv2d(c1, c2, 3, H4, W4)  # down2
    res(c2, H4, W4)  # m1
    T = H4 * W4
    linear += 2 * T * c2 * 3 * c2 + 2 * T * c2 * c2  # attention qkv + proj
    attention += 4 * T * T * c2
    res(c2, H4, W4)  # m2
    conv += conv2d(c2, c1, 3, H2, W2) + conv2d(2 * c1, c1, 1, H2, W2)  # up2, merge1
    res(c1, H2, W2)  # d1
    conv += conv2d(c1, c0, 3, H, W) + conv2d(2 * c0, c0, 1, H, W)  # up1, merge0
    res(c0, H, W)  # d0
    n_copy = len(cfg.copy_offsets) + 1
    extra = 1 + cfg.poses if cfg.player_layer else 0
    conv += conv2d(c0, 3 + n_copy + extra, 3, H, W)  # out
    # scroll head: 4x4 stride-4 conv, 3x3 stride-2 conv, MLP
    h4, w4 = H // 4, W // 4
    h8, w8 = _down(h4), _down(w4)
    conv += conv2d(3, 32, 4, h4, w4) + conv2d(32, 32, 3, h8, w8)
    linear += 2 * (32 * (H // 8) * (W // 8) + A + 4) * 256 + 2 * 256 * cfg.n_scroll
    linear += 2 * (A + d + cfg.n_scroll) * d + 2 * d * d  # conditioning MLP
    if cfg.player_layer:  # lighting head
        conv += conv2d(3, 16, 3, H, W) + conv2d(16, 16, 3, H2, W2)
        linear += 2 * (32 + 9 + d) * 64 + 2 * 64 * cfg.lightings
    return StepFlops(linear=linear, attention=attention, conv=conv)


# --------------------------------------------------------------------------------------------------
# causal_dit


def causal_dit_frame_flops(
    config: Any, options: Any, frame_tokens: int, *, text: bool, vae_flops: int = 0
) -> StepFlops:
    """One pixel frame of a steady chunk (chunk FLOPs / the chunk's pixel frames, Wan's VAE: 4 per
    latent frame)."""
    from loadtest.dit_bench_common import chunk_flops, pixel_frames_per_chunk

    c = chunk_flops(config, options, frame_tokens, text=text, vae_flops=vae_flops)
    frames = pixel_frames_per_chunk(options, 4)
    t = c.transformer
    return StepFlops(
        linear=math.ceil(t.linear / frames),
        attention=math.ceil((t.self_attention + t.cross_attention) / frames),
        conv=math.ceil(c.vae / frames),
    )


def step_flops(kind: str, cfg: Any, **kw: Any) -> StepFlops:
    """FLOPs of one step (one frame) of one session of a model ``kind`` with config ``cfg``."""
    if kind == "world_model":
        return transformer_step_flops(cfg, **kw)
    if kind == "scroll_canvas":
        return canvas_step_flops(cfg)
    raise ValueError(f"no FLOP counter for model kind {kind!r}")
