"""Decode: one new frame of queries against a KV cache of past frames plus the new frame.

Reads top to bottom: the kernel, the launcher, the wrapper :func:`flash_decode`, the torch
reference. Batch b has ``L_b = cache_seqlens[b]`` valid cache rows (uneven across the batch, not
a multiple of the block size); the step brings ``Tn`` new tokens (one frame) with their queries,
keys and values. The kernel, in one launch:

- attends the new queries (absolute positions ``L_b + j``) over cache rows ``[0, L_b)`` -- all
  visible to every new query under every mask kind, so no mask except the partial last tile --
  and over the new keys ``[0, Tn)`` read straight from ``k_new``/``v_new`` with the mask kind
  applied at absolute positions (frame-causal: the whole new frame is visible to itself);
- writes the new keys (after the fused prologue, i.e. what attention used) and values into the
  cache at rows ``[L_b, L_b + Tn)`` (``write_kv``; off for sampling steps whose K/V must not be
  committed, e.g. intermediate denoising steps or the unconditional branch of CFG).

Why the new part is read from ``k_new`` and not from the cache after writing it: the programs of
one (batch, head) run concurrently and there is no grid-wide barrier, so a program may not read
rows that another program writes in the same launch. Each program writes only the rows of its
own query block, and reads cache rows ``< L_b`` only, which nobody writes.

Cache rows ``>= L_b + Tn`` (capacity not yet used) are never read; neither are rows past ``L_b``
before they are written.

Paged caches (``block_table``, ``page_size``): ``k_cache``/``v_cache`` are page pools
``(P, Hkv, page_size, D)`` and logical cache row ``r`` of batch row ``b`` lives at row
``r % page_size`` of page ``block_table[b, r // page_size]``. Reads of rows ``[0, L_b)`` and the
K/V write of rows ``[L_b, L_b + Tn)`` go through the table, with page addresses computed per row
of the tile (so ``page_size`` may be anything, e.g. a frame of 3600 tokens). Several batch rows
may map to the same pages (CFG: the conditional and unconditional copies of a session attend to
one cache with ``write_kv=0``). The model keeps one page per frame; see ``WorldModel``.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from worldserve.dynamics.attention.reference import attention_decode_reference

from ._common import (
    LOG2E,
    TileConfig,
    _attn_step,
    _attn_step_rows,
    _load_halves,
    _paged_rows,
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


@triton.jit(do_not_specialize=["group", "write_kv", "tune_k", "page_size"])
def _flash_decode_kernel(
    q_ptr,  # [B, H, Tn, D] queries of the new tokens
    kn_ptr,  # [B, Hkv, Tn, D] new keys (before the prologue)
    vn_ptr,  # [B, Hkv, Tn, D] new values
    kc_ptr,  # [B, Hkv, Tmax, D] key cache (after the prologue); rows [0, L_b) valid
    #          (PAGED: [P, Hkv, page_size, D] page pool; logical row r of batch b at page bt[b, r // page_size])
    vc_ptr,  # [B, Hkv, Tmax, D] value cache (PAGED: [P, Hkv, page_size, D])
    o_ptr,  # [B, H, Tn, D]
    lens_ptr,  # [B] int32 L_b: valid cache rows before this step
    bt_ptr,  # [B, max_pages] int32 block table: logical page -> physical page (PAGED only, else None)
    qw_ptr,  # [D] q RMSNorm weight (PROLOGUE only, else None)
    kw_ptr,  # [D] k RMSNorm weight (PROLOGUE only)
    cos_ptr,  # [B, Tn, D/2] rope cos of the new tokens (PROLOGUE only)
    sin_ptr,  # [B, Tn, D/2] (PROLOGUE only)
    stride_qb,
    stride_qh,
    stride_qt,
    stride_knb,
    stride_knh,
    stride_knt,
    stride_vnb,
    stride_vnh,
    stride_vnt,
    stride_kcb,
    stride_kch,
    stride_kct,  # PAGED: stride_kcb is the page stride of the pool
    stride_vcb,
    stride_vch,
    stride_vct,
    stride_ob,
    stride_oh,
    stride_ot,
    stride_rb,
    stride_rt,
    stride_btb,  # row stride of the block table (PAGED only)
    page_size,  # cache rows per page (PAGED only; any positive int, not specialized)
    seqlen_new,  # Tn
    group,  # mask group: 0 full, 1 causal, F frame-causal (within the new tokens; not specialized)
    num_heads,  # H
    kv_group,  # H // Hkv
    qk_scale,  # softmax scale * log2(e)
    eps,  # RMSNorm epsilon
    write_kv,  # 1: store the new K/V into the caches; 0: attend only (runtime flag, one binary)
    tune_k,  # bucketed max cache length: autotune key only
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PROLOGUE: tl.constexpr,  # QK RMSNorm + RoPE on load of q and the new keys (cache keys have had it)
    PAGED: tl.constexpr,  # the caches are page pools addressed through the block table
    UPCAST: tl.constexpr,  # interpreter only: compute in fp32 (its bf16 arithmetic is broken)
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    kh = h // kv_group
    cache_len = tl.load(lens_ptr + b)

    q_base = q_ptr + b.to(tl.int64) * stride_qb + h * stride_qh
    kn_base = kn_ptr + b.to(tl.int64) * stride_knb + kh * stride_knh
    vn_base = vn_ptr + b.to(tl.int64) * stride_vnb + kh * stride_vnh
    if PAGED:  # row 0 of page 0 of this kv head; rows are addressed through the block table
        kc_base = kc_ptr + kh.to(tl.int64) * stride_kch
        vc_base = vc_ptr + kh.to(tl.int64) * stride_vch
        bt_base = bt_ptr + b.to(tl.int64) * stride_btb
    else:
        kc_base = kc_ptr + b.to(tl.int64) * stride_kcb + kh * stride_kch
        vc_base = vc_ptr + b.to(tl.int64) * stride_vcb + kh * stride_vch
        bt_base = bt_ptr
    o_base = o_ptr + b.to(tl.int64) * stride_ob + h * stride_oh
    if PROLOGUE:
        cos_base = cos_ptr + b.to(tl.int64) * stride_rb
        sin_base = sin_ptr + b.to(tl.int64) * stride_rb
    else:  # None (constexpr): no tables
        cos_base = cos_ptr
        sin_base = sin_ptr

    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < seqlen_new
    md_ok = m_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    q_rows = q_base + offs_m.to(tl.int64)[:, None] * stride_qt
    if PROLOGUE:
        q1, q2 = _load_halves(
            q_rows, offs_m, m_ok, qw_ptr, cos_base, sin_base, stride_rt, eps, HEAD_DIM, BLOCK_D // 2, True, True, UPCAST
        )
        q = q1  # unused
    else:
        q = tl.load(q_rows + offs_d[None, :], mask=md_ok, other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
        q1 = q  # unused
        q2 = q

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)

    # Part 1: the cache. Every new query sees every cached key; only the last, partial tile
    # needs the bounds mask (cache_len is not a multiple of BLOCK_N in general). Cached keys
    # already had the prologue (they were written by this kernel or by the same math).
    # PAGED: the same loop; each tile's row addresses come from the block table, per row (a tile
    # may straddle pages: page_size need not be a multiple of BLOCK_N).
    cache_full = (cache_len // BLOCK_N) * BLOCK_N
    for start_n in range(0, cache_full, BLOCK_N):
        if PAGED:
            offs_n = start_n + tl.arange(0, BLOCK_N)
            n_ok = offs_n < cache_len
            acc, m_i, l_i = _attn_step_rows(
                acc,
                m_i,
                l_i,
                q,
                q1,
                q2,
                _paged_rows(kc_base, bt_base, offs_n, n_ok, page_size, stride_kcb, stride_kct),
                _paged_rows(vc_base, bt_base, offs_n, n_ok, page_size, stride_vcb, stride_vct),
                offs_n,
                cache_len,
                offs_m * 0 + cache_len,
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
                False,
                UPCAST,
            )
        else:
            acc, m_i, l_i = _attn_step(
                acc,
                m_i,
                l_i,
                q,
                q1,
                q2,
                kc_base,
                vc_base,
                start_n,
                stride_kct,
                stride_vct,
                cache_len,
                offs_m * 0 + cache_len,
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
                False,
                UPCAST,
            )
    if cache_full < cache_len:  # at most one tile: a branch, not a loop (nothing to pipeline)
        if PAGED:
            offs_n = cache_full + tl.arange(0, BLOCK_N)
            n_ok = offs_n < cache_len
            acc, m_i, l_i = _attn_step_rows(
                acc,
                m_i,
                l_i,
                q,
                q1,
                q2,
                _paged_rows(kc_base, bt_base, offs_n, n_ok, page_size, stride_kcb, stride_kct),
                _paged_rows(vc_base, bt_base, offs_n, n_ok, page_size, stride_vcb, stride_vct),
                offs_n,
                cache_len,
                offs_m * 0 + cache_len,
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
                False,
                UPCAST,
            )
        else:
            acc, m_i, l_i = _attn_step(
                acc,
                m_i,
                l_i,
                q,
                q1,
                q2,
                kc_base,
                vc_base,
                cache_full,
                stride_kct,
                stride_vct,
                cache_len,
                offs_m * 0 + cache_len,
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
                False,
                UPCAST,
            )

    # Part 2: the new tokens, indexed from 0 (absolute position cache_len + j). Same three
    # ranges as the prefill kernel: unmasked, straddling (masked), invisible (skipped).
    total = cache_len + seqlen_new
    row_end = _row_end(cache_len + offs_m, group, total) - cache_len
    m_last = tl.minimum(m0 + BLOCK_M, seqlen_new) - 1
    all_see = _row_end(cache_len + m0, group, total) - cache_len
    hi = _row_end(cache_len + m_last, group, total) - cache_len
    new_full = (all_see // BLOCK_N) * BLOCK_N
    for start_n in range(0, new_full, BLOCK_N):
        acc, m_i, l_i = _attn_step(
            acc,
            m_i,
            l_i,
            q,
            q1,
            q2,
            kn_base,
            vn_base,
            start_n,
            stride_knt,
            stride_vnt,
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
    for start_n in range(new_full, hi, BLOCK_N):
        acc, m_i, l_i = _attn_step(
            acc,
            m_i,
            l_i,
            q,
            q1,
            q2,
            kn_base,
            vn_base,
            start_n,
            stride_knt,
            stride_vnt,
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

    out = acc / l_i[:, None]
    tl.store(
        o_base + offs_m.to(tl.int64)[:, None] * stride_ot + offs_d[None, :], out.to(o_ptr.dtype.element_ty), mask=md_ok
    )

    # This program commits the new K/V rows of its own query block (one writer per row: with
    # grouped-query attention only the first query head of each kv head writes).
    if write_kv != 0:
        if h % kv_group == 0:
            kn_rows = kn_base + offs_m.to(tl.int64)[:, None] * stride_knt
            if PAGED:  # logical rows cache_len + j through the block table
                kc_rows = _paged_rows(kc_base, bt_base, cache_len + offs_m, m_ok, page_size, stride_kcb, stride_kct)
                vc_rows = _paged_rows(vc_base, bt_base, cache_len + offs_m, m_ok, page_size, stride_vcb, stride_vct)
            else:
                kc_rows = kc_base + (cache_len + offs_m).to(tl.int64)[:, None] * stride_kct
                vc_rows = vc_base + (cache_len + offs_m).to(tl.int64)[:, None] * stride_vct
            if PROLOGUE:
                HALF: tl.constexpr = HEAD_DIM // 2
                offs_h = tl.arange(0, BLOCK_D // 2)
                h_ok = m_ok[:, None] & (offs_h[None, :] < HALF)
                k1, k2 = _load_halves(
                    kn_rows,
                    offs_m,
                    m_ok,
                    kw_ptr,
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
                tl.store(kc_rows + offs_h[None, :], k1.to(kc_ptr.dtype.element_ty), mask=h_ok)
                tl.store(kc_rows + HALF + offs_h[None, :], k2.to(kc_ptr.dtype.element_ty), mask=h_ok)
            else:
                k_new = tl.load(kn_rows + offs_d[None, :], mask=md_ok, other=0.0)
                tl.store(kc_rows + offs_d[None, :], k_new, mask=md_ok)
            v_new = tl.load(
                vn_base + offs_m.to(tl.int64)[:, None] * stride_vnt + offs_d[None, :], mask=md_ok, other=0.0
            )
            tl.store(vc_rows + offs_d[None, :], v_new, mask=md_ok)


# --------------------------------------------------------------------------------------------
# launcher
# --------------------------------------------------------------------------------------------

_AUTOTUNED: dict[tuple[int, bool], object] = {}


def _autotuned(head_dim: int, prologue: bool):
    """The kernel wrapped in triton.autotune, built lazily (CUDA only). Re-running a config while
    tuning rewrites the same cache rows with the same values, so tuning is side-effect free."""
    key = (head_dim, prologue)
    if key not in _AUTOTUNED:
        _AUTOTUNED[key] = triton.autotune(
            configs=[c.triton_config() for c in cuda_configs(head_dim, prologue)],
            key=["seqlen_new", "tune_k", "group", "HEAD_DIM", "PROLOGUE", "PAGED"],
        )(_flash_decode_kernel)
    return _AUTOTUNED[key]


def decode_launch_args(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    out: torch.Tensor,
    *,
    group: int,
    max_cache_len: int,
    scale: float | None = None,
    write_kv: bool = True,
    q_norm_weight: torch.Tensor | None = None,
    k_norm_weight: torch.Tensor | None = None,
    norm_eps: float = 1e-6,
    rope_cos: torch.Tensor | None = None,
    rope_sin: torch.Tensor | None = None,
    block_table: torch.Tensor | None = None,
    page_size: int | None = None,
    config: TileConfig | None = None,
) -> tuple[object, dict]:
    """Shape checks and kernel arguments (works on meta tensors; the AOT gate uses it).
    Paged (``block_table`` given): the caches are pools (P, Hkv, page_size, D)."""
    B, H, Tn, D = q.shape
    _, Hkv, Tmax, _ = k_cache.shape
    paged = block_table is not None
    if k_new.shape != (B, Hkv, Tn, D) or v_new.shape != k_new.shape:
        raise ValueError(f"k_new/v_new must be {(B, Hkv, Tn, D)}, got {tuple(k_new.shape)} / {tuple(v_new.shape)}")
    if paged:
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"page_size must be a positive int with a block table, got {page_size!r}")
        if k_cache.shape[2] != page_size or v_cache.shape != k_cache.shape or k_cache.shape[3] != D:
            raise ValueError(
                f"paged caches must be pools (P, Hkv={Hkv}, page_size={page_size}, D={D}), got "
                f"{tuple(k_cache.shape)} / {tuple(v_cache.shape)}"
            )
        if block_table.dim() != 2 or block_table.shape[0] != B or block_table.dtype != torch.int32:
            raise ValueError(
                f"block_table must be int32 (B={B}, max_pages), got {block_table.dtype} {tuple(block_table.shape)}"
            )
        if block_table.shape[1] > 1 and block_table.stride(1) != 1:
            raise ValueError("block_table must have a contiguous last dim")
        Tmax = block_table.shape[1] * page_size  # logical capacity of every batch row
    else:
        if page_size is not None:
            raise ValueError("page_size given without a block_table")
        if v_cache.shape != k_cache.shape or k_cache.shape[0] != B or k_cache.shape[3] != D:
            raise ValueError(
                f"caches must be (B={B}, Hkv={Hkv}, Tmax, D={D}), got {tuple(k_cache.shape)} / {tuple(v_cache.shape)}"
            )
    if H % Hkv:
        raise ValueError(f"query heads {H} not a multiple of kv heads {Hkv}")
    if cache_seqlens.shape != (B,) or cache_seqlens.dtype != torch.int32:
        raise ValueError("cache_seqlens must be int32 (B,)")
    if Tn == 0:
        raise ValueError("no new tokens")
    if max_cache_len + Tn > Tmax:
        raise ValueError(f"cache too small: {max_cache_len} cached + {Tn} new > capacity {Tmax}")
    if len({q.dtype, k_new.dtype, v_new.dtype, k_cache.dtype, v_cache.dtype, out.dtype}) != 1:
        raise TypeError("q, k_new, v_new, caches and out must share one dtype")
    prologue = split_prologue(q_norm_weight, k_norm_weight, rope_cos, rope_sin)
    if not prologue and (q_norm_weight is not None or rope_cos is not None):
        raise ValueError("the kernel fuses RMSNorm and RoPE together; apply a partial prologue before")
    rope_strides = (0, 0)
    if prologue:
        for name, w in (("q_norm_weight", q_norm_weight), ("k_norm_weight", k_norm_weight)):
            if w.shape != (D,) or w.stride(0) != 1:
                raise ValueError(f"{name} must be a contiguous ({D},) tensor")
        rope_strides = check_rope_tables(rope_cos, rope_sin, (B, Tn, D // 2), D)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    cfg = config or default_config(D, prologue)
    fixed = config is not None or interpreting()
    kwargs = dict(
        q_ptr=q,
        kn_ptr=k_new,
        vn_ptr=v_new,
        kc_ptr=k_cache,
        vc_ptr=v_cache,
        o_ptr=out,
        lens_ptr=cache_seqlens,
        bt_ptr=block_table,
        qw_ptr=q_norm_weight,
        kw_ptr=k_norm_weight,
        cos_ptr=rope_cos,
        sin_ptr=rope_sin,
        stride_qb=q.stride(0),
        stride_qh=q.stride(1),
        stride_qt=q.stride(2),
        stride_knb=k_new.stride(0),
        stride_knh=k_new.stride(1),
        stride_knt=k_new.stride(2),
        stride_vnb=v_new.stride(0),
        stride_vnh=v_new.stride(1),
        stride_vnt=v_new.stride(2),
        stride_kcb=k_cache.stride(0),
        stride_kch=k_cache.stride(1),
        stride_kct=k_cache.stride(2),
        stride_vcb=v_cache.stride(0),
        stride_vch=v_cache.stride(1),
        stride_vct=v_cache.stride(2),
        stride_ob=out.stride(0),
        stride_oh=out.stride(1),
        stride_ot=out.stride(2),
        stride_rb=rope_strides[0],
        stride_rt=rope_strides[1],
        stride_btb=block_table.stride(0) if paged else 0,
        page_size=int(page_size) if paged else 1,
        seqlen_new=Tn,
        group=group,
        num_heads=H,
        kv_group=H // Hkv,
        qk_scale=scale * LOG2E,
        eps=norm_eps,
        tune_k=tune_bucket(max_cache_len),
        HEAD_DIM=D,
        BLOCK_D=block_d(D, prologue),
        PROLOGUE=prologue,
        PAGED=paged,
        write_kv=int(bool(write_kv)),
        UPCAST=interpreting(),
    )
    if fixed:
        kwargs.update(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        grid = (triton.cdiv(Tn, cfg.block_m), B * H)
    else:
        grid = lambda meta: (triton.cdiv(Tn, meta["BLOCK_M"]), B * H)
    return grid, kwargs


def _launch(grid, kwargs) -> None:
    check_runnable(kwargs["q_ptr"], _flash_decode_kernel)
    if "BLOCK_M" in kwargs:
        _flash_decode_kernel[grid](**kwargs)
    else:
        _autotuned(kwargs["HEAD_DIM"], kwargs["PROLOGUE"])[grid](**kwargs)


# --------------------------------------------------------------------------------------------
# wrapper
# --------------------------------------------------------------------------------------------


def _overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    sa, sb = a.untyped_storage(), b.untyped_storage()
    return sa.data_ptr() == sb.data_ptr()


def flash_decode(
    q: torch.Tensor,  # (B, H, Tn, D) queries of the new frame
    k_new: torch.Tensor,  # (B, Hkv, Tn, D)
    v_new: torch.Tensor,  # (B, Hkv, Tn, D)
    k_cache: torch.Tensor,  # (B, Hkv, Tmax, D), written in place at [L_b, L_b + Tn) when write_kv
    #                         (paged: (P, Hkv, page_size, D) page pool)
    v_cache: torch.Tensor,  # (B, Hkv, Tmax, D) (paged: (P, Hkv, page_size, D))
    cache_seqlens: torch.Tensor,  # (B,) int32 valid cache rows L_b before this step
    *,
    frame_tokens: int,
    mask: str = "frame_causal",
    scale: float | None = None,
    write_kv: bool = True,
    max_cache_len: int | None = None,
    q_norm_weight: torch.Tensor | None = None,
    k_norm_weight: torch.Tensor | None = None,
    norm_eps: float = 1e-6,
    rope_cos: torch.Tensor | None = None,
    rope_sin: torch.Tensor | None = None,
    block_table: torch.Tensor | None = None,  # (B, max_pages) int32: logical page -> pool page
    page_size: int | None = None,  # rows per page (paged only)
    config: TileConfig | None = None,
) -> torch.Tensor:  # (B, H, Tn, D)
    """One decode step for a batch of sessions with uneven cache lengths (see module docstring).
    ``cache_seqlens`` is not advanced (the caller owns it). Pass ``max_cache_len`` (an upper bound
    of ``cache_seqlens``) to skip the capacity check's device sync on CUDA. The caches must not
    be strided views with a non-contiguous head dim (they are written in place).

    Paged: with ``block_table`` the caches are page pools (P, Hkv, page_size, D) and logical row
    r of batch row b is pool row ``r % page_size`` of page ``block_table[b, r // page_size]``.
    Batch rows may share pages (e.g. the two CFG branches of one session) as long as at most one
    of them writes (``write_kv``) a given row. Page ids are not bounds-checked by the kernel."""
    q = check_qkv_layout("q", q, 4)
    k_new = check_qkv_layout("k_new", k_new, 4)
    v_new = check_qkv_layout("v_new", v_new, 4)
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        if c.dim() != 4 or c.stride(-1) != 1:
            raise ValueError(
                f"{name} must be (B, Hkv, Tmax, D) or a (P, Hkv, page_size, D) pool with a contiguous head dim"
            )
    if block_table is not None:
        block_table = block_table.to(device=q.device, dtype=torch.int32)
        if block_table.dim() == 2 and block_table.stride(-1) != 1:
            block_table = block_table.contiguous()
    if (q_norm_weight is not None or rope_cos is not None) and write_kv and _overlaps(k_new, k_cache):
        # k_new would be read (and transformed) by some programs after others wrote the
        # transformed rows into the same memory.
        raise ValueError("k_new must not alias k_cache when the prologue is fused")
    cache_seqlens = cache_seqlens.to(device=q.device, dtype=torch.int32)
    if max_cache_len is None:
        max_cache_len = int(cache_seqlens.max()) if cache_seqlens.numel() else 0
    elif not q.is_cuda and int(cache_seqlens.max()) > max_cache_len:
        raise ValueError("max_cache_len is smaller than a cache length")
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    grid, kwargs = decode_launch_args(
        q,
        k_new,
        v_new,
        k_cache,
        v_cache,
        cache_seqlens,
        out,
        group=mask_group(mask, frame_tokens),
        max_cache_len=max_cache_len,
        scale=scale,
        write_kv=write_kv,
        q_norm_weight=q_norm_weight,
        k_norm_weight=k_norm_weight,
        norm_eps=norm_eps,
        rope_cos=rope_cos,
        rope_sin=rope_sin,
        block_table=block_table,
        page_size=page_size,
        config=config,
    )
    _launch(grid, kwargs)
    return out


# --------------------------------------------------------------------------------------------
# torch reference
# --------------------------------------------------------------------------------------------


flash_decode_reference = attention_decode_reference  # the torch reference is attention.py's
