"""Ahead-of-time compile gate: every kernel variant compiles to cubin for sm_90 and sm_80, on CPU.

The interpreter accepts code the real compiler rejects, so the interpreted tests alone prove
nothing about the GPU build. The gate runs in a subprocess because this process has
``TRITON_INTERPRET=1`` (its kernels are interpreted functions, which cannot be compiled).
Compiled binaries land in triton's cache, so reruns are fast.
"""

from __future__ import annotations

import subprocess

from worldserve.dynamics.attention.kernels import aot


def test_variant_list_covers_every_constexpr_combination():
    vs = aot.all_variants()
    names = [v.name for v in vs]
    assert len(names) == len(set(names))
    default = [v for v in vs if v.config is None and not v.stats and v.shape == "gate"]
    # prefill: dtype x head dim x prologue x layout; decode: dtype x head dim x prologue x (padded, paged)
    assert len([v for v in default if v.kernel == "prefill"]) == 2 * 3 * 2 * 2
    assert len([v for v in default if v.kernel == "decode"]) == 2 * 3 * 2 * 2
    assert len([v for v in default if v.kernel == "decode" and v.paged]) == 2 * 3 * 2
    from worldserve.dynamics.attention.kernels._common import GATED_HEAD_DIMS, cuda_configs

    assert tuple(aot.HEAD_DIMS) == GATED_HEAD_DIMS
    for d in aot.HEAD_DIMS:  # every autotune candidate appears (the first one as the default)
        for pro in (False, True):
            for c in cuda_configs(d, pro)[1:]:
                cfg = (c.block_m, c.block_n, c.num_warps, c.num_stages)
                assert {v.kernel for v in vs if v.config == cfg and v.head_dim == d and v.prologue == pro} == {
                    "prefill",
                    "decode",
                }
                assert {
                    v.paged
                    for v in vs
                    if v.config == cfg and v.head_dim == d and v.prologue == pro and v.kernel == "decode"
                } == {False, True}


def test_aot_gate_compiles_every_variant_for_sm90_and_sm80(aot_gate):
    proc, log_path = aot_gate  # started with the session (conftest), running since then
    try:
        rc = proc.wait(timeout=1500)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    report = log_path.read_text()
    n = len(aot.all_variants())
    assert rc == 0, report[-8000:]
    assert f"sm_90: {n}/{n} variants compiled" in report, report[-8000:]
    assert f"sm_80: {n}/{n} variants compiled" in report, report[-8000:]


def test_the_causal_dits_real_size_launches_are_gated():
    """The paged decode kernel at Wan2.1-T2V-1.3B's shapes (12 heads, Tn = 4680, pages of 1560, bf16,
    no prologue) specializes differently from the gate's shape: each autotune candidate is compiled
    for its steady chunk and for a session's first commit (a one-page block table)."""
    from worldserve.dynamics.attention.kernels._common import cuda_configs

    vs = [v for v in aot.all_variants() if v.shape != "gate"]
    cfgs = [None] + [(c.block_m, c.block_n, c.num_warps, c.num_stages) for c in cuda_configs(128, False)[1:]]
    assert {(v.shape, v.config) for v in vs} == {(s, c) for s in ("wan", "wan-first") for c in cfgs}
    assert all((v.kernel, v.dtype, v.head_dim, v.prologue, v.paged) == ("decode", "bf16", 128, False, True) for v in vs)
    wan, first = aot.SHAPES["wan"], aot.SHAPES["wan-first"]
    assert (wan.heads, wan.tokens, wan.page, wan.pages, wan.cached) == (12, 4680, 1560, 21, 18 * 1560)
    assert (first.tokens, first.pages, first.cached) == (1560, 1, 0)
    kernel, kw, _, _ = aot._launch_kwargs(next(v for v in vs if v.shape == "wan" and v.config is None))
    assert (kw["seqlen_new"], kw["num_heads"], kw["page_size"], kw["stride_btb"]) == (4680, 12, 1560, 21)
    assert kw["PAGED"] and not kw["PROLOGUE"]
