"""Ahead-of-time compile gate: every constexpr variant of every kernel, for sm_90 and sm_80, on CPU.

The interpreter (``TRITON_INTERPRET=1``) runs kernels through numpy and accepts code that the
real compiler rejects (bad layouts, dot shapes, type mixes, ...). This module compiles the real
thing down to cubin with the ptxas that ships in the triton wheel -- no GPU needed -- for exactly
the arguments the launchers would pass: each variant's kernel arguments come from the
launchers' own ``*_launch_args`` on ``meta`` tensors, and each argument is specialized the way
the runtime would (``native_specialize_impl``: 16-divisible ints and pointers get
``tt.divisibility``, ints equal to 1 become constexprs).

Variants (the constexprs and the argument types that change the binary): dtype (fp16, bf16) x
head dim (32, 64, 128) x prologue (none, QK RMSNorm + RoPE) x layout (padded, varlen) for the
prefill kernel, dtype x head dim x prologue x layout (padded cache, paged cache through a block
table) for the decode kernel, each with its default launch config; every other autotune
candidate once (bf16, each layout); the prefill kernel's test-only stats hook once; the paged decode
kernel once more per autotune candidate at the causal video DiT's real size (:data:`SHAPES`). The mask
kind, the frame size, decode's ``write_kv`` and ``page_size`` are runtime arguments that are never
specialized, so one binary serves all of them. fp32 and ``UPCAST`` are interpreter-only.
The paged variants use the model's token-major pool layout (``PagePool``: (P, F, H, D) storage
viewed as (P, H, F, D)).

Integer arguments that are not marked ``do_not_specialize`` are specialized by value class (1, a
multiple of 16, anything else), so the same constexprs still make a different binary when, e.g.,
the token count is not a multiple of 16. The gate's shape (:data:`SHAPES` ``"gate"``: 16 heads,
frames of 256 tokens, 32-page block tables) has every such argument a multiple of 16; the
``"wan"`` shapes are what the causal DiT (``models/causal_dit``, Wan2.1-T2V-1.3B at 480x832)
launches: 12 heads of 128, chunks of Tn = 4680 query tokens (3 latent frames of 1560) against up to
18 cached frames in pages of 1560 rows through 21-page block tables, bf16, no prologue (its RoPE
pairs are interleaved, not the kernel's halves), and the one-page table of a session's first
commit (a 1560-token frame, nothing cached: the table's row stride is 1, a constexpr).

Run ``python -m worldserve.dynamics.attention.kernels.aot --arch 90 80`` (must not run with
``TRITON_INTERPRET=1``: then the kernels are interpreted functions and cannot be compiled).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

# Shared memory per block (opt-in maximum) by compute capability; a config above it cannot launch.
SMEM_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}

DTYPES = ("fp16", "bf16")
HEAD_DIMS = (32, 64, 128)


@dataclass(frozen=True)
class Shape:
    """The launch shape a variant is compiled for (only the value classes of its ints matter)."""

    batch: int
    heads: int
    tokens: int  # Tn: new tokens (decode) / tokens per frame (prefill)
    page: int  # rows per page (paged decode) = frame tokens
    pages: int  # block table width (paged) / cache frames (padded)
    cached: int  # max_cache_len: cached rows before the new tokens


SHAPES = {
    "gate": Shape(batch=2, heads=16, tokens=256, page=256, pages=32, cached=31 * 256),
    # the causal DiT at Wan2.1-T2V-1.3B size: a steady chunk (sink 3 + window 15 cached frames)
    "wan": Shape(batch=1, heads=12, tokens=3 * 1560, page=1560, pages=21, cached=18 * 1560),
    # ... and a session's first commit (frame 0 alone, a one-page block table)
    "wan-first": Shape(batch=1, heads=12, tokens=1560, page=1560, pages=1, cached=0),
}


@dataclass
class Variant:
    kernel: str  # "prefill" | "decode"
    dtype: str
    head_dim: int
    prologue: bool
    varlen: bool = False
    config: tuple[int, int, int, int] | None = None  # (block_m, block_n, warps, stages); None: default
    stats: bool = False  # prefill's test-only WRITE_STATS hook
    paged: bool = False  # decode only: KV cache in pages of a pool, through a block table
    shape: str = "gate"  # a key of SHAPES

    @property
    def name(self) -> str:
        cfg = "default" if self.config is None else "x".join(map(str, self.config))
        pro = "norm+rope" if self.prologue else "plain"
        lay = "varlen" if self.varlen else "paged" if self.paged else "padded"
        name = f"{self.kernel}/{self.dtype}/d{self.head_dim}/{pro}/{lay}/{cfg}" + ("/stats" if self.stats else "")
        return name if self.shape == "gate" else f"{name}/{self.shape}"


def all_variants() -> list[Variant]:
    from ._common import cuda_configs

    out: list[Variant] = []
    for dtype in DTYPES:
        for d in HEAD_DIMS:
            for pro in (False, True):
                for varlen in (False, True):
                    out.append(Variant("prefill", dtype, d, pro, varlen))
                for paged in (False, True):
                    out.append(Variant("decode", dtype, d, pro, paged=paged))
    # The other autotune candidates (the first one is the default, compiled above), bf16.
    for d in HEAD_DIMS:
        for pro in (False, True):
            for c in cuda_configs(d, pro)[1:]:
                cfg = (c.block_m, c.block_n, c.num_warps, c.num_stages)
                out.append(Variant("prefill", "bf16", d, pro, False, cfg))
                for paged in (False, True):
                    out.append(Variant("decode", "bf16", d, pro, False, cfg, paged=paged))
    out.append(Variant("prefill", "bf16", 64, False, False, None, stats=True))
    # The causal DiT's real-size launches: paged decode, bf16, head dim 128, no prologue, each
    # autotune candidate (the autotuner compiles them all at every new key).
    for shape in ("wan", "wan-first"):
        for i, c in enumerate(cuda_configs(128, False)):
            cfg = None if i == 0 else (c.block_m, c.block_n, c.num_warps, c.num_stages)
            out.append(Variant("decode", "bf16", 128, False, False, cfg, paged=True, shape=shape))
    return out


def _launch_kwargs(v: Variant):
    """(jit kernel, kwargs, num_warps, num_stages) exactly as the launcher builds them."""
    import torch

    from ._common import TileConfig, cuda_configs
    from .flash_decode import _flash_decode_kernel, decode_launch_args
    from .flash_prefill import _flash_fwd_kernel, prefill_launch_args

    dt = {"fp16": torch.float16, "bf16": torch.bfloat16}[v.dtype]
    cfg = TileConfig(*v.config) if v.config else cuda_configs(v.head_dim, v.prologue)[0]
    meta = dict(device="meta")
    sh = SHAPES[v.shape]
    B, H, F, D, frames = sh.batch, sh.heads, sh.tokens, v.head_dim, 4
    group = F  # frame-causal; the mask group is never specialized, any kind gives the same binary
    T = frames * F

    def pro(rows_shape):
        if not v.prologue:
            return {}
        w = torch.empty(D, dtype=dt, **meta)
        # fp32 angle tables: the largest (shared-memory-wise) the launcher accepts
        tab = torch.empty(*rows_shape, D // 2, dtype=torch.float32, **meta)
        return dict(q_norm_weight=w, k_norm_weight=w, rope_cos=tab, rope_sin=tab)

    if v.kernel == "prefill":
        if v.varlen:
            q = torch.empty(B * T, H, D, dtype=dt, **meta)
            cu = torch.empty(B + 1, dtype=torch.int32, **meta)
            _, kw = prefill_launch_args(
                q,
                q,
                q,
                torch.empty_like(q),
                cu_seqlens_q=cu,
                cu_seqlens_k=cu,
                max_seqlen_q=T,
                max_seqlen_k=T,
                group=group,
                config=cfg,
                **pro((B * T,)),
            )
        else:
            # (B, T, H, D) storage viewed as (B, H, T, D): the model's strided layout
            q = torch.empty(B, T, H, D, dtype=dt, **meta).transpose(1, 2)
            stats = torch.empty(triton_cdiv(T, cfg.block_m) * B * H, 2, dtype=torch.int32, **meta) if v.stats else None
            _, kw = prefill_launch_args(
                q,
                q,
                q,
                torch.empty(B, H, T, D, dtype=dt, **meta),
                group=group,
                q_start=0,
                config=cfg,
                stats=stats,
                **pro((B, T)),
            )
        kernel = _flash_fwd_kernel
    else:
        # the model's layout: (B, Tn, H, D) projections viewed as (B, H, Tn, D)
        q = torch.empty(B, F, H, D, dtype=dt, **meta).transpose(1, 2)
        lens = torch.empty(B, dtype=torch.int32, **meta)
        if v.paged:
            # the model's pool: (P, page, H, D) token-major storage viewed as (P, H, page, D)
            cache = torch.empty(64, sh.page, H, D, dtype=dt, **meta).transpose(1, 2)
            paged = dict(block_table=torch.empty(B, sh.pages, dtype=torch.int32, **meta), page_size=sh.page)
        else:
            cache = torch.empty(B, H, sh.pages * F, D, dtype=dt, **meta)
            paged = {}
        _, kw = decode_launch_args(
            q,
            q,
            q,
            cache,
            cache,
            lens,
            torch.empty(B, H, F, D, dtype=dt, **meta),
            group=group,
            max_cache_len=sh.cached,
            config=cfg,
            **paged,
            **pro((B, F)),
        )
        kernel = _flash_decode_kernel
    kw.pop("num_warps")
    kw.pop("num_stages")
    kw["UPCAST"] = False  # interpreter-only
    return kernel, kw, cfg.num_warps, cfg.num_stages


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def compile_variant(v: Variant, arch: int) -> dict:
    """Compile one variant for ``sm_<arch>``; returns a result record (never raises)."""
    import triton
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.runtime.jit import native_specialize_impl

    t0 = time.time()
    try:
        kernel, kw, num_warps, num_stages = _launch_kwargs(v)
        if type(kernel).__name__ != "JITFunction":
            raise RuntimeError("kernels are interpreted (TRITON_INTERPRET=1); run the gate without it")
        signature, constexprs, attrs = {}, {}, {}
        for p in kernel.params:
            val = kw[p.name]
            if p.is_constexpr:
                signature[p.name] = "constexpr"
                constexprs[p.name] = val
                continue
            ty, spec = native_specialize_impl(
                BaseBackend, val, False, not p.do_not_specialize, not p.do_not_specialize_on_alignment
            )
            signature[p.name] = ty
            if ty == "constexpr":  # None, or an int equal to 1
                constexprs[p.name] = spec
            elif spec and "D" in spec:
                attrs[(p.num,)] = BaseBackend.parse_attr(spec)
        src = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
        ck = triton.compile(
            src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps, "num_stages": num_stages}
        )
        shared = int(ck.metadata.shared)
        fits = shared <= SMEM_LIMIT.get(arch, 0)
        # A default-config variant that does not fit could never launch; an autotune candidate
        # that does not fit is skipped by the autotuner (reported, not a failure).
        ok = fits or v.config is not None
        return dict(
            name=v.name,
            arch=arch,
            ok=ok,
            shared=shared,
            fits=fits,
            seconds=time.time() - t0,
            error=None if ok else f"needs {shared} B shared memory > {SMEM_LIMIT.get(arch)}",
        )
    except Exception as e:
        msg = f"{type(e).__name__}: {e}"
        return dict(
            name=v.name, arch=arch, ok=False, shared=None, fits=False, seconds=time.time() - t0, error=msg[-4000:]
        )


def _work(item):
    v, arch = item
    return compile_variant(v, arch)


def run_gate(archs=(90, 80), jobs: int | None = None, only: str | None = None, verbose: bool = False) -> list[dict]:
    variants = [v for v in all_variants() if only is None or only in v.name]
    items = [(v, a) for a in archs for v in variants]
    jobs = jobs or max(1, min(len(items), os.cpu_count() or 1))
    if jobs == 1:
        results = [_work(it) for it in items]
    else:
        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as ex:
            results = list(ex.map(_work, items, chunksize=4))
    if verbose:
        for r in results:
            mark = "ok " if r["ok"] else "FAIL"
            fit = "" if r["fits"] else " (does not fit in shared memory: autotune skips it)"
            print(f"{mark} sm_{r['arch']} {r['name']} smem={r['shared']} {r['seconds']:.1f}s{fit}")
            if r["error"]:
                print("     ", r["error"].splitlines()[-1][:400])
    return results


def summarize(results: list[dict]) -> str:
    lines = []
    for arch in sorted({r["arch"] for r in results}, reverse=True):
        rs = [r for r in results if r["arch"] == arch]
        ok = sum(r["ok"] for r in rs)
        nofit = sum(1 for r in rs if r["ok"] and not r["fits"])
        lines.append(
            f"sm_{arch}: {ok}/{len(rs)} variants compiled"
            + (f" ({nofit} autotune candidates exceed shared memory)" if nofit else "")
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[90, 80])
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--only", default=None, help="substring filter on variant names")
    ap.add_argument("--list", action="store_true", help="list variants and exit")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)
    if a.list:
        for v in all_variants():
            if a.only is None or a.only in v.name:
                print(v.name)
        return 0
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("the AOT gate must run without TRITON_INTERPRET", file=sys.stderr)
        return 2
    t0 = time.time()
    results = run_gate(tuple(a.arch), a.jobs, a.only, a.verbose)
    print(summarize(results))
    bad = [r for r in results if not r["ok"]]
    for r in bad[:20]:
        print(f"FAILED sm_{r['arch']} {r['name']}:\n{r['error']}", file=sys.stderr)
    print(f"{len(results)} compiles in {time.time() - t0:.0f}s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
