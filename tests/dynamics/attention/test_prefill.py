"""Prefill kernel (padded batches) under TRITON_INTERPRET=1 against SDPA with an explicit boolean mask.

Tolerances: see ``_kernel_testutil.TOL`` (fp32 2e-5, fp16 2e-3, bf16 2e-2; atol = rtol).
"""

from __future__ import annotations

import math

import pytest
import torch
from _kernel_testutil import DTYPES, assert_close, frame_angles, model_prologue, rand, sdpa_ref

from worldserve.dynamics.attention.kernels._common import TileConfig
from worldserve.dynamics.attention.kernels.flash_prefill import flash_attention, flash_attention_reference

MASKS = ("full", "causal", "frame_causal")


@pytest.mark.parametrize("head_dim", (32, 64, 128))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mask", MASKS)
def test_every_mask_dtype_and_head_dim(mask, dtype, head_dim):
    # 4 frames of 24 tokens: frame edges fall inside the 32-wide tiles
    B, H, F, T = 2, 2, 24, 96
    q, k, v = (rand(B, H, T, head_dim, dtype=dtype) for _ in range(3))
    out = flash_attention(q, k, v, frame_tokens=F, mask=mask)
    assert_close(out, sdpa_ref(q, k, v, frame_tokens=F, mask=mask), dtype)


@pytest.mark.parametrize("q_start,tq", [(0, 40), (13, 40), (56, 40), (95, 1), (None, 17)])
@pytest.mark.parametrize("mask", MASKS)
def test_query_offsets(mask, q_start, tq):
    """Queries need not be aligned to the end of the keys (q_start), nor start on a frame edge."""
    B, H, D, F, Tk = 1, 2, 64, 24, 96
    q, k, v = rand(B, H, tq, D), rand(B, H, Tk, D), rand(B, H, Tk, D)
    out = flash_attention(q, k, v, frame_tokens=F, mask=mask, q_start=q_start)
    assert_close(out, sdpa_ref(q, k, v, frame_tokens=F, mask=mask, q_start=q_start), torch.float32)


@pytest.mark.parametrize("frame_tokens", (1, 16, 32, 50, 200))
@pytest.mark.parametrize("cfg", [TileConfig(16, 16), TileConfig(32, 64), TileConfig(64, 16)], ids=str)
def test_frame_sizes_and_tiles(frame_tokens, cfg):
    """Frames smaller, equal, larger than the tiles, and not multiples of them."""
    B, H, D, T = 1, 2, 32, 150
    q, k, v = (rand(B, H, T, D) for _ in range(3))
    out = flash_attention(q, k, v, frame_tokens=frame_tokens, mask="frame_causal", config=cfg)
    assert_close(out, sdpa_ref(q, k, v, frame_tokens=frame_tokens, mask="frame_causal"), torch.float32)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_strided_inputs(dtype):
    """The model's layout: q, k, v are views of one (B, T, 3, H, D) projection, transposed to
    (B, H, T, D) -- no copy; plus a head dim with stride 2 (copied by the wrapper)."""
    B, T, H, D, F = 2, 72, 3, 64, 24
    qkv = rand(B, T, 3, H, D, dtype=dtype)
    q, k, v = (x.transpose(1, 2) for x in qkv.unbind(2))
    assert not q.is_contiguous() and q.stride(-1) == 1
    out = flash_attention(q, k, v, frame_tokens=F, mask="frame_causal")
    assert_close(out, sdpa_ref(q, k, v, frame_tokens=F, mask="frame_causal"), dtype)

    wide = rand(B, H, T, 2 * D, dtype=dtype)
    qs = wide[..., ::2]  # head-dim stride 2
    out = flash_attention(qs, k, v, frame_tokens=F, mask="causal")
    assert_close(out, sdpa_ref(qs, k, v, frame_tokens=F, mask="causal"), dtype)


def test_grouped_query_attention():
    B, H, Hkv, T, D, F = 2, 4, 2, 64, 32, 16
    q, k, v = rand(B, H, T, D), rand(B, Hkv, T, D), rand(B, Hkv, T, D)
    out = flash_attention(q, k, v, frame_tokens=F, mask="frame_causal")
    assert_close(out, sdpa_ref(q, k, v, frame_tokens=F, mask="frame_causal"), torch.float32)


@pytest.mark.parametrize("head_dim", (48, 80))
def test_head_dims_that_are_not_powers_of_two(head_dim):
    q, k, v = (rand(1, 2, 50, head_dim) for _ in range(3))
    out = flash_attention(q, k, v, frame_tokens=10, mask="frame_causal")
    assert_close(out, sdpa_ref(q, k, v, frame_tokens=10, mask="frame_causal"), torch.float32)


def test_explicit_scale():
    q, k, v = (rand(1, 2, 40, 64) for _ in range(3))
    out = flash_attention(q, k, v, frame_tokens=8, mask="causal", scale=0.3)
    assert_close(out, sdpa_ref(q, k, v, frame_tokens=8, mask="causal", scale=0.3), torch.float32)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("mask,q_start", [("frame_causal", None), ("frame_causal", 24), ("full", None)])
def test_fused_prologue_equals_model_ops(dtype, mask, q_start):
    """Fused QK RMSNorm + RoPE on load == the model's F.rms_norm + rotate-half RoPE, then SDPA.
    Angles as in the model: per absolute frame index (frames start at 1000 here)."""
    B, H, D, F, Tk = 2, 2, 64, 24, 96
    tq = Tk if q_start is None else 48
    q, k, v = rand(B, H, tq, D, dtype=dtype), rand(B, H, Tk, D, dtype=dtype), rand(B, H, Tk, D, dtype=dtype)
    qw, kw = (torch.rand(D) + 0.5).to(dtype), (torch.rand(D) + 0.5).to(dtype)
    cos, sin = frame_angles(Tk, F, D, first_frame=1000, batch=B)  # (B, Tk, D/2) per key row
    out = flash_attention(
        q,
        k,
        v,
        frame_tokens=F,
        mask=mask,
        q_start=q_start,
        q_norm_weight=qw,
        k_norm_weight=kw,
        rope_cos=cos,
        rope_sin=sin,
    )
    qs = Tk - tq if q_start is None else q_start
    qm = model_prologue(q, qw, cos[:, qs : qs + tq], sin[:, qs : qs + tq]).to(dtype)
    km = model_prologue(k, kw, cos, sin).to(dtype)
    assert_close(out, sdpa_ref(qm, km, v, frame_tokens=F, mask=mask, q_start=q_start), dtype)
    # and the kernels' own unfused reference agrees
    ref = flash_attention_reference(
        q.float(),
        k.float(),
        v.float(),
        frame_tokens=F,
        mask=mask,
        q_start=q_start,
        q_norm_weight=qw,
        k_norm_weight=kw,
        rope_cos=cos,
        rope_sin=sin,
    )
    assert_close(out, ref, dtype)


# ------------------------------------------------------------------------------------------------
# masked blocks are skipped


@pytest.mark.parametrize("cfg", [TileConfig(32, 32), TileConfig(16, 64)], ids=str)
@pytest.mark.parametrize("frame_tokens", (24, 32))
@pytest.mark.parametrize("mask", ("frame_causal", "causal"))
def test_future_frames_are_never_read(mask, frame_tokens, cfg):
    """Queries of frames 0..2 against keys of frames 0..4 whose frames 3 and 4 are NaN. A kernel
    that loaded those blocks and masked them would produce NaN (0 * NaN in P @ V); ours skips
    them, so the output is finite and equals attention over frames 0..2 alone."""
    B, H, D, F = 1, 2, 32, frame_tokens
    q = rand(B, H, 3 * F, D)
    k, v = rand(B, H, 5 * F, D), rand(B, H, 5 * F, D)
    k[:, :, 3 * F :] = float("nan")
    v[:, :, 3 * F :] = float("nan")
    out = flash_attention(q, k, v, frame_tokens=F, mask=mask, q_start=0, config=cfg)
    assert torch.isfinite(out).all()
    ref = sdpa_ref(q, k[:, :, : 3 * F], v[:, :, : 3 * F], frame_tokens=F, mask=mask, q_start=0)
    assert_close(out, ref, torch.float32)


def test_nan_keys_inside_the_visible_range_do_propagate():
    """Control for the test above: the same NaN in a visible frame does reach the output (the
    rows that see it; rows of other frames sharing a straddling tile may get it too, 0 * NaN)."""
    F = 24
    q, k, v = rand(1, 1, 3 * F, 32), rand(1, 1, 5 * F, 32), rand(1, 1, 5 * F, 32)
    v[:, :, 2 * F] = float("nan")
    out = flash_attention(q, k, v, frame_tokens=F, mask="frame_causal", q_start=0)
    assert torch.isnan(out[:, :, 2 * F :]).all() and torch.isfinite(out[:, :, :F]).all()


def _expected_tiles(T, F, bm, bn, mask):
    """Key tiles a query block must compute, from first principles: the tiles overlapping
    [0, end of the last key any of its rows may see); and the subset that needs a mask."""
    out = []
    for m0 in range(0, T, bm):
        rows = range(m0, min(m0 + bm, T))
        ends = [T if mask == "full" else min(T, (r // F + 1) * F) for r in rows]
        hi, lo = max(ends), min(ends)
        out.append((lo // bn, math.ceil(hi / bn) - lo // bn))
    return out


@pytest.mark.parametrize("frame_tokens", (24, 64))
@pytest.mark.parametrize("mask", ("frame_causal", "full"))
def test_tile_counts_prove_skipping(mask, frame_tokens):
    """The kernel reports (unmasked, masked) tiles computed per program (test-only stats hook):
    exactly the tiles that hold a visible key; masked tiles only where a frame edge cuts a tile."""
    B, H, D, T, bm, bn = 1, 2, 32, 256, 32, 32
    cfg = TileConfig(bm, bn)
    q, k, v = (rand(B, H, T, D) for _ in range(3))
    n_m = T // bm
    stats = torch.zeros(n_m * B * H, 2, dtype=torch.int32)
    flash_attention(q, k, v, frame_tokens=frame_tokens, mask=mask, config=cfg, stats=stats)
    got = stats.view(B * H, n_m, 2)
    want = torch.tensor(_expected_tiles(T, frame_tokens, bm, bn, mask), dtype=torch.int32)
    for bh in range(B * H):
        assert torch.equal(got[bh], want), (got[bh].tolist(), want.tolist())
    computed, dense = int(want.sum()), n_m * (T // bn)
    if mask == "full":
        assert computed == dense and int(want[:, 1].sum()) == 0
    else:
        assert computed <= dense * 0.7  # (n+1)/2n of the tiles of a dense kernel for n frames
        if frame_tokens % bn == 0:
            assert int(want[:, 1].sum()) == 0  # frames aligned to tiles: no mask anywhere


def test_shape_errors():
    q = rand(1, 2, 8, 32)
    with pytest.raises(ValueError):
        flash_attention(q, rand(1, 3, 8, 32), rand(1, 3, 8, 32), frame_tokens=4)  # 2 heads vs 3 kv heads
    with pytest.raises(ValueError):
        flash_attention(q, q, q, frame_tokens=4, mask="diagonal")
    with pytest.raises(ValueError):
        flash_attention(q, q, q, frame_tokens=4, q_norm_weight=torch.ones(32))  # k weight missing
