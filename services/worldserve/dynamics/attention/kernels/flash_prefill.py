"""Fused flash attention for prefill: padded batches and ragged (varlen) batches.

Reads top to bottom: the kernel, the launcher (shape checks, grid, autotune on CUDA), the
wrappers :func:`flash_attention` / :func:`flash_attention_varlen`, and the torch references.

Masks (see ``_common``): full, token causal and frame-block-causal share one code path with a
runtime mask group G. What makes frame-causal cheap is the loop structure, per query block:

    keys [0, n_full)     every row of the block sees them       -> tiles without any mask
    keys [n_full, hi)    straddle a frame edge for this block   -> tiles with a mask
    keys [hi, Tk)        no row of the block sees them          -> never loaded (skipped)

With frames of F tokens and a query block inside one frame, ``hi`` is the end of that frame and
the masked range is at most one partial tile (none when F is a multiple of BLOCK_N). Keys past
``hi`` are not read at all, so the future may hold anything (the NaN test relies on it).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from worldserve.dynamics.attention.reference import attention_reference, attention_varlen_reference

from ._common import (
    LOG2E,
    TileConfig,
    _attn_step,
    _load_halves,
    _row_end,
    block_d,
    check_qkv_layout,
    check_rope_tables,
    check_runnable,
    cuda_configs,
    default_config,
    interpreting,
    mask_group,
    split_prologue,
    tune_bucket,
)

# --------------------------------------------------------------------------------------------
# kernel
# --------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["group", "tune_q", "tune_k"])
def _flash_fwd_kernel(
    q_ptr,  # [B, H, Tq, D]      (VARLEN: [total_q, H, D])
    k_ptr,  # [B, Hkv, Tk, D]    (VARLEN: [total_k, Hkv, D])
    v_ptr,  # [B, Hkv, Tk, D]    (VARLEN: [total_k, Hkv, D])
    o_ptr,  # [B, H, Tq, D]      (VARLEN: [total_q, H, D])
    cu_q_ptr,  # [B + 1] int32 cumulative query lengths (VARLEN only, else None)
    cu_k_ptr,  # [B + 1] int32 cumulative key lengths (VARLEN only, else None)
    qw_ptr,  # [D] q RMSNorm weight (PROLOGUE only, else None)
    kw_ptr,  # [D] k RMSNorm weight (PROLOGUE only)
    cos_ptr,  # [B, Tk, D/2] rope cos per key row; query j uses row q_start + j (VARLEN: [total_k, D/2])
    sin_ptr,  # like cos_ptr (PROLOGUE only)
    stats_ptr,  # [grid_m * B * H, 2] int32 tiles computed (unmasked, masked) (WRITE_STATS only)
    stride_qb,
    stride_qh,
    stride_qt,  # VARLEN: stride_qb unused
    stride_kb,
    stride_kh,
    stride_kt,
    stride_vb,
    stride_vh,
    stride_vt,
    stride_ob,
    stride_oh,
    stride_ot,
    stride_rb,
    stride_rt,  # rope tables (VARLEN: stride_rb unused)
    seqlen_q,  # Tq (VARLEN: unused, read from cu_q)
    seqlen_k,  # Tk (VARLEN: unused, read from cu_k)
    q_start,  # absolute position of query 0 among the keys (VARLEN: per sequence, Tk_b - Tq_b)
    group,  # mask group: 0 full, 1 causal, F frame-causal (not specialized: one binary for all kinds)
    num_heads,  # H
    kv_group,  # H // Hkv (grouped-query attention), 1 for plain multi-head
    qk_scale,  # softmax scale * log2(e)
    eps,  # RMSNorm epsilon
    tune_q,  # bucketed lengths: only part of the autotune key, unused in the body
    tune_k,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,  # next power of two >= HEAD_DIM, at least 16 (32 with PROLOGUE): tl.dot depth
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    VARLEN: tl.constexpr,
    PROLOGUE: tl.constexpr,  # QK RMSNorm + RoPE on load (the model's pre-attention ops)
    UPCAST: tl.constexpr,  # interpreter only: its bf16 arithmetic is broken, compute in fp32
    WRITE_STATS: tl.constexpr,
):
    # Heavy (late) query blocks first: under causal masks they have the most keys, starting them
    # first shortens the tail of the launch.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    kh = h // kv_group

    if VARLEN:
        q0 = tl.load(cu_q_ptr + b)
        k0 = tl.load(cu_k_ptr + b)
        seqlen_q = tl.load(cu_q_ptr + b + 1) - q0
        seqlen_k = tl.load(cu_k_ptr + b + 1) - k0
        q_start = seqlen_k - seqlen_q  # queries aligned to the end of their keys
        q_base = q_ptr + q0.to(tl.int64) * stride_qt + h * stride_qh
        k_base = k_ptr + k0.to(tl.int64) * stride_kt + kh * stride_kh
        v_base = v_ptr + k0.to(tl.int64) * stride_vt + kh * stride_vh
        o_base = o_ptr + q0.to(tl.int64) * stride_ot + h * stride_oh
        rope_off = k0.to(tl.int64) * stride_rt
    else:
        q_base = q_ptr + b.to(tl.int64) * stride_qb + h * stride_qh
        k_base = k_ptr + b.to(tl.int64) * stride_kb + kh * stride_kh
        v_base = v_ptr + b.to(tl.int64) * stride_vb + kh * stride_vh
        o_base = o_ptr + b.to(tl.int64) * stride_ob + h * stride_oh
        rope_off = b.to(tl.int64) * stride_rb
    if PROLOGUE:
        cos_base = cos_ptr + rope_off
        sin_base = sin_ptr + rope_off
    else:  # None (constexpr): no tables
        cos_base = cos_ptr
        sin_base = sin_ptr

    m0 = pid_m * BLOCK_M
    if m0 >= seqlen_q:  # ragged batch: this sequence is shorter than the longest one
        return

    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < seqlen_q
    q_rows = q_base + offs_m.to(tl.int64)[:, None] * stride_qt
    if PROLOGUE:
        q1, q2 = _load_halves(
            q_rows,
            q_start + offs_m,
            m_ok,
            qw_ptr,
            cos_base,
            sin_base,
            stride_rt,
            eps,
            HEAD_DIM,
            BLOCK_D // 2,
            True,
            True,
            UPCAST,
        )
        q = q1  # unused
    else:
        q = tl.load(q_rows + offs_d[None, :], mask=m_ok[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
        q1 = q  # unused
        q2 = q

    # Key ranges of this query block (module docstring). row_end is per row; the block-wide
    # bounds come from its first and last existing rows.
    row_end = _row_end(q_start + offs_m, group, seqlen_k)
    m_last = tl.minimum(m0 + BLOCK_M, seqlen_q) - 1
    all_see = _row_end(q_start + m0, group, seqlen_k)
    hi = _row_end(q_start + m_last, group, seqlen_k)
    n_full = (all_see // BLOCK_N) * BLOCK_N

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    n_unmasked = 0  # tiles computed, counted only for the WRITE_STATS test hook
    n_masked = 0
    for start_n in range(0, n_full, BLOCK_N):
        acc, m_i, l_i = _attn_step(
            acc,
            m_i,
            l_i,
            q,
            q1,
            q2,
            k_base,
            v_base,
            start_n,
            stride_kt,
            stride_vt,
            hi,
            row_end,
            qk_scale,
            kw_ptr,
            cos_base,
            sin_base,
            stride_rt,
            eps,
            HEAD_DIM,
            BLOCK_D,
            BLOCK_N,
            False,
            PROLOGUE,
            PROLOGUE,
            UPCAST,
        )
        if WRITE_STATS:
            n_unmasked += 1
    for start_n in range(n_full, hi, BLOCK_N):
        acc, m_i, l_i = _attn_step(
            acc,
            m_i,
            l_i,
            q,
            q1,
            q2,
            k_base,
            v_base,
            start_n,
            stride_kt,
            stride_vt,
            hi,
            row_end,
            qk_scale,
            kw_ptr,
            cos_base,
            sin_base,
            stride_rt,
            eps,
            HEAD_DIM,
            BLOCK_D,
            BLOCK_N,
            True,
            PROLOGUE,
            PROLOGUE,
            UPCAST,
        )
        if WRITE_STATS:
            n_masked += 1

    out = acc / l_i[:, None]
    o_ptrs = o_base + offs_m.to(tl.int64)[:, None] * stride_ot + offs_d[None, :]
    tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=m_ok[:, None] & (offs_d[None, :] < HEAD_DIM))

    if WRITE_STATS:
        # Test hook: how many key tiles this program computed (unmasked, masked).
        sid = (pid_bh * tl.num_programs(0) + pid_m) * 2
        tl.store(stats_ptr + sid, n_unmasked)
        tl.store(stats_ptr + sid + 1, n_masked)


# --------------------------------------------------------------------------------------------
# launcher
# --------------------------------------------------------------------------------------------

_AUTOTUNED: dict[tuple[int, bool], object] = {}


def _autotuned(head_dim: int, prologue: bool):
    """The kernel wrapped in triton.autotune, built lazily (CUDA only: autotune needs do_bench)."""
    key = (head_dim, prologue)
    if key not in _AUTOTUNED:
        _AUTOTUNED[key] = triton.autotune(
            configs=[c.triton_config() for c in cuda_configs(head_dim, prologue)],
            key=["tune_q", "tune_k", "group", "HEAD_DIM", "VARLEN", "PROLOGUE"],
        )(_flash_fwd_kernel)
    return _AUTOTUNED[key]


def prefill_launch_args(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    *,
    cu_seqlens_q: torch.Tensor | None = None,
    cu_seqlens_k: torch.Tensor | None = None,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    group: int,
    q_start: int = 0,
    scale: float | None = None,
    q_norm_weight: torch.Tensor | None = None,
    k_norm_weight: torch.Tensor | None = None,
    norm_eps: float = 1e-6,
    rope_cos: torch.Tensor | None = None,
    rope_sin: torch.Tensor | None = None,
    stats: torch.Tensor | None = None,
    config: TileConfig | None = None,
) -> tuple[tuple[int, int], dict]:
    """Shape checks and kernel arguments. Returns ``(grid, kwargs)``; BLOCK_M/BLOCK_N are in
    kwargs only when a fixed config is used. Works on meta tensors (the AOT gate uses it)."""
    varlen = cu_seqlens_q is not None
    if varlen:
        total_q, H, D = q.shape
        total_k, Hkv, _ = k.shape
        B = cu_seqlens_q.shape[0] - 1
        if cu_seqlens_k is None or cu_seqlens_k.shape != cu_seqlens_q.shape:
            raise ValueError("cu_seqlens_q and cu_seqlens_k must both be (B + 1,)")
        if cu_seqlens_q.dtype != torch.int32 or cu_seqlens_k.dtype != torch.int32:
            raise TypeError("cu_seqlens must be int32")
        if max_seqlen_q is None or max_seqlen_k is None:
            raise ValueError("varlen launch needs max_seqlen_q and max_seqlen_k")
        seqlen_q, seqlen_k = max_seqlen_q, max_seqlen_k
        strides_q = (0, q.stride(1), q.stride(0))
        strides_k = (0, k.stride(1), k.stride(0))
        strides_v = (0, v.stride(1), v.stride(0))
        strides_o = (0, out.stride(1), out.stride(0))
    else:
        B, H, seqlen_q, D = q.shape
        _, Hkv, seqlen_k, _ = k.shape
        if k.shape[0] != B:
            raise ValueError(f"batch mismatch: q {tuple(q.shape)} vs k {tuple(k.shape)}")
        if seqlen_q == 0 or seqlen_k == 0:
            raise ValueError("empty query or key sequence")
        if q_start < 0:
            raise ValueError(f"q_start must be >= 0, got {q_start}")
        strides_q = (q.stride(0), q.stride(1), q.stride(2))
        strides_k = (k.stride(0), k.stride(1), k.stride(2))
        strides_v = (v.stride(0), v.stride(1), v.stride(2))
        strides_o = (out.stride(0), out.stride(1), out.stride(2))
    if k.shape != v.shape:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} differ")
    if k.shape[-1] != D or out.shape != q.shape:
        raise ValueError(f"head dim / output mismatch: q {tuple(q.shape)} k {tuple(k.shape)} out {tuple(out.shape)}")
    if H % Hkv:
        raise ValueError(f"query heads {H} not a multiple of kv heads {Hkv}")
    if not (q.dtype == k.dtype == v.dtype == out.dtype):
        raise TypeError(f"dtype mismatch: q {q.dtype} k {k.dtype} v {v.dtype} out {out.dtype}")
    prologue = split_prologue(q_norm_weight, k_norm_weight, rope_cos, rope_sin)
    if not prologue and (q_norm_weight is not None or rope_cos is not None):
        raise ValueError("the kernel fuses RMSNorm and RoPE together; apply a partial prologue before")
    rope_strides = (0, 0)
    if prologue:
        for name, w in (("q_norm_weight", q_norm_weight), ("k_norm_weight", k_norm_weight)):
            if w.shape != (D,) or w.stride(0) != 1:
                raise ValueError(f"{name} must be a contiguous ({D},) tensor")
        want = (total_k, D // 2) if varlen else (B, seqlen_k, D // 2)
        rope_strides = check_rope_tables(rope_cos, rope_sin, want, D)
        if varlen:
            rope_strides = (0, rope_strides[0])
    cfg = config or default_config(D, prologue)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    grid_m = triton.cdiv(seqlen_q, cfg.block_m) if config is not None or interpreting() else None
    kwargs = dict(
        q_ptr=q,
        k_ptr=k,
        v_ptr=v,
        o_ptr=out,
        cu_q_ptr=cu_seqlens_q,
        cu_k_ptr=cu_seqlens_k,
        qw_ptr=q_norm_weight,
        kw_ptr=k_norm_weight,
        cos_ptr=rope_cos,
        sin_ptr=rope_sin,
        stats_ptr=stats,
        stride_qb=strides_q[0],
        stride_qh=strides_q[1],
        stride_qt=strides_q[2],
        stride_kb=strides_k[0],
        stride_kh=strides_k[1],
        stride_kt=strides_k[2],
        stride_vb=strides_v[0],
        stride_vh=strides_v[1],
        stride_vt=strides_v[2],
        stride_ob=strides_o[0],
        stride_oh=strides_o[1],
        stride_ot=strides_o[2],
        stride_rb=rope_strides[0],
        stride_rt=rope_strides[1],
        seqlen_q=seqlen_q,
        seqlen_k=seqlen_k,
        q_start=q_start,
        group=group,
        num_heads=H,
        kv_group=H // Hkv,
        qk_scale=scale * LOG2E,
        eps=norm_eps,
        tune_q=tune_bucket(seqlen_q),
        tune_k=tune_bucket(seqlen_k),
        HEAD_DIM=D,
        BLOCK_D=block_d(D, prologue),
        VARLEN=varlen,
        PROLOGUE=prologue,
        UPCAST=interpreting(),
        WRITE_STATS=stats is not None,
    )
    if grid_m is not None:
        kwargs.update(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        grid = (grid_m, B * H)
    else:
        grid = lambda meta: (triton.cdiv(seqlen_q, meta["BLOCK_M"]), B * H)
    if stats is not None:
        if grid_m is None:
            raise ValueError("stats need a fixed config")
        if stats.shape != (grid_m * B * H, 2) or stats.dtype != torch.int32:
            raise ValueError(f"stats must be int32 ({grid_m * B * H}, 2)")
    return grid, kwargs


def _launch(grid, kwargs) -> None:
    check_runnable(kwargs["q_ptr"], _flash_fwd_kernel)
    if "BLOCK_M" in kwargs:
        _flash_fwd_kernel[grid](**kwargs)
    else:
        _autotuned(kwargs["HEAD_DIM"], kwargs["PROLOGUE"])[grid](**kwargs)


# --------------------------------------------------------------------------------------------
# wrappers
# --------------------------------------------------------------------------------------------


def flash_attention(
    q: torch.Tensor,  # (B, H, Tq, D)
    k: torch.Tensor,  # (B, Hkv, Tk, D)
    v: torch.Tensor,  # (B, Hkv, Tk, D)
    *,
    frame_tokens: int,
    mask: str = "frame_causal",
    q_start: int | None = None,
    scale: float | None = None,
    q_norm_weight: torch.Tensor | None = None,
    k_norm_weight: torch.Tensor | None = None,
    norm_eps: float = 1e-6,
    rope_cos: torch.Tensor | None = None,
    rope_sin: torch.Tensor | None = None,
    config: TileConfig | None = None,
    stats: torch.Tensor | None = None,
) -> torch.Tensor:  # (B, H, Tq, D)
    """Masked attention over a padded batch; queries aligned to the end of the keys unless
    ``q_start`` is given. Optional fused prologue on q and k: RMSNorm (weights) then RoPE with
    per-key-row angle tables ``rope_cos``/``rope_sin`` (B, Tk, D/2); query j uses row
    ``q_start + j``."""
    q = check_qkv_layout("q", q, 4)
    k = check_qkv_layout("k", k, 4)
    v = check_qkv_layout("v", v, 4)
    q_start = k.shape[2] - q.shape[2] if q_start is None else q_start
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    grid, kwargs = prefill_launch_args(
        q,
        k,
        v,
        out,
        group=mask_group(mask, frame_tokens),
        q_start=q_start,
        scale=scale,
        q_norm_weight=q_norm_weight,
        k_norm_weight=k_norm_weight,
        norm_eps=norm_eps,
        rope_cos=rope_cos,
        rope_sin=rope_sin,
        stats=stats,
        config=config,
    )
    _launch(grid, kwargs)
    return out


def flash_attention_varlen(
    q: torch.Tensor,  # (total_q, H, D) packed queries of all sequences
    k: torch.Tensor,  # (total_k, Hkv, D) packed keys
    v: torch.Tensor,  # (total_k, Hkv, D) packed values
    cu_seqlens_q: torch.Tensor,  # (B + 1,) int32
    cu_seqlens_k: torch.Tensor,  # (B + 1,) int32
    *,
    frame_tokens: int,
    mask: str = "frame_causal",
    scale: float | None = None,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    q_norm_weight: torch.Tensor | None = None,
    k_norm_weight: torch.Tensor | None = None,
    norm_eps: float = 1e-6,
    rope_cos: torch.Tensor | None = None,
    rope_sin: torch.Tensor | None = None,
    config: TileConfig | None = None,
) -> torch.Tensor:  # (total_q, H, D)
    """Ragged batch in one launch: sequence b has queries ``cu_q[b]:cu_q[b+1]`` aligned to the end
    of its keys ``cu_k[b]:cu_k[b+1]``. Pass ``max_seqlen_*`` to avoid a device sync on CUDA.
    RoPE tables are packed like the keys, (total_k, D/2); queries use the rows of their positions."""
    q = check_qkv_layout("q", q, 3)
    k = check_qkv_layout("k", k, 3)
    v = check_qkv_layout("v", v, 3)
    cu_seqlens_q = cu_seqlens_q.to(device=q.device, dtype=torch.int32).contiguous()
    cu_seqlens_k = cu_seqlens_k.to(device=q.device, dtype=torch.int32).contiguous()
    lq = cu_seqlens_q.diff()
    lk = cu_seqlens_k.diff()
    if max_seqlen_q is None or max_seqlen_k is None:
        max_seqlen_q = int(lq.max()) if max_seqlen_q is None else max_seqlen_q
        max_seqlen_k = int(lk.max()) if max_seqlen_k is None else max_seqlen_k
    if not q.is_cuda and mask != "full" and bool((lq > lk).any()):
        # causal kinds align queries to the end of the keys: more queries than keys is an error
        raise ValueError("a sequence has more queries than keys")
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if max_seqlen_q == 0:
        return out
    grid, kwargs = prefill_launch_args(
        q,
        k,
        v,
        out,
        cu_seqlens_q=cu_seqlens_q,
        cu_seqlens_k=cu_seqlens_k,
        max_seqlen_q=max_seqlen_q,
        max_seqlen_k=max_seqlen_k,
        group=mask_group(mask, frame_tokens),
        scale=scale,
        q_norm_weight=q_norm_weight,
        k_norm_weight=k_norm_weight,
        norm_eps=norm_eps,
        rope_cos=rope_cos,
        rope_sin=rope_sin,
        config=config,
    )
    _launch(grid, kwargs)
    return out


# --------------------------------------------------------------------------------------------
# torch references (unfused: prologue, explicit boolean mask, SDPA)
# --------------------------------------------------------------------------------------------


# The torch references are attention.py's (the CPU path runs the same code the kernels are tested against).
flash_attention_reference = attention_reference
flash_attention_varlen_reference = attention_varlen_reference
