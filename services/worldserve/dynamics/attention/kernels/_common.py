"""Pieces shared by the attention kernels: the flash inner step, the Q/K prologue, configs.

Everything here is either a ``@triton.jit`` helper (inlined into the kernels that call it) or
plain Python used by the launchers. Import this module only after ``TRITON_INTERPRET`` has its
final value: ``triton.jit`` decides at decoration time whether a function is compiled or
interpreted (tests set it in ``tests/dynamics/attention/conftest.py``).

Conventions used by every kernel:

- Tiles are ``[BLOCK_M, BLOCK_D]`` for queries and ``[BLOCK_N, BLOCK_D]`` for keys/values, the
  head dim is the contiguous (stride 1) axis; other axes are strided, so transposed views like
  ``x.view(B, T, H, D).transpose(1, 2)`` go in without a copy.
- Softmax runs in base 2 (``exp2``) with the softmax scale folded into ``log2(e)``; the running
  max ``m``, the running sum ``l`` and the output accumulator are fp32.
- Masks are expressed per query row as one number, ``row_end``: the row sees key positions
  ``< row_end``. Full attention: ``row_end = Tk``. Token causal: ``pos + 1``. Frame-block-causal
  with frames of F tokens: ``(pos // F + 1) * F``. So all three mask kinds are the same code with
  a runtime *mask group* G (0 = full, 1 = causal, F = frame-causal): ``row_end = (pos // G + 1) * G``
  clipped to ``Tk``. That keeps the mask kind out of the constexprs (fewer compiled variants).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634

# Dtypes the compiled (GPU) kernels are built and gated for. fp32 runs in the interpreter for
# tests; on CUDA fp32 goes to SDPA unless the Triton backend is forced (then tl.dot uses tf32).
GPU_DTYPES = (torch.float16, torch.bfloat16)
# Head dims the dispatcher sends to Triton automatically (the AOT gate compiles exactly these).
GATED_HEAD_DIMS = (32, 64, 128)
MAX_HEAD_DIM = 256

TORCH_TO_TRITON = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def interpreting() -> bool:
    """True when triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def mask_group(mask: str, frame_tokens: int) -> int:
    """The runtime mask group G the kernels take (see module docstring)."""
    if mask == "full":
        return 0
    if mask == "causal":
        return 1
    if mask == "frame_causal":
        if frame_tokens < 1:
            raise ValueError(f"frame_tokens must be >= 1, got {frame_tokens}")
        return int(frame_tokens)
    raise ValueError(f"unknown mask kind {mask!r}")


def check_runnable(t: torch.Tensor, kernel) -> None:
    """Fail loudly instead of letting triton crash on a CPU tensor with a compiled kernel."""
    if t.is_cuda:
        return
    if not interpreting() or type(kernel).__name__ != "InterpretedFunction":
        raise RuntimeError(
            "Triton attention kernels need CUDA tensors, or TRITON_INTERPRET=1 set before "
            "worldserve.dynamics.attention.kernels is imported (CPU interpreter, tests only)"
        )


def block_d(head_dim: int, prologue: bool = False) -> int:
    """Tile width over the head dim: a power of two >= 16 (tl.dot needs depth >= 16); >= 32 with
    the prologue, whose two dots have depth BLOCK_D / 2."""
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head dim {head_dim} not supported (1..{MAX_HEAD_DIM})")
    if prologue and head_dim % 2:
        raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
    return max(32 if prologue else 16, triton.next_power_of_2(head_dim))


@dataclass(frozen=True)
class TileConfig:
    """One launch configuration; BLOCK_M x BLOCK_N tiles, warps and pipeline stages."""

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2

    def triton_config(self) -> triton.Config:
        return triton.Config(
            {"BLOCK_M": self.block_m, "BLOCK_N": self.block_n}, num_warps=self.num_warps, num_stages=self.num_stages
        )


# Fixed config for the interpreter: autotuning (several configs + do_bench) does not work on
# CPU, and small tiles keep the numpy work per step small and hit many frame edges in tests.
INTERPRET_CONFIG = TileConfig(32, 32, num_warps=4, num_stages=1)


def cuda_configs(head_dim: int, prologue: bool = False) -> list[TileConfig]:
    """Autotune candidates on CUDA, the first one being the default. All fit in sm_80's 164 KB of
    shared memory as well as sm_90's 227 KB (the AOT gate checks); the prologue variants stage
    the rope tables too, hence fewer pipeline stages at head dim 128."""
    if head_dim <= 64:
        return [TileConfig(128, 64, 4, 3), TileConfig(128, 128, 8, 3)]
    if prologue:
        return [TileConfig(128, 64, 8, 2), TileConfig(64, 64, 4, 2)]
    return [TileConfig(128, 64, 8, 3), TileConfig(128, 128, 8, 2)]


def default_config(head_dim: int, prologue: bool = False) -> TileConfig:
    """The config used without autotuning (interpreter, AOT gate's per-variant compile)."""
    return INTERPRET_CONFIG if interpreting() else cuda_configs(head_dim, prologue)[0]


def tune_bucket(n: int) -> int:
    """Bucket a length for the autotune key so that a growing KV cache does not retune every step."""
    return triton.next_power_of_2(max(int(n), 1))


def check_qkv_layout(name: str, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Kernels take any strides except on the head dim, which must be contiguous."""
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(t.shape)}")
    if t.dtype not in TORCH_TO_TRITON:
        raise TypeError(f"{name} dtype {t.dtype} not supported (fp16, bf16, fp32)")
    if t.stride(-1) != 1:
        t = t.contiguous()
    return t


def split_prologue(q_norm_weight, k_norm_weight, rope_cos, rope_sin) -> bool:
    """True when the fused prologue applies: the kernels fuse exactly the model's pre-attention
    ops, QK RMSNorm *and* RoPE. The kernel wrappers reject a partial set; ``attention.py``
    applies a partial set unfused in torch before calling them."""
    given = [x is not None for x in (q_norm_weight, k_norm_weight, rope_cos, rope_sin)]
    if given[0] != given[1]:
        raise ValueError("pass both q_norm_weight and k_norm_weight, or neither")
    if given[2] != given[3]:
        raise ValueError("pass both rope_cos and rope_sin, or neither")
    return all(given)


def check_rope_tables(cos: torch.Tensor, sin: torch.Tensor, shape: tuple[int, ...], head_dim: int) -> tuple[int, ...]:
    """Per-row angle tables (..., rows, D/2) with a contiguous last dim; returns the leading strides."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
    if tuple(cos.shape) != tuple(shape) or tuple(sin.shape) != tuple(shape):
        raise ValueError(f"rope tables must be {tuple(shape)}, got {tuple(cos.shape)} / {tuple(sin.shape)}")
    if cos.stride() != sin.stride() or cos.stride(-1) != 1:
        raise ValueError("rope cos/sin must have equal strides and a contiguous last dim")
    if cos.dtype not in TORCH_TO_TRITON or sin.dtype != cos.dtype:
        raise TypeError(f"rope tables must be fp16/bf16/fp32, got {cos.dtype} / {sin.dtype}")
    return tuple(cos.stride()[:-1])


# --------------------------------------------------------------------------------------------
# Q/K prologue (fused RMSNorm and RoPE on load) -- torch reference
# --------------------------------------------------------------------------------------------


def rope_angles(positions: torch.Tensor, head_dim: int, *, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin (..., D/2) fp32 at integer positions (...,): the per-row tables the kernels read.
    The kernels take per-row tables, so any position scheme works (token index, absolute frame
    index shared by all tokens of a frame, ...)."""
    inv = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim)
    ang = positions.to(torch.float64)[..., None] * inv
    return ang.cos().float(), ang.sin().float()


# --------------------------------------------------------------------------------------------
# Triton helpers (inlined into the kernels)
# --------------------------------------------------------------------------------------------


@triton.jit
def _load_rows(ptrs, row_ok, col_ok, MASK_ROWS: tl.constexpr, MASK_COLS: tl.constexpr):
    """Load a [ROWS, COLS] tile, masking only what can be out of range (constexpr-selected so that
    interior tiles compile to unmasked vector loads)."""
    if MASK_ROWS:
        if MASK_COLS:
            x = tl.load(ptrs, mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        else:
            x = tl.load(ptrs, mask=row_ok[:, None], other=0.0)
    else:
        if MASK_COLS:
            x = tl.load(ptrs, mask=col_ok[None, :], other=0.0)
        else:
            x = tl.load(ptrs)
    return x


@triton.jit
def _load_halves(
    row_ptrs,  # [ROWS, 1] pointers to column 0 of each row
    rows,  # [ROWS] row indices into the rope tables (relative to cos_base / sin_base)
    row_ok,  # [ROWS] rows that exist
    w_ptr,  # [D] RMSNorm weight
    cos_base,  # [rows, D/2] rope cos of this sequence
    sin_base,  # [rows, D/2] rope sin of this sequence
    stride_rope,  # row stride of the rope tables
    eps,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,  # BLOCK_D // 2
    MASK_ROWS: tl.constexpr,
    APPLY: tl.constexpr,  # False: just load the halves (keys that already had the prologue)
    UPCAST: tl.constexpr,
):
    """Load a q or k tile as its two halves (x1, x2) = (x[:, :D/2], x[:, D/2:]) and (APPLY) the
    model's pre-attention ops on load: RMSNorm over the head dim (times weight), then RoPE
    (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin). In fp32, cast back to the input dtype once.

    Working on halves is what makes the fused RoPE cheap: rotate-half needs no register
    permutation and no second load, and the angle tables are read at width D/2. The caller then
    computes q.k as q1.k1 + q2.k2 (two tensor-core dots of depth D/2)."""
    HALF: tl.constexpr = HEAD_DIM // 2
    offs_h = tl.arange(0, BLOCK_H)
    h_ok = offs_h < HALF
    MASK_H: tl.constexpr = BLOCK_H != HALF
    x1_raw = _load_rows(row_ptrs + offs_h[None, :], row_ok, h_ok, MASK_ROWS, MASK_H)
    x2_raw = _load_rows(row_ptrs + HALF + offs_h[None, :], row_ok, h_ok, MASK_ROWS, MASK_H)
    if not APPLY:
        if UPCAST:
            x1_raw = x1_raw.to(tl.float32)
            x2_raw = x2_raw.to(tl.float32)
        return x1_raw, x2_raw
    x1 = x1_raw.to(tl.float32)
    x2 = x2_raw.to(tl.float32)
    rstd = tl.rsqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / HEAD_DIM + eps)  # [ROWS]
    w1 = tl.load(w_ptr + offs_h, mask=h_ok, other=0.0).to(tl.float32)
    w2 = tl.load(w_ptr + HALF + offs_h, mask=h_ok, other=0.0).to(tl.float32)
    x1 = x1 * rstd[:, None] * w1[None, :]
    x2 = x2 * rstd[:, None] * w2[None, :]
    tab = rows.to(tl.int64)[:, None] * stride_rope + offs_h[None, :]
    c = _load_rows(cos_base + tab, row_ok, h_ok, MASK_ROWS, MASK_H).to(tl.float32)
    s = _load_rows(sin_base + tab, row_ok, h_ok, MASK_ROWS, MASK_H).to(tl.float32)
    y1 = x1 * c - x2 * s
    y2 = x2 * c + x1 * s
    if not UPCAST:  # (the interpreter keeps fp32: its bf16 arithmetic is broken)
        y1 = y1.to(x1_raw.dtype)
        y2 = y2.to(x1_raw.dtype)
    return y1, y2


@triton.jit
def _attn_step(
    acc,  # [BLOCK_M, BLOCK_D] fp32 output accumulator
    m_i,  # [BLOCK_M] fp32 running max (log2 domain, scaled)
    l_i,  # [BLOCK_M] fp32 running sum of exp2
    q,  # [BLOCK_M, BLOCK_D] query tile (without PROLOGUE)
    q1,  # [BLOCK_M, BLOCK_D // 2] query halves after the prologue (PROLOGUE only)
    q2,
    k_base,  # scalar pointer: key row 0 of this (sequence, kv head)
    v_base,  # scalar pointer: value row 0 of this (sequence, kv head)
    start_n,  # first key (relative to k_base) of this tile
    stride_kt,
    stride_vt,
    load_end,  # keys >= load_end are never read (beyond the last visible frame / the sequence)
    row_end,  # [BLOCK_M] keys >= row_end[i] are masked for row i (relative to k_base)
    qk_scale,  # softmax scale * log2(e)
    kw_ptr,  # [D] k RMSNorm weight (PROLOGUE)
    cos_base,  # rope tables of this sequence, row i = key i (PROLOGUE)
    sin_base,
    stride_rope,
    eps,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,  # False: every key of the tile is visible to every row, no mask at all
    HALVES: tl.constexpr,  # the kernel has the prologue: q comes as halves q1/q2, keys load as halves
    K_PROLOGUE: tl.constexpr,  # apply RMSNorm + RoPE to the key halves on load (HALVES only)
    UPCAST: tl.constexpr,
):
    """One key tile of a contiguous key sequence (rows ``k_base + i * stride_kt``)."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k_rows = k_base + offs_n.to(tl.int64)[:, None] * stride_kt  # [BLOCK_N, 1]
    v_rows = v_base + offs_n.to(tl.int64)[:, None] * stride_vt
    return _attn_step_rows(
        acc,
        m_i,
        l_i,
        q,
        q1,
        q2,
        k_rows,
        v_rows,
        offs_n,
        load_end,
        row_end,
        qk_scale,
        kw_ptr,
        cos_base,
        sin_base,
        stride_rope,
        eps,
        HEAD_DIM,
        BLOCK_D,
        BLOCK_N,
        MASKED,
        HALVES,
        K_PROLOGUE,
        UPCAST,
    )


@triton.jit
def _paged_rows(
    pool_base,  # scalar pointer: row 0 of page 0 of this kv head
    bt_base,  # [max_pages] int32 block table row of this sequence: logical page -> physical page
    rows,  # [N] logical cache rows
    rows_ok,  # [N] rows that exist (others read page 0; their loads are masked by the caller)
    page_size,  # rows per page (any positive int; not a multiple of the tile in general)
    stride_page,
    stride_row,
):
    """[N, 1] pointers to column 0 of logical cache rows ``rows`` of a paged cache: row r lives in
    physical page ``bt[r // page_size]`` at row ``r % page_size``. Computed per row, so a tile may
    straddle pages (page_size need not be a multiple of BLOCK_N)."""
    page = tl.load(bt_base + rows // page_size, mask=rows_ok, other=0)  # [N] int32
    off = page.to(tl.int64) * stride_page + (rows % page_size).to(tl.int64) * stride_row
    return pool_base + off[:, None]


@triton.jit
def _attn_step_rows(
    acc,
    m_i,
    l_i,
    q,
    q1,
    q2,
    k_rows,  # [BLOCK_N, 1] pointers to column 0 of each key row of the tile
    v_rows,  # [BLOCK_N, 1] pointers to column 0 of each value row
    offs_n,  # [BLOCK_N] key indices of the tile (relative to the sequence: masks and rope rows)
    load_end,
    row_end,
    qk_scale,
    kw_ptr,
    cos_base,
    sin_base,
    stride_rope,
    eps,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    HALVES: tl.constexpr,
    K_PROLOGUE: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """The flash inner step on one key tile given by row pointers (contiguous or paged); see
    :func:`_attn_step` for the arguments."""
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    # Loads stop at load_end, so keys of frames nobody in this block may see are never read
    # (they may be garbage, NaN, or another session's cache). Unmasked tiles load without any
    # mask (full-width vector loads).
    kv_ok = offs_n < load_end
    if HALVES:
        k1, k2 = _load_halves(
            k_rows,
            offs_n,
            kv_ok,
            kw_ptr,
            cos_base,
            sin_base,
            stride_rope,
            eps,
            HEAD_DIM,
            BLOCK_D // 2,
            MASKED,
            K_PROLOGUE,
            UPCAST,
        )
        qk = tl.dot(q1, tl.trans(k1))
        qk = tl.dot(q2, tl.trans(k2), qk)  # [BLOCK_M, BLOCK_N] fp32
    else:
        k = _load_rows(k_rows + offs_d[None, :], kv_ok, d_ok, MASKED, BLOCK_D != HEAD_DIM)  # [BLOCK_N, BLOCK_D]
        if UPCAST:
            k = k.to(tl.float32)
        qk = tl.dot(q, tl.trans(k))  # [BLOCK_M, BLOCK_N] fp32
    if MASKED:
        qk = tl.where(offs_n[None, :] < row_end[:, None], qk * qk_scale, float("-inf"))
        m_ij = tl.maximum(m_i, tl.max(qk, 1))
        # A row can have seen no key yet (all -inf so far); subtract 0 instead of -inf then,
        # otherwise -inf - -inf = NaN.
        m_sub = tl.where(m_ij == float("-inf"), 0.0, m_ij)
    else:
        qk = qk * qk_scale
        m_ij = tl.maximum(m_i, tl.max(qk, 1))
        m_sub = m_ij
    p = tl.math.exp2(qk - m_sub[:, None])
    alpha = tl.math.exp2(m_i - m_sub)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    v = _load_rows(v_rows + offs_d[None, :], kv_ok, d_ok, MASKED, BLOCK_D != HEAD_DIM)
    if UPCAST:
        v = v.to(tl.float32)
    acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, m_ij, l_i


@triton.jit
def _row_end(pos, group, seqlen_k):
    """Keys visible to a query at absolute position ``pos`` end at this (exclusive) position."""
    if group == 0:
        end = pos * 0 + seqlen_k
    else:
        end = (pos // group + 1) * group
    return tl.minimum(end, seqlen_k)
