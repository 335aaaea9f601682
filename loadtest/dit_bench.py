"""The causal video DiT (Wan2.1-T2V-1.3B) served at real size on one GPU: frames/s, chunk latency,
memory per session and where the time goes, each beside its FLOP-count bound.

Run from the repository root (``PYTHONPATH=services:.``; ``loadtest/gpu_check.sh`` runs it as part 5)::

    python -m loadtest.dit_bench --device cuda                      # 1, 4 and 16 sessions at 480x832
    python -m loadtest.dit_bench --device cpu --quick               # the tiny model: the CPU smoke, seconds
    python -m loadtest.dit_bench --facts                            # real-size counts only (meta tensors, any machine)

The model: :class:`~worldserve.dynamics.models.causal_dit.CausalDiTWorldModel` at Wan2.1-T2V-1.3B's
configuration (30 layers, 12 heads x 128, ffn 8960, text_dim 4096, freq 256, 16 latent channels,
patch (1, 2, 2); 1.42e9 parameters) with random weights in bf16 and the real Wan2.1 VAE config
(random weights, float32 as the model serves it unless ``--vae-dtype bfloat16``), built from the
configs in code (nothing is downloaded). Serving options: :data:`REAL_OPTIONS` (480x832, chunks of 3
latent frames = 12 pixel frames, sink 3 + window 15 latent frames: 21 frames seen, as Self-Forcing's
32760-token cache, 4 denoising steps + the commit pass), a zero text embedding of 512 tokens.

Served the way the engine serves it: each session is prefilled from its window of latents (the
engine's cache miss: steps 0 .. 6, so that every timed chunk sees the sink and a full window), then
stepped round after round: ``step`` of every session in one batch, then ``decode_step`` of the
batch (the engine's runner does both, then ``resume_data``, whose cost is reported apart). One
warm round per session count, then timed rounds for ``--time-budget-s`` seconds. Reported per
session count: frames/s per session and per GPU (pixel frames), chunk latency p50/p99 (``step`` +
``decode_step`` of the batch: when each session of it has its frames), memory per session (KV pages
+ decoder cache + text context) and peak memory, the attention kernels' share of ``step`` (CUDA
events around every self-attention and cross-attention call) and the VAE's share of the chunk,
each beside the FLOP-count bound (:mod:`loadtest.dit_bench_common`: FLOPs of a chunk / the GPU's
dense bf16 peak, 989 TFLOP/s on an H200); which attention backend and kernel ran; the issue's goals
with MET / NOT MET.

Bounded in time: ``--time-budget-s`` of timed rounds per session count, and ``--deadline-s`` for the
whole run: a session count whose estimated cost would pass it is reported as skipped. A count
whose sessions do not fit in memory is reported with the bytes it needs, and the most sessions
that fit are measured in its place.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from loadtest.dit_bench_common import (
    QUICK_OPTIONS,
    REAL_OPTIONS,
    WAN21_T2V_1_3B,
    WAN21_T2V_1_3B_PARAMETERS,
    WAN21_VAE_CACHE_BYTES,
    WAN21_VAE_CHUNK_FLOPS,
    ChunkFlops,
    chunk_flops,
    goals,
    percentile,
    pixel_frames_per_chunk,
    session_bytes,
    steady_step,
    vae_facts,
    wan21_vae_config,
)
from loadtest.engine_bench_common import GIB, _is_oom, _sync, log, peak_flops

MIB = 1024**2

# --------------------------------------------------------------------------------------------------
# The model


@dataclass
class Setup:
    """The model under test and what the bench computed about it before running it."""

    model: Any
    label: str
    px_per_chunk: int  # pixel frames of a chunk
    flops: ChunkFlops  # of one steady chunk of one session
    bytes: dict[str, int]  # session_bytes(): expected state of one session
    vae: dict[str, int]  # vae_facts()
    window: int  # steps prefilled per session (0 .. window - 1)
    build_s: float


def configs(quick: bool):
    """(transformer config, VAE config, serve options) of the real-size or the --quick model."""
    from worldserve.dynamics.models.causal_dit.config import WanTransformerConfig

    if quick:
        from worldserve.dynamics.models.causal_dit.testing import tiny_config
        from worldserve.dynamics.models.causal_dit.vae import tiny_vae_config

        return tiny_config(actions=False), tiny_vae_config(z_dim=4), dict(QUICK_OPTIONS)
    return WanTransformerConfig(**WAN21_T2V_1_3B), wan21_vae_config(), dict(REAL_OPTIONS)


def build(device: str, quick: bool, vae_dtype: str, options: dict[str, Any] | None = None) -> Setup:
    """The model, random weights (seed 0), served dtype (bf16 on CUDA, float32 on a CPU); ``options``
    override the serve options."""
    import torch

    from worldserve.dynamics.models.causal_dit import CausalDiTOptions, CausalDiTWorldModel

    cfg, vcfg, opts = configs(quick)
    opts.update(options or {})
    t0 = time.perf_counter()
    # on the device from the start: ~1.4e9 parameters initialise in seconds there, minutes on a CPU
    ctx = torch.device(device) if device.startswith("cuda") else contextlib.nullcontext()
    with ctx:
        model = CausalDiTWorldModel.random(cfg, vcfg, seed=0, device=device, options=opts, name="wan2.1-t2v-1.3b")
    if vae_dtype != "float32":
        torch.nn.Module.to(model.vae.vae, dtype=getattr(torch, vae_dtype))
        getattr(model.vae, "_cache_nbytes", {}).clear()  # sizes found in the old dtype
    _sync(device)
    build_s = time.perf_counter() - t0
    o: CausalDiTOptions = model.options
    frame_tokens = model.info.extra["frame_tokens"]
    elem = torch.empty(0, dtype=model.dtype).element_size()
    vae_elem = torch.empty(0, dtype=model.vae.dtype).element_size()
    vf = vae_facts(model.vae.config, o, vae_elem)
    text = bool(cfg.text_dim)
    flops = chunk_flops(cfg, o, frame_tokens, text=text, vae_flops=vf["flops"])
    info = model.info
    label = (
        f"{'tiny random (--quick)' if quick else 'Wan2.1-T2V-1.3B random'}: {info.parameters / 1e9:.3f}e9 parameters "
        f"(transformer {sum(p.numel() for p in model.net.parameters()) / 1e9:.3f}e9, {cfg.num_layers} layers, "
        f"{cfg.num_attention_heads} heads x {cfg.attention_head_dim}, ffn {cfg.ffn_dim}), {info.frame_height}x"
        f"{info.frame_width} (HxW) frames ({frame_tokens} tokens per latent frame), chunk {o.chunk_frames} latent frames "
        f"= {pixel_frames_per_chunk(o, model.vae.temporal)} pixel frames, sink {o.sink_frames} + window "
        f"{o.window_frames} latent frames, {len(o.timesteps)} denoising steps + commit, text {o.text_len} x "
        f"{cfg.text_dim} zeros; transformer {str(model.dtype).removeprefix('torch.')}, VAE "
        f"{str(model.vae.dtype).removeprefix('torch.')}"
    )
    return Setup(
        model=model,
        label=label,
        px_per_chunk=pixel_frames_per_chunk(o, model.vae.temporal),
        flops=flops,
        bytes=session_bytes(cfg, o, frame_tokens, elem, vf["cache_bytes"]),
        vae=vf,
        window=steady_step(o),
        build_s=build_s,
    )


def real_size_facts(count_vae: bool = False, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The real-size model counted on meta tensors (no memory, any machine): parameters, FLOPs of a
    chunk, the bound on one H200, bytes of a session. The VAE's figures are the constants of
    :mod:`loadtest.dit_bench_common` unless ``count_vae`` (then counted: seconds of meta dispatch);
    ``options`` override the serve options."""
    import torch

    from worldserve.dynamics.models.causal_dit import CausalDiTOptions
    from worldserve.dynamics.models.causal_dit.network import CausalWanTransformer

    cfg, vcfg, opts = configs(quick=False)
    o = CausalDiTOptions.from_options({**opts, **(options or {})})
    from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan

    with torch.device("meta"):
        net = CausalWanTransformer(cfg)
        vae = AutoencoderKLWan(**vcfg)
    frame_tokens = (o.latent_height // cfg.patch_size[1]) * (o.latent_width // cfg.patch_size[2])
    if count_vae:
        vf = vae_facts(vcfg, o, 4)
    else:
        vf = dict(flops=WAN21_VAE_CHUNK_FLOPS, cache_bytes=WAN21_VAE_CACHE_BYTES)
    flops = chunk_flops(cfg, o, frame_tokens, text=True, vae_flops=vf["flops"])
    peak = 989e12
    px = pixel_frames_per_chunk(o, 4)
    return dict(
        parameters=sum(p.numel() for p in net.parameters()),
        text_embedder_parameters=sum(p.numel() for p in net.condition_embedder.text_embedder.parameters()),
        vae_parameters=sum(p.numel() for p in vae.parameters()),
        frame_tokens=frame_tokens,
        flops=flops.as_dict(),
        chunk_bound_ms_h200=1e3 * flops.total / peak,
        fps_bound_h200=px * peak / flops.total,
        session_bytes=session_bytes(cfg, o, frame_tokens, 2, vf["cache_bytes"]),
        session_bytes_vae_bf16=session_bytes(cfg, o, frame_tokens, 2, vf["cache_bytes"] // 2),
        options=o.to_dict(),
        steady_step=steady_step(o),
        vae_counted=count_vae,
    )


def print_facts(f: dict[str, Any]) -> None:
    fl, b = f["flops"], f["session_bytes"]
    ok = f["parameters"] == WAN21_T2V_1_3B_PARAMETERS
    log(
        f"real size (meta tensors): transformer {f['parameters']:,} parameters (Wan2.1-T2V-1.3B: "
        f"{WAN21_T2V_1_3B_PARAMETERS:,} {'OK' if ok else 'MISMATCH'}; text embedder {f['text_embedder_parameters']:,}), "
        f"VAE {f['vae_parameters']:,}; {f['frame_tokens']} tokens per latent frame"
    )
    log(
        f"real size: FLOPs of a steady chunk (sink {f['options']['sink_frames']} + window "
        f"{f['options']['window_frames']} + chunk {f['options']['chunk_frames']} latent frames of keys) "
        f"{fl['total'] / 1e12:.1f} TFLOP = transformer {fl['transformer'] / 1e12:.1f} "
        f"({fl['passes']} denoising passes + commit: linear {fl['linear'] / 1e12:.1f}, self-attention "
        f"{fl['self_attention'] / 1e12:.1f}, cross-attention {fl['cross_attention'] / 1e12:.2f}) + VAE decode "
        f"{fl['vae'] / 1e12:.1f}; H200 bound {f['chunk_bound_ms_h200']:.0f} ms per chunk = {f['fps_bound_h200']:.1f} "
        f"frames/s per GPU"
    )
    log(
        f"real size: session state {b['total'] / GIB:.2f} GiB = KV {b['pages']} pages x {b['page_bytes'] / MIB:.1f} MiB "
        f"= {b['kv'] / GIB:.2f} GiB + decoder cache {b['decoder_cache'] / GIB:.2f} GiB (float32; bf16 VAE: "
        f"{f['session_bytes_vae_bf16']['decoder_cache'] / GIB:.2f}) + text {b['text'] / MIB:.2f} MiB"
    )


# --------------------------------------------------------------------------------------------------
# Timing the attention calls


@dataclass
class AttentionTimes:
    """Milliseconds of the self-attention (paged ``attention_decode``) and cross-attention (SDPA)
    calls made while :func:`attention_timer` is on and ``active`` (the bench sets it around
    ``step``: the VAE's own SDPA calls in ``decode_step`` do not count)."""

    device: str
    active: bool = False
    pending: list[tuple[str, Any, Any]] = field(default_factory=list)  # CUDA: (kind, start, end) events
    ms: dict[str, float] = field(default_factory=lambda: {"self": 0.0, "cross": 0.0})
    calls: dict[str, int] = field(default_factory=lambda: {"self": 0, "cross": 0})

    def collect(self) -> dict[str, float]:
        """Add up the recorded intervals (after a device sync) and return the totals."""
        _sync(self.device)
        for kind, a, b in self.pending:
            self.ms[kind] += a.elapsed_time(b)
        self.pending.clear()
        return dict(self.ms)


@contextlib.contextmanager
def attention_timer(device: str) -> Iterator[AttentionTimes]:
    """Time every self-attention call of the causal DiT's inference (``attention_decode``: the
    Triton paged kernel on CUDA in bf16, SDPA on a CPU) and every cross-attention call (torch SDPA)
    with CUDA events on CUDA, the wall clock on a CPU. A call inside another (the CPU reference's
    SDPA inside ``attention_decode``) counts once, for the outer."""
    import torch
    import torch.nn.functional as F

    import worldserve.dynamics.models.causal_dit.inference as inference

    times = AttentionTimes(device)
    cuda = device.startswith("cuda")
    depth = [0]

    def timed(fn: Callable[..., Any], kind: str) -> Callable[..., Any]:
        def call(*a: Any, **kw: Any) -> Any:
            if depth[0] or not times.active:
                return fn(*a, **kw)
            depth[0] += 1
            try:
                times.calls[kind] += 1
                if cuda:
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    out = fn(*a, **kw)
                    end.record()
                    times.pending.append((kind, start, end))
                    return out
                t0 = time.perf_counter()
                out = fn(*a, **kw)
                times.ms[kind] += 1e3 * (time.perf_counter() - t0)
                return out
            finally:
                depth[0] -= 1

        return call

    saved = inference.attention_decode, F.scaled_dot_product_attention
    inference.attention_decode = timed(saved[0], "self")  # type: ignore[assignment]
    F.scaled_dot_product_attention = timed(saved[1], "cross")  # type: ignore[assignment]
    try:
        yield times
    finally:
        inference.attention_decode, F.scaled_dot_product_attention = saved  # type: ignore[assignment]


# --------------------------------------------------------------------------------------------------
# Sessions and rounds


def prefill(setup: Setup, i: int, device: str):
    """Session i's state from a window of random latents, steps 0 .. window - 1 (the engine's cache
    miss), its text a zero embedding of text_len tokens."""
    import torch

    model = setup.model
    o = model.options
    g = torch.Generator().manual_seed(10_000 + i)
    C, h, w = model.vae.latent_channels, o.latent_height, o.latent_width
    lat = [torch.randn(C, len(o.step_frames(s)), h, w, generator=g) for s in range(setup.window)]
    acts = torch.stack([model.null_action() for _ in lat])
    text = torch.zeros(o.text_len, model.net.config.text_dim) if model.net.config.text_dim else None
    st = model.prefill(lat, acts, first_step=0, text=text)
    _sync(device)
    return st


def decode(model, states: list, z, device: str) -> int:
    """``decode_step`` of the batch as the engine calls it (once); when that runs out of memory,
    the sessions not yet decoded in halves, and so on. Returns the number of calls it took."""
    import torch

    pending = [(0, len(states))]
    calls = 0
    while pending:
        a, b = pending.pop(0)
        try:
            model.decode_step(states[a:b], z[a:b])
            calls += 1
        except Exception as e:
            if not _is_oom(e) or b - a == 1:
                raise
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            m = (a + b) // 2
            pending[:0] = [(a, m), (m, b)]
    return calls


def one_round(
    setup: Setup, states: list, seeds: list[int], device: str, timer: AttentionTimes | None = None
) -> tuple[float, float, int]:
    """step + decode_step of every session in one batch: (step s, decode s, decode calls); the
    attention calls of the step go to ``timer``."""
    import torch

    model = setup.model
    acts = torch.stack([model.null_action() for _ in states])
    steps = [model.state_step(st) + 1 for st in states]
    _sync(device)
    t0 = time.perf_counter()
    if timer is not None:
        timer.active = True
    try:
        z = model.step(states, acts, seeds=seeds, steps=steps)
    finally:
        if timer is not None:
            timer.active = False
    _sync(device)
    t1 = time.perf_counter()
    calls = decode(model, states, z, device)
    _sync(device)
    return t1 - t0, time.perf_counter() - t1, calls


def measure(setup: Setup, states: list, budget_s: float, max_rounds: int, device: str, deadline: float) -> dict:
    """One warm round, then timed rounds of ``states`` for ``budget_s`` (at least one)."""
    import torch

    n = len(states)
    seeds = [1000 + i for i in range(n)]
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    s, d, _ = one_round(setup, states, seeds, device)
    res: dict[str, Any] = dict(sessions=n, first_round_ms=1e3 * (s + d))
    from worldserve.dynamics.attention.backend import decode_counts

    before = decode_counts()
    chunk_ms, step_ms, dec_ms, splits = [], [], [], []
    t_start = time.perf_counter()
    with attention_timer(device) as at:
        while not chunk_ms or (
            time.perf_counter() - t_start < budget_s and len(chunk_ms) < max_rounds and time.perf_counter() < deadline
        ):
            s, d, calls = one_round(setup, states, seeds, device, at)
            step_ms.append(1e3 * s)
            dec_ms.append(1e3 * d)
            chunk_ms.append(1e3 * (s + d))
            splits.append(calls)
        attn = at.collect()
        attn_calls = dict(at.calls)
    after = decode_counts()
    rounds = len(chunk_ms)
    elapsed_s = sum(chunk_ms) / 1e3
    fl, px = setup.flops, setup.px_per_chunk
    peak = setup_peak(device)
    fps_gpu = n * px * rounds / elapsed_s
    step_mean, dec_mean = sum(step_ms) / rounds, sum(dec_ms) / rounds
    res.update(
        rounds=rounds,
        elapsed_s=elapsed_s,
        chunk_p50_ms=percentile(chunk_ms, 50),
        chunk_p99_ms=percentile(chunk_ms, 99),
        chunk_mean_ms=elapsed_s * 1e3 / rounds,
        chunk_bound_ms=1e3 * n * fl.total / peak,
        step_mean_ms=step_mean,
        step_bound_ms=1e3 * n * fl.transformer.total / peak,
        decode_mean_ms=dec_mean,
        decode_bound_ms=1e3 * n * fl.vae / peak,
        decode_calls_max=max(splits),
        steps_per_s=n * rounds / elapsed_s,
        fps_per_gpu=fps_gpu,
        fps_per_gpu_bound=px * peak / fl.total,
        fps_per_session=fps_gpu / n,
        fps_per_session_bound=px * peak / fl.total / n,
        self_attention_ms=attn["self"] / rounds,
        cross_attention_ms=attn["cross"] / rounds,
        self_attention_bound_ms=1e3 * n * fl.transformer.self_attention / peak,
        cross_attention_bound_ms=1e3 * n * fl.transformer.cross_attention / peak,
        attention_share_of_step=(attn["self"] + attn["cross"]) / rounds / step_mean,
        attention_flop_share_of_step=fl.attention / fl.transformer.total,
        attention_calls_per_round={k: v // rounds for k, v in attn_calls.items()},
        vae_share_of_chunk=dec_mean / (step_mean + dec_mean),
        vae_flop_share_of_chunk=fl.vae / fl.total,
        kernel_calls={
            f"{b}/{k}": after[(b, k)] - before.get((b, k), 0)
            for (b, k) in after
            if after[(b, k)] - before.get((b, k), 0)
        },
    )
    if device.startswith("cuda"):
        res["peak_mem_gib"] = torch.cuda.max_memory_allocated() / GIB
    return res


_PEAK: dict[str, float] = {}


def setup_peak(device: str) -> float:
    if device not in _PEAK:
        _PEAK[device] = peak_flops(device)[0]
    return _PEAK[device]


def measured_session_bytes(model, st) -> dict[str, int]:
    """Bytes one live state holds: its pages, its decode cache, its text context."""
    kv = len(st.pages) * st.page_nbytes
    dec = int(st.vae.nbytes) if st.vae is not None else 0
    text = st.text.numel() * st.text.element_size() if st.text is not None else 0
    return dict(kv=kv, decoder_cache=dec, text=text, total=kv + dec + text, state_nbytes=int(model.state_nbytes(st)))


def resume_probe(model, st, device: str) -> dict[str, float]:
    """What the engine stores per step of a session (``resume_data``): bytes and time."""
    _sync(device)
    t0 = time.perf_counter()
    data = model.resume_data(st) or {}  # None: the model keeps none (option exact_resume: false)
    ms = 1e3 * (time.perf_counter() - t0)
    nb = {k: v.numel() * v.element_size() for k, v in data.items()}
    kv = sum(v for k, v in nb.items() if k in ("kv", "sink"))
    vae = sum(v for k, v in nb.items() if k.startswith("vae."))
    return dict(ms=ms, bytes=sum(nb.values()), kv_bytes=kv, vae_bytes=vae)


# --------------------------------------------------------------------------------------------------
# The report


def _row(r: dict) -> str:
    n = r["sessions"]
    head = f"  {n:3d} sessions"
    if r.get("substitute_for"):
        head += f" (for {r['substitute_for']})"
    if "skipped" in r:
        return f"{head}  SKIPPED: {r['skipped']}"
    if not r.get("fits", True):
        return f"{head}  {r['reason']}"
    if "error" in r:
        return f"{head}  FAILED: {r['error']}"
    pct = lambda a, b: 100.0 * a / b if b else float("nan")
    return (
        f"{head}  frames/s per session {r['fps_per_session']:7.2f} (bound {r['fps_per_session_bound']:7.2f})"
        f"  per GPU {r['fps_per_gpu']:7.2f} (bound {r['fps_per_gpu_bound']:7.2f}, {pct(r['fps_per_gpu'], r['fps_per_gpu_bound']):4.1f}%)"
        f"  steps/s {r['steps_per_s']:7.2f}"
        f"  chunk p50 {r['chunk_p50_ms']:8.1f} ms p99 {r['chunk_p99_ms']:8.1f} ms (bound {r['chunk_bound_ms']:8.1f})"
        f"  step {r['step_mean_ms']:.1f} ms (bound {r['step_bound_ms']:.1f})"
        f"  attention {100 * r['attention_share_of_step']:4.1f}% of step (self {r['self_attention_ms']:.1f} ms, bound "
        f"{r['self_attention_bound_ms']:.1f}; cross {r['cross_attention_ms']:.1f} ms, bound {r['cross_attention_bound_ms']:.1f};"
        f" FLOP share {100 * r['attention_flop_share_of_step']:.1f}%)"
        f"  VAE {100 * r['vae_share_of_chunk']:4.1f}% of chunk ({r['decode_mean_ms']:.1f} ms, bound {r['decode_bound_ms']:.1f};"
        f" FLOP share {100 * r['vae_flop_share_of_chunk']:.1f}%)"
        + (f" in {r['decode_calls_max']} decode calls" if r["decode_calls_max"] > 1 else "")
        + f"  rounds {r['rounds']} (+1 warm: {r['first_round_ms']:.0f} ms)"
        + (f"  peak mem {r['peak_mem_gib']:.1f} GiB" if "peak_mem_gib" in r else "")
    )


def _bytes_line(what: str, b: dict[str, int]) -> str:
    return (
        f"{what}: {b['total'] / MIB:.2f} MiB = KV pages {b['kv'] / MIB:.2f} MiB + decoder cache "
        f"{b['decoder_cache'] / MIB:.2f} MiB + text {b['text'] / MIB:.3f} MiB"
    )


def sdpa_backend_name(device: str, heads: int, head_dim: int, n: int, L: int, dtype) -> str:
    """The SDPA backend torch picks for the cross-attention's shapes (torch's own choice function)."""
    import torch

    try:
        from torch.nn.attention import SDPBackend

        q = torch.empty(1, heads, n, head_dim, device=device, dtype=dtype)
        k = torch.empty(1, heads, L, head_dim, device=device, dtype=dtype)
        return SDPBackend(torch._fused_sdp_choice(q, k, k)).name
    except Exception as e:  # a private function: report, never fail
        return f"unknown ({type(e).__name__})"


def triton_tuning() -> str:
    """The decode kernel's autotuned configs (CUDA), or '-'."""
    try:
        from worldserve.dynamics.attention.kernels import flash_decode

        out = []
        for (d, pro), tuner in flash_decode._AUTOTUNED.items():
            for key, cfg in getattr(tuner, "cache", {}).items():
                out.append(f"d{d}{'+prologue' if pro else ''} key={key}: {cfg}")
        return "; ".join(out) or "-"
    except Exception:
        return "-"


# --------------------------------------------------------------------------------------------------
# The command


def bench(args, device: str) -> tuple[bool, dict]:
    import torch

    facts = real_size_facts()
    print_facts(facts)
    setup = build(device, args.quick, args.vae_dtype, args.option)
    model = setup.model
    rt, info = model.runtime, model.info
    peak, peak_src = peak_flops(device)
    _PEAK[device] = peak
    log(f"model: {setup.label}; built in {setup.build_s:.1f} s")
    log(
        f"runtime: device={rt.device} dtype={rt.dtype} attention_backend={rt.attention_backend} "
        f"decode_kernel={rt.decode_kernel or '-'}"
    )
    fl = setup.flops
    log(
        f"FLOPs of a steady chunk (one session, {setup.px_per_chunk} pixel frames): {fl.total / 1e12:.4g} TFLOP = "
        f"transformer {fl.transformer.total / 1e12:.4g} ({fl.passes} passes + commit; attention "
        f"{fl.attention / 1e12:.4g}) + VAE {fl.vae / 1e12:.4g}"
    )
    log(
        f"peak: {peak_src}; bound = {1e3 * fl.total / peak:.2f} ms per chunk, {setup.px_per_chunk * peak / fl.total:.1f} "
        "frames/s per GPU"
    )
    if not args.quick and (setup.vae["flops"], setup.vae["cache_bytes"] * 4 // model.vae.dtype.itemsize) != (
        WAN21_VAE_CHUNK_FLOPS,
        WAN21_VAE_CACHE_BYTES,
    ):
        log(f"WARNING: the served VAE's counts {setup.vae} differ from Wan2.1's constants")
    b = setup.bytes
    log(_bytes_line("session state (expected)", b) + f"; KV = {b['pages']} pages x {b['page_bytes'] / MIB:.2f} MiB")

    sessions = sorted(set(args.sessions))
    per_session = b["total"]
    n_pool = max(sessions)
    if device.startswith("cuda"):
        free, total = torch.cuda.mem_get_info()
        reserve = args.reserve_gib * GIB if args.reserve_gib is not None else max(16 * GIB, 0.1 * total)
        n_pool = min(n_pool, int((free - reserve) // per_session))
        log(
            f"memory: {free / GIB:.1f} GiB free of {total / GIB:.1f} after the model; {reserve / GIB:.1f} GiB kept for "
            f"activations -> {n_pool} sessions of {per_session / GIB:.2f} GiB fit"
        )
        if n_pool < 1:
            return False, dict(error="not one session fits", session_bytes=b)
    if model.session_nbytes != per_session:
        log(f"WARNING: the model's session_nbytes {model.session_nbytes} B differs from the expected {per_session} B")
    model.configure_state_pool(n_pool * model.session_nbytes)  # the pages of n_pool whole sessions

    t_begin = time.perf_counter()
    deadline = t_begin + args.deadline_s
    states: list = []
    prefill_s: list[float] = []
    runs: list[dict] = []
    resume: dict | None = None
    measured_bytes: dict | None = None
    per_chunk_s: float | None = None  # one session's share of a round, from the last count
    ok = True
    done: set[int] = set()
    queue: list[tuple[int, int | None]] = [(n, None) for n in sessions]
    while queue:
        n, sub = queue.pop(0)
        if n > n_pool:
            need = n * per_session
            runs.append(
                dict(sessions=n, fits=False, reason=f"does not fit (needs {need / GIB:.1f} GiB of session state)")
            )
            log(_row(runs[-1]))
            if n_pool not in done and n_pool > max(done, default=0):
                queue.insert(0, (n_pool, n))
            continue
        if n in done:
            continue
        if per_chunk_s is not None:
            # the first prefill compiles and autotunes the kernels: the later ones say what one costs
            mean_prefill = sum(prefill_s[1:]) / (len(prefill_s) - 1) if len(prefill_s) > 1 else prefill_s[0]
            # new sessions' prefill + the warm round + the timed rounds (at least one)
            est = (n - len(states)) * mean_prefill + n * per_chunk_s + max(n * per_chunk_s, args.time_budget_s)
            left = deadline - time.perf_counter()
            if est > left:
                runs.append(
                    dict(sessions=n, skipped=f"would pass the deadline: ~{est:.0f} s needed, {left:.0f} s left")
                    | ({"substitute_for": sub} if sub else {})
                )
                log(_row(runs[-1]))
                continue
        try:
            # a second session with the first (it idles): its prefill, free of compilation, prices the next ones
            while len(states) < max(n, min(2, n_pool) if max(sessions) > 1 else n):
                t0 = time.perf_counter()
                states.append(prefill(setup, len(states), device))
                prefill_s.append(time.perf_counter() - t0)
            r = measure(setup, states[:n], args.time_budget_s, args.max_rounds, device, deadline)
            if sub:
                r["substitute_for"] = sub
            r["prefill_s"] = list(prefill_s)
            per_chunk_s = r["chunk_mean_ms"] / 1e3 / n
            if measured_bytes is None:
                measured_bytes = measured_session_bytes(model, states[0])
            if resume is None:
                resume = resume_probe(model, states[0], device)
        except Exception as e:
            if _is_oom(e):
                r = dict(sessions=n, fits=False, reason=f"out of memory while running: {str(e).splitlines()[0][:160]}")
            else:
                r = dict(sessions=n, error=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
                traceback.print_exc(limit=8)
                ok = False
            runs.append(r)
            log(_row(r))
            break  # the states may be half advanced: no larger count can be trusted
        done.add(n)
        runs.append(r)
        log(_row(r))

    if prefill_s:
        later = prefill_s[1:] or prefill_s
        log(
            f"prefill (a cache miss: steps 0..{setup.window - 1} from their latents): the first session "
            f"{prefill_s[0]:.2f} s (kernel compilation and autotuning included), the next ones "
            f"{sum(later) / len(later):.2f} s each"
        )
    if measured_bytes is not None:
        same = all(measured_bytes[k] == b[k] for k in ("kv", "decoder_cache", "text"))
        log(
            _bytes_line("session state (measured on a live state)", measured_bytes)
            + f"; model.state_nbytes {measured_bytes['state_nbytes'] / MIB:.2f} MiB; "
            + ("equal to the expected" if same else "DIFFERS from the expected")
        )
        ok &= same and measured_bytes["state_nbytes"] == measured_bytes["total"]
    if resume is not None:
        log(
            f"resume data the engine stores per step and session: {resume['bytes'] / MIB:.1f} MiB (KV "
            f"{resume['kv_bytes'] / MIB:.1f} MiB, decoder cache {resume['vae_bytes'] / MIB:.1f} MiB), "
            f"copied to the host in {resume['ms']:.1f} ms (not in the chunk latency above; options decode_cache "
            f"{model.options.decode_cache}, exact_resume {model.options.exact_resume})"
        )
    calls: dict[str, int] = {}
    for r in runs:
        for k, v in (r.get("kernel_calls") or {}).items():
            calls[k] = calls.get(k, 0) + v
    cfg = model.net.config
    sdpa = sdpa_backend_name(
        str(model.device), cfg.num_attention_heads, cfg.attention_head_dim,
        model.options.chunk_frames * info.extra["frame_tokens"], model.options.text_len, model.dtype,
    )  # fmt: skip
    log(
        f"attention: self-attention calls by backend/kernel {calls or '(none)'}; last step "
        f"{model.last_step_attention}; cross-attention: torch SDPA ({sdpa})"
    )
    triton_calls = sum(v for k, v in calls.items() if k.startswith("triton/"))
    if device.startswith("cuda"):
        log(f"Triton decode kernel autotune: {triton_tuning()}")
        sdpa_calls = sum(v for k, v in calls.items() if not k.startswith("triton/"))
        log(
            f"Triton attention kernel ran: {'YES' if triton_calls else 'NO'} ({triton_calls} calls"
            + (f"; WARNING: {sdpa_calls} self-attention calls ran on SDPA" if sdpa_calls else "")
            + ")"
        )
        ok &= triton_calls > 0 and not sdpa_calls
    else:
        log(
            f"Triton attention kernel ran: {'yes' if triton_calls else 'no'} ({triton_calls} calls; "
            + ("the interpreter, forced)" if args.attention == "triton" else "expected on a CPU)")
        )
        ok &= triton_calls > 0 or args.attention != "triton"
    measured = [r for r in runs if r.get("fps_per_gpu")]
    frame_hw = (info.frame_height, info.frame_width)
    verdicts = goals(measured, frame_hw)
    for g in verdicts:
        log(g.line())
    summary = dict(
        model=setup.label,
        device=device,
        quick=args.quick,
        runtime=dict(
            device=rt.device, dtype=rt.dtype, attention_backend=rt.attention_backend, decode_kernel=rt.decode_kernel
        ),
        vae_dtype=str(model.vae.dtype).removeprefix("torch."),
        options=model.options.to_dict(),
        frame_size=[info.frame_height, info.frame_width],
        pixel_frames_per_chunk=setup.px_per_chunk,
        parameters=info.parameters,
        flops_per_chunk=fl.as_dict(),
        peak_flops=peak,
        peak_source=peak_src,
        session_bytes=b,
        session_bytes_measured=measured_bytes,
        resume_data=resume,
        prefill_window_steps=setup.window,
        prefill_s=prefill_s,
        sessions_that_fit=n_pool,
        runs=runs,
        kernel_calls=calls,
        cross_attention_sdpa=sdpa,
        goals=[dict(name=g.name, met=g.met, detail=g.detail) for g in verdicts],
        real_size=facts,
    )
    return ok, summary


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m loadtest.dit_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when present")
    ap.add_argument("--quick", action="store_true", help="the tiny model (the CPU smoke test): seconds")
    ap.add_argument("--facts", action="store_true", help="only the real-size counts (meta tensors; any machine)")
    ap.add_argument("--sessions", nargs="+", type=int, default=None, help="concurrent sessions (1 4 16; --quick: 1 4)")
    ap.add_argument("--time-budget-s", type=float, default=None, help="seconds of timed rounds per session count")
    ap.add_argument("--deadline-s", type=float, default=None, help="seconds for all the session counts together")
    ap.add_argument("--max-rounds", type=int, default=500, help="most timed rounds per session count")
    ap.add_argument(
        "--vae-dtype", choices=["float32", "bfloat16"], default="float32", help="the VAE's (served: float32)"
    )
    ap.add_argument(
        "--attention",
        choices=["auto", "triton", "sdpa"],
        default="auto",
        help="attention backend (auto: the Triton kernels on CUDA in bf16; triton on a CPU: the interpreter)",
    )
    ap.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="override a serve option, e.g. window_frames=6 or decode_cache='\"rebuild\"' (repeatable)",
    )
    ap.add_argument("--reserve-gib", type=float, default=None, help="GPU memory kept from session state (default 16)")
    ap.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (default: torch's; 1 with --quick on CPU)"
    )
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args(argv)
    opts = {}
    for item in a.option:
        name, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--option takes NAME=VALUE, got {item!r}")
        try:
            opts[name] = json.loads(value)
        except ValueError:
            opts[name] = value  # a bare word: a string
    a.option = opts
    if a.sessions is None:
        a.sessions = [1, 4] if a.quick else [1, 4, 16]
    if any(n < 1 for n in a.sessions):
        ap.error(f"--sessions must be positive, got {a.sessions}")
    if a.time_budget_s is None:
        a.time_budget_s = 0.5 if a.quick else 12.0
    if a.deadline_s is None:
        a.deadline_s = 30.0 if a.quick else 140.0
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import torch
    except ImportError:
        log("dit_bench: torch is not installed; nothing to do (SKIPPED)")
        return 0
    t0 = time.perf_counter()
    try:
        if args.facts:
            facts = real_size_facts(count_vae=True, options=args.option)
            print_facts(facts)
            summary: dict = dict(real_size=facts)
            ok = facts["parameters"] == WAN21_T2V_1_3B_PARAMETERS
        else:
            device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
            if device == "cuda" and not torch.cuda.is_available():
                log("dit_bench: --device cuda but no CUDA device is available")
                return 2
            if device == "cpu" and not args.quick:
                log("dit_bench: the real size needs a GPU (~10 GiB per session); on a CPU run --quick or --facts")
                return 2
            threads = args.threads or (1 if args.quick and device == "cpu" else 0)
            if threads:  # a tiny model on a busy CPU: extra threads only contend (restored at the end)
                saved_threads = torch.get_num_threads()
                torch.set_num_threads(threads)
            log(
                f"dit_bench: device={device} torch={torch.__version__} python={sys.version.split()[0]}"
                + (
                    f" gpu={torch.cuda.get_device_name()}"
                    if device == "cuda"
                    else f" threads={torch.get_num_threads()}"
                )
            )
            if device == "cpu" and args.attention == "triton":
                os.environ["TRITON_INTERPRET"] = "1"  # before the kernel modules are first imported
            from worldserve.dynamics.attention.backend import use_backend

            try:
                with use_backend(args.attention):
                    ok, summary = bench(args, device)
            finally:
                if threads:
                    torch.set_num_threads(saved_threads)
    except ImportError as e:
        log(f"dit_bench: SKIPPED: cannot import what it needs ({e})")
        return 0
    log(f"dit bench: {'PASS' if ok else 'FAIL'} ({time.perf_counter() - t0:.1f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2, default=str)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
