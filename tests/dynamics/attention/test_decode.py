"""Decode kernel under TRITON_INTERPRET=1: one new frame against KV caches of uneven lengths.

Reference: per session, cached keys ``[0, L)`` + the new frame's keys, SDPA with the explicit
boolean mask of the contract at ``q_start = L``. Tolerances: ``_kernel_testutil.TOL``.
"""

from __future__ import annotations

import pytest
import torch
from _kernel_testutil import DTYPES, TOL, assert_close, frame_angles, model_prologue, rand, sdpa_ref

from worldserve.dynamics.attention.kernels._common import TileConfig
from worldserve.dynamics.attention.kernels.flash_decode import flash_decode, flash_decode_reference
from worldserve.dynamics.attention.kernels.flash_prefill import flash_attention

NAN = float("nan")


def _caches(B, Hkv, Tmax, D, lens, dtype):
    """Caches with valid rows [0, L_b) and NaN everywhere else (unused capacity must never be read)."""
    kc, vc = rand(B, Hkv, Tmax, D, dtype=dtype), rand(B, Hkv, Tmax, D, dtype=dtype)
    for b, L in enumerate(lens):
        kc[b, :, L:] = NAN
        vc[b, :, L:] = NAN
    return kc, vc


def _check_session(out, q, k_new, v_new, kc0, vc0, L, b, frame_tokens, mask, dtype):
    keys = torch.cat((kc0[b : b + 1, :, :L], k_new[b : b + 1]), dim=2)
    vals = torch.cat((vc0[b : b + 1, :, :L], v_new[b : b + 1]), dim=2)
    ref = sdpa_ref(q[b : b + 1], keys, vals, frame_tokens=frame_tokens, mask=mask, q_start=L)
    assert_close(out[b : b + 1], ref, dtype, msg=f"session {b}, cache length {L}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mask", ("full", "causal", "frame_causal"))
def test_uneven_caches(mask, dtype):
    """Cache lengths 0, 37, 101 (no multiple of the 32-wide tile), capacity 160, frames of 24."""
    B, H, D, F, Tmax = 3, 2, 64, 24, 160
    lens = [0, 37, 101]
    q, k_new, v_new = (rand(B, H, F, D, dtype=dtype) for _ in range(3))
    kc, vc = _caches(B, H, Tmax, D, lens, dtype)
    kc0, vc0 = kc.clone(), vc.clone()
    out = flash_decode(q, k_new, v_new, kc, vc, torch.tensor(lens, dtype=torch.int32), frame_tokens=F, mask=mask)
    for b, L in enumerate(lens):
        _check_session(out, q, k_new, v_new, kc0, vc0, L, b, F, mask, dtype)
        # new rows written, rows before untouched, capacity beyond still NaN (never written)
        assert torch.equal(kc[b, :, L : L + F], k_new[b]) and torch.equal(vc[b, :, L : L + F], v_new[b])
        assert torch.equal(kc[b, :, :L], kc0[b, :, :L]) and torch.equal(vc[b, :, :L], vc0[b, :, :L])
        assert torch.isnan(kc[b, :, L + F :].float()).all() and torch.isnan(vc[b, :, L + F :].float()).all()


@pytest.mark.parametrize("head_dim,dtype", [(32, torch.float16), (128, torch.bfloat16), (80, torch.float32)], ids=str)
def test_head_dims(head_dim, dtype):
    B, H, F, Tmax, lens = 2, 2, 16, 100, [50, 3]
    q, k_new, v_new = (rand(B, H, F, head_dim, dtype=dtype) for _ in range(3))
    kc, vc = _caches(B, H, Tmax, head_dim, lens, dtype)
    kc0, vc0 = kc.clone(), vc.clone()
    out = flash_decode(q, k_new, v_new, kc, vc, torch.tensor(lens, dtype=torch.int32), frame_tokens=F)
    for b, L in enumerate(lens):
        _check_session(out, q, k_new, v_new, kc0, vc0, L, b, F, "frame_causal", dtype)


def test_write_kv_false_leaves_the_cache_alone():
    """Sampling passes (denoising steps, CFG's unconditional branch) attend without committing."""
    B, H, D, F, lens = 2, 2, 32, 24, [10, 40]
    q, k_new, v_new = (rand(B, H, F, D) for _ in range(3))
    kc, vc = _caches(B, H, 100, D, lens, torch.float32)
    kc0, vc0 = kc.clone(), vc.clone()
    out = flash_decode(q, k_new, v_new, kc, vc, torch.tensor(lens, dtype=torch.int32), frame_tokens=F, write_kv=False)
    assert torch.equal(kc.nan_to_num(7), kc0.nan_to_num(7)) and torch.equal(vc.nan_to_num(7), vc0.nan_to_num(7))
    for b, L in enumerate(lens):
        _check_session(out, q, k_new, v_new, kc0, vc0, L, b, F, "frame_causal", torch.float32)


def test_grouped_query_attention_and_strided_inputs():
    """q/k/v of the new frame are (B, T, H, D) projections viewed as (B, H, T, D); 4 query heads
    share 2 kv heads (only one program per kv head writes the cache)."""
    B, H, Hkv, D, F, lens = 2, 4, 2, 32, 24, [5, 64]
    q = rand(B, F, H, D).transpose(1, 2)
    kv = rand(B, F, 2, Hkv, D)
    k_new, v_new = (x.transpose(1, 2) for x in kv.unbind(2))
    kc, vc = _caches(B, Hkv, 128, D, lens, torch.float32)
    kc0, vc0 = kc.clone(), vc.clone()
    out = flash_decode(
        q, k_new, v_new, kc, vc, torch.tensor(lens, dtype=torch.int32), frame_tokens=F, config=TileConfig(16, 32)
    )
    for b, L in enumerate(lens):
        _check_session(out, q, k_new, v_new, kc0, vc0, L, b, F, "frame_causal", torch.float32)
        assert torch.equal(kc[b, :, L : L + F], k_new[b])


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_fused_prologue_decode_chain_equals_prefill(dtype):
    """Frame-by-frame decode from an empty cache with fused QK RMSNorm + RoPE (cache stores the
    transformed keys) == one frame-causal prefill over all frames with the same fused prologue
    == the model's ops unfused + SDPA."""
    B, H, D, F, n = 2, 2, 64, 24, 3
    T = n * F
    q, k, v = (rand(B, H, T, D, dtype=dtype) for _ in range(3))
    qw, kw = (torch.rand(D) + 0.5).to(dtype), (torch.rand(D) + 0.5).to(dtype)
    cos, sin = frame_angles(T, F, D, first_frame=7, batch=B)
    pro = dict(q_norm_weight=qw, k_norm_weight=kw)
    prefill = flash_attention(q, k, v, frame_tokens=F, rope_cos=cos, rope_sin=sin, **pro)

    kc = torch.full((B, H, T + 5, D), NAN, dtype=dtype)
    vc = torch.full((B, H, T + 5, D), NAN, dtype=dtype)
    for i in range(n):
        s = slice(i * F, (i + 1) * F)
        lens = torch.full((B,), i * F, dtype=torch.int32)
        out = flash_decode(
            q[:, :, s],
            k[:, :, s],
            v[:, :, s],
            kc,
            vc,
            lens,
            frame_tokens=F,
            rope_cos=cos[:, s],
            rope_sin=sin[:, s],
            **pro,
        )
        assert_close(out, prefill[:, :, s].float(), dtype, msg=f"frame {i}")
    km = model_prologue(k, kw, cos, sin).to(dtype)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(kc[:, :, :T].float(), km.float(), atol=atol, rtol=rtol)
    assert torch.equal(vc[:, :, :T], v)
    qm = model_prologue(q, qw, cos, sin).to(dtype)
    assert_close(prefill, sdpa_ref(qm, km, v, frame_tokens=F, mask="frame_causal"), dtype)


def test_reference_matches_kernel_including_cache_writes():
    B, H, D, F, lens = 2, 2, 64, 16, [0, 30]
    q, k_new, v_new = (rand(B, H, F, D) for _ in range(3))
    qw, kw = torch.rand(D) + 0.5, torch.rand(D) + 0.5
    cos, sin = frame_angles(F, F, D, first_frame=3, batch=B)
    kw_ = dict(frame_tokens=F, q_norm_weight=qw, k_norm_weight=kw, rope_cos=cos, rope_sin=sin)
    kc, vc = _caches(B, H, 64, D, lens, torch.float32)
    kc2, vc2 = kc.clone(), vc.clone()
    lens_t = torch.tensor(lens, dtype=torch.int32)
    out = flash_decode(q, k_new, v_new, kc, vc, lens_t, **kw_)
    ref = flash_decode_reference(q, k_new, v_new, kc2, vc2, lens_t, **kw_)
    assert_close(out, ref, torch.float32)
    torch.testing.assert_close(kc.nan_to_num(7), kc2.nan_to_num(7), atol=1e-5, rtol=1e-5)
    assert torch.equal(vc.nan_to_num(7), vc2.nan_to_num(7))


def test_capacity_and_alias_checks():
    q = rand(1, 1, 8, 32)
    kc, vc = rand(1, 1, 20, 32), rand(1, 1, 20, 32)
    with pytest.raises(ValueError, match="cache too small"):
        flash_decode(q, q, q, kc, vc, torch.tensor([15], dtype=torch.int32), frame_tokens=8)
    w = torch.ones(32)
    cos, sin = frame_angles(8, 8, 32)
    with pytest.raises(ValueError, match="alias"):
        flash_decode(
            q,
            kc[:, :, 4:12],
            q,
            kc,
            vc,
            torch.tensor([4], dtype=torch.int32),
            frame_tokens=8,
            q_norm_weight=w,
            k_norm_weight=w,
            rope_cos=cos,
            rope_sin=sin,
        )
