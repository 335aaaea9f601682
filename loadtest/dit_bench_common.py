"""What the causal-DiT bench knows without running the model: its configurations, the FLOPs of one
chunk, the bytes of one session, and the goals with their verdicts.

Split from :mod:`loadtest.dit_bench` (the command). FLOPs follow ``torch.utils.flop_counter``'s
convention: 2 per multiply-add of the matrix products and convolutions (linear layers, attention's
QK^T and PV, conv kernels), nothing for elementwise work, norms and softmax. The transformer's
count is analytic (:func:`pass_flops`; the tests check it against ``FlopCounterMode`` on the served
path); the VAE's is counted by ``FlopCounterMode`` on meta tensors (:func:`vae_facts`: no memory,
any frame size, on a CPU too).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# --------------------------------------------------------------------------------------------------
# Configurations

# Wan-AI/Wan2.1-T2V-1.3B(-Diffusers) transformer/config.json, diffusers' names (the other fields:
# WanTransformerConfig's defaults, which are diffusers': qk_norm rms_norm_across_heads, eps 1e-6,
# cross_attn_norm true, rope_max_seq_len 1024). 1,418,996,800 parameters with the text embedder.
WAN21_T2V_1_3B: dict[str, Any] = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=12,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=8960,
    num_layers=30,
)
WAN21_T2V_1_3B_PARAMETERS = 1_418_996_800
# vae_facts(wan21_vae_config(), REAL_OPTIONS) (tests/loadtest/test_dit_bench.py recounts them): a
# steady 3-frame chunk's decode at 480x832 and the float32 decode cache a session keeps.
WAN21_VAE_CHUNK_FLOPS = 40_650_001_367_040
WAN21_VAE_CACHE_BYTES = 3_777_146_880


def wan21_vae_config() -> dict[str, Any]:
    """Wan2.1's VAE (``vae/config.json`` of the Wan2.1 diffusers repositories: AutoencoderKLWan's
    defaults, 126.9M parameters): base_dim 96, z_dim 16, spatial x8, temporal x4."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan

    defaults = {k: p.default for k, p in inspect.signature(AutoencoderKLWan.__init__).parameters.items()}
    return dict(
        base_dim=96,
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        attn_scales=[],
        temperal_downsample=[False, True, True],
        dropout=0.0,
        latents_mean=list(defaults["latents_mean"]),  # Wan2.1's per-channel statistics
        latents_std=list(defaults["latents_std"]),
    )


# Serving options of the real-size run: 480x832 frames (latent 60x104, 1560 tokens per latent
# frame), chunks of 3 latent frames (12 pixel frames), Self-Forcing's 4-step schedule with Wan's
# shift 5. KV cache as Self-Forcing's: a chunk sees at most 21 latent frames (its kv_cache_size
# 32760 = 21 x 1560 tokens), here 3 sink frames (LongLive's frame sink: the first chunk's size) +
# the 15 most recent frames + the chunk itself. Zero text embedding of 512 tokens (Wan's text_len).
REAL_OPTIONS: dict[str, Any] = dict(
    chunk_frames=3,
    sink_frames=3,
    window_frames=15,
    timesteps=[1000, 750, 500, 250],
    shift=5.0,
    latent_height=60,
    latent_width=104,
    text_len=512,
)

# --quick (the CPU smoke): testing.py's tiny model without action modules (a text-to-video model
# like the real one), 32x32 frames, the real run's chunk of 3 latent frames and 4 passes.
QUICK_OPTIONS: dict[str, Any] = dict(
    chunk_frames=3,
    sink_frames=1,
    window_frames=3,
    timesteps=[1000, 750, 500, 250],
    shift=5.0,
    latent_height=4,
    latent_width=4,
    text_len=8,
)


# --------------------------------------------------------------------------------------------------
# The time layout of a steady chunk


def steady_step(options) -> int:
    """The first step whose chunk sees the sink and a full window (as every later chunk does): the
    bench prefills steps 0 .. steady_step - 1, so every timed chunk is a steady one."""
    full = options.sink_frames + options.window_frames
    s = 1
    while len(options.visible_before(options.step_frames(s).start)) < full:
        s += 1
    return s


def steady_cached_frames(options) -> int:
    """Latent frames a steady chunk attends to besides its own."""
    return len(options.visible_before(options.step_frames(steady_step(options)).start))


def pixel_frames_per_chunk(options, temporal: int) -> int:
    """Pixel frames a chunk after step 0 decodes to (Wan's VAE: 4 per latent frame)."""
    return int(options.chunk_frames) * temporal


# --------------------------------------------------------------------------------------------------
# FLOPs


@dataclass(frozen=True)
class PassFlops:
    """FLOPs of one transformer pass over a batch of chunks, by kind."""

    linear: int  # patch embedding, time embedding, projections, feed-forward, head
    self_attention: int  # QK^T and PV against the cached frames and the chunk itself
    cross_attention: int  # QK^T and PV against the text tokens

    @property
    def total(self) -> int:
        return self.linear + self.self_attention + self.cross_attention

    def __add__(self, other: PassFlops) -> PassFlops:
        return PassFlops(
            self.linear + other.linear,
            self.self_attention + other.self_attention,
            self.cross_attention + other.cross_attention,
        )

    def scaled(self, k: int) -> PassFlops:
        return PassFlops(k * self.linear, k * self.self_attention, k * self.cross_attention)


def pass_flops(
    config,
    *,
    frames: int,
    frame_tokens: int,
    cached_frames: int,
    text_len: int,
    head: bool,
    batch: int = 1,
) -> PassFlops:
    """FLOPs of one pass of ``inference.ChunkInference.forward``: ``frames`` latent frames of
    ``frame_tokens`` tokens each attending to ``cached_frames`` cached frames and to themselves,
    cross-attention to ``text_len`` text tokens (0: none), the output head or not (the commit pass
    has none). Counted per session, times ``batch``.

    Per pass (N = frames x frame_tokens tokens, K = N + cached keys, D = heads x head_dim):
    patch embedding 2*N*D*C_in*prod(patch); time embedding per latent frame
    2*(freq*D + D*D + D*6D); per block: q,k,v,o 8*N*D^2, self-attention 4*N*K*D, cross-attention
    q,o 4*N*D^2 + k,v 4*L*D^2 (the text's keys/values are recomputed every pass) + 4*N*L*D,
    feed-forward 4*N*D*ffn; head 2*N*D*C_out*prod(patch)."""
    c = config
    if c.action_config is not None and c.action_config.blocks:
        raise ValueError("pass_flops counts Wan's transformer; this config has action modules (count them apart)")
    D, F_, L = c.inner_dim, c.ffn_dim, text_len
    patch = math.prod(c.patch_size)
    N = frames * frame_tokens
    K = N + cached_frames * frame_tokens
    linear = 2 * N * D * c.in_channels * patch
    linear += 2 * frames * (c.freq_dim * D + D * D + D * 6 * D)
    per_block = 8 * N * D * D + 4 * N * D * F_
    if L:
        per_block += 4 * N * D * D + 4 * L * D * D
    linear += c.num_layers * per_block
    if head:
        linear += 2 * N * D * c.out_channels * patch
    self_attn = c.num_layers * 4 * N * K * D
    cross = c.num_layers * 4 * N * L * D
    return PassFlops(linear, self_attn, cross).scaled(batch)


@dataclass(frozen=True)
class ChunkFlops:
    """FLOPs of one steady chunk of one session: the denoising passes, the commit pass, the VAE
    decode of its latent frames."""

    denoise: PassFlops  # all denoising passes together
    commit: PassFlops
    vae: int
    passes: int  # denoising passes (+ 1 commit)

    @property
    def transformer(self) -> PassFlops:
        return self.denoise + self.commit

    @property
    def attention(self) -> int:
        t = self.transformer
        return t.self_attention + t.cross_attention

    @property
    def total(self) -> int:
        return self.transformer.total + self.vae

    def as_dict(self) -> dict[str, int]:
        t = self.transformer
        return dict(
            linear=t.linear,
            self_attention=t.self_attention,
            cross_attention=t.cross_attention,
            transformer=t.total,
            vae=self.vae,
            total=self.total,
            passes=self.passes,
        )


def chunk_flops(config, options, frame_tokens: int, *, text: bool, vae_flops: int = 0) -> ChunkFlops:
    """FLOPs of a steady chunk (:func:`steady_step`): ``len(timesteps)`` denoising passes with the
    head, one commit pass without, plus ``vae_flops`` (:func:`vae_facts`)."""
    kw = dict(
        frames=options.chunk_frames,
        frame_tokens=frame_tokens,
        cached_frames=steady_cached_frames(options),
        text_len=options.text_len if text else 0,
    )
    passes = len(options.timesteps)
    denoise = pass_flops(config, head=True, **kw).scaled(passes)
    commit = pass_flops(config, head=False, **kw)
    return ChunkFlops(denoise=denoise, commit=commit, vae=int(vae_flops), passes=passes)


def vae_facts(vae_config: Mapping[str, Any], options, dtype_bytes: int = 4) -> dict[str, int]:
    """Of one session's streaming decode with this AutoencoderKLWan config at the options' latent
    grid, run on meta tensors (no memory, no time): ``flops`` of a steady chunk (``chunk_frames``
    latent frames after frame 0 and a first chunk), ``cache_bytes`` of the session's decode cache
    after it (its feature cache in a VAE of ``dtype_bytes`` per element), ``first_cache_bytes``
    after frame 0."""
    import torch
    from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan
    from torch.utils.flop_counter import FlopCounterMode

    from worldserve.dynamics.models.causal_dit.vae import StreamingWanVAE, check_vae_config

    dt = {4: torch.float32, 2: torch.bfloat16}[dtype_bytes]
    with torch.device("meta"):
        vae = StreamingWanVAE(torch.nn.Module.to(AutoencoderKLWan(**check_vae_config(dict(vae_config))), dtype=dt))
    C, h, w = vae.latent_channels, options.latent_height, options.latent_width
    cache = vae.new_cache()
    vae.decode_float(torch.empty(1, C, 1, h, w, device="meta"), [cache])  # frame 0
    first = cache.nbytes
    chunk = torch.empty(1, C, options.chunk_frames, h, w, device="meta")
    vae.decode_float(chunk, [cache])  # the first chunk after frame 0 still pads a temporal upsampler
    with FlopCounterMode(display=False) as fc:
        vae.decode_float(chunk, [cache])
    return dict(flops=int(fc.get_total_flops()), cache_bytes=int(cache.nbytes), first_cache_bytes=int(first))


# --------------------------------------------------------------------------------------------------
# Bytes of a session


def session_bytes(config, options, frame_tokens: int, dtype_bytes: int, decoder_cache_bytes: int) -> dict[str, int]:
    """One session's state: its KV pages (``sink + window + chunk`` pages of one latent frame's keys
    and values in every layer, model dtype), the VAE decode cache, the text context (``text_len``
    x D, model dtype)."""
    pages = options.sink_frames + options.window_frames + options.chunk_frames
    page = 2 * config.num_layers * frame_tokens * config.inner_dim * dtype_bytes
    kv = pages * page
    text = options.text_len * config.inner_dim * dtype_bytes
    return dict(
        pages=pages,
        page_bytes=page,
        kv=kv,
        decoder_cache=int(decoder_cache_bytes),
        text=text,
        total=kv + int(decoder_cache_bytes) + text,
    )


# --------------------------------------------------------------------------------------------------
# Goals


@dataclass(frozen=True)
class Goal:
    name: str
    met: bool
    detail: str

    def line(self) -> str:
        return f"goal: {self.name}: {'MET' if self.met else 'NOT MET'} ({self.detail})"


GOAL_FPS_ONE = 30.0
GOAL_P99_MS = 250.0
GOAL_FRAME = (480, 832)  # (height, width)


def goals(runs: Sequence[Mapping[str, Any]], frame_hw: tuple[int, int]) -> list[Goal]:
    """The issue's three goals on one GPU, from the runs (dicts with ``sessions``, and when measured
    ``fps_per_session``, ``fps_per_gpu``, ``chunk_p99_ms``):

    - one session >= 30 frames/s at 480x832 (only a 480x832 run can meet it);
    - frames/s per GPU at 4 sessions >= at 1 session;
    - chunk latency p99 <= 250 ms, for one session (a chunk of n sessions' batch takes about n
      times one session's at this size: the latency goal is the interactive case).
    A run that is missing or was not measured does not meet its goal."""
    by_n = {int(r["sessions"]): r for r in runs if r.get("fps_per_gpu")}
    one, four = by_n.get(1), by_n.get(4)
    out: list[Goal] = []
    size = f"{frame_hw[0]}x{frame_hw[1]}"
    name = f"one session >= {GOAL_FPS_ONE:g} fps at {GOAL_FRAME[0]}x{GOAL_FRAME[1]}"
    if one is None:
        out.append(Goal(name, False, "1 session not measured"))
    elif tuple(frame_hw) != GOAL_FRAME:
        out.append(Goal(name, False, f"{one['fps_per_session']:.1f} fps, but at {size}, not the goal's size"))
    else:
        fps = float(one["fps_per_session"])
        out.append(Goal(name, fps >= GOAL_FPS_ONE, f"{fps:.1f} fps"))
    name = "per-GPU fps at 4 sessions >= at 1"
    if one is None or four is None:
        out.append(Goal(name, False, f"{'1' if one is None else '4'} sessions not measured"))
    else:
        a, b = float(one["fps_per_gpu"]), float(four["fps_per_gpu"])
        out.append(Goal(name, b >= a, f"{b:.1f} at 4 vs {a:.1f} at 1: {b / a:.2f}x"))
    name = f"chunk p99 <= {GOAL_P99_MS:g} ms (1 session)"
    if one is None:
        out.append(Goal(name, False, "1 session not measured"))
    else:
        p99 = float(one["chunk_p99_ms"])
        out.append(Goal(name, p99 <= GOAL_P99_MS, f"p99 {p99:.1f} ms"))
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("no values")
    v = sorted(values)
    pos = (len(v) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)
