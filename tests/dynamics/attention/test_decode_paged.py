"""Paged decode under TRITON_INTERPRET=1: the KV cache lives in pages of a pool, named per batch row
by a block table (``flash_decode(..., block_table=, page_size=)``).

Every check builds the same logical caches twice: padded (B, H, Tmax, D) and paged (pages shuffled
across a pool whose unused rows and pages are NaN, so a read outside the table or past ``L_b``
poisons the output). References: fp32 SDPA with the contract's boolean mask on the logical cache
(``_kernel_testutil.sdpa_ref``), the unpaged kernel, and the torch reference's paged path.
Tolerances: ``_kernel_testutil.TOL`` (the interpreter computes in fp32, what is left is the
output's rounding to its dtype).
"""

from __future__ import annotations

import pytest
import torch
from _kernel_testutil import DTYPES, TOL, assert_close, frame_angles, model_prologue, rand, sdpa_ref

from worldserve.dynamics.attention import backend as A
from worldserve.dynamics.attention.kernels.flash_decode import flash_decode

NAN = float("nan")


def _paged_pool(kc, lens, Tn, page_size, *, token_major, spare_pages=3, seed=0):
    """Scatter logical caches kc (B, Hkv, >= max L, D) rows [0, L_b) into shuffled pages of a NaN pool.
    Returns (k pool (P, Hkv, page, D) view, block table (B, max_pages) int32, per-row page lists).
    Each batch row gets ceil((L_b + Tn) / page) pages (room for the new rows); table entries past
    those point at a NaN page nobody may read."""
    B, Hkv, _, D = kc.shape
    need = [-(-(L + Tn) // page_size) for L in lens]
    P = sum(need) + spare_pages
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(P, generator=g).tolist()
    if token_major:  # the model's PagePool layout: (P, page, Hkv, D) storage viewed as (P, Hkv, page, D)
        pool = torch.full((P, page_size, Hkv, D), NAN, dtype=kc.dtype).transpose(1, 2)
    else:
        pool = torch.full((P, Hkv, page_size, D), NAN, dtype=kc.dtype)
    max_pages = max(need) + 1
    bt = torch.full((B, max_pages), perm[-1], dtype=torch.int32)  # the last shuffled page stays unused (NaN)
    pages, i = [], 0
    for b, L in enumerate(lens):
        mine = perm[i : i + need[b]]
        i += need[b]
        bt[b, : need[b]] = torch.tensor(mine, dtype=torch.int32)
        pages.append(mine)
        for r in range(L):
            pool[mine[r // page_size], :, r % page_size] = kc[b, :, r]
    return pool, bt, pages


def _logical_rows(pool, pages, start, stop, page_size):
    """Rows [start, stop) of one batch row's logical cache, (Hkv, n, D)."""
    if stop <= start:
        return pool.new_empty(pool.shape[1], 0, pool.shape[3])
    return torch.stack([pool[pages[r // page_size], :, r % page_size] for r in range(start, stop)], dim=1)


def _setup(B, H, D, Tn, lens, page_size, dtype, token_major):
    q, k_new, v_new = (rand(B, H, Tn, D, dtype=dtype) for _ in range(3))
    Lmax = max(lens) + 1
    kc, vc = rand(B, H, Lmax, D, dtype=dtype), rand(B, H, Lmax, D, dtype=dtype)
    kp, bt, pages = _paged_pool(kc, lens, Tn, page_size, token_major=token_major)
    vp, bt2, _ = _paged_pool(vc, lens, Tn, page_size, token_major=token_major)
    assert torch.equal(bt, bt2)
    return q, k_new, v_new, kc, vc, kp, vp, bt, pages


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("prologue", (False, True), ids=("plain", "norm+rope"))
@pytest.mark.parametrize("write_kv", (True, False), ids=("write", "nowrite"))
def test_paged_matches_reference_and_unpaged(dtype, prologue, write_kv):
    """Uneven lengths 0, 37, 101 (none a multiple of the 32-row tile), pages of 40 rows (not a
    multiple of the tile either: tiles straddle pages), a frame of 24 new tokens."""
    B, H, D, Tn, ps = 3, 2, 64, 24, 40
    lens = [0, 37, 101]
    q, k_new, v_new, kc, vc, kp, vp, bt, pages = _setup(B, H, D, Tn, lens, ps, dtype, token_major=prologue)
    kp0, vp0 = kp.clone(), vp.clone()
    lens_t = torch.tensor(lens, dtype=torch.int32)
    pro = {}
    if prologue:
        w1, w2 = (torch.rand(D) + 0.5).to(dtype), (torch.rand(D) + 0.5).to(dtype)
        cos, sin = frame_angles(Tn, Tn, D, first_frame=11, batch=B)
        pro = dict(q_norm_weight=w1, k_norm_weight=w2, rope_cos=cos, rope_sin=sin)
    out = flash_decode(
        q, k_new, v_new, kp, vp, lens_t, frame_tokens=Tn, write_kv=write_kv, block_table=bt, page_size=ps, **pro
    )

    # unpaged kernel on the same logical caches (padded, NaN past L_b)
    Tmax = max(lens) + Tn
    kpad = torch.full((B, H, Tmax, D), NAN, dtype=dtype)
    vpad = torch.full((B, H, Tmax, D), NAN, dtype=dtype)
    for b, L in enumerate(lens):
        kpad[b, :, :L], vpad[b, :, :L] = kc[b, :, :L], vc[b, :, :L]
    out_pad = flash_decode(q, k_new, v_new, kpad, vpad, lens_t, frame_tokens=Tn, write_kv=write_kv, **pro)
    assert_close(out, out_pad.float(), dtype, msg="paged vs unpaged kernel")

    for b, L in enumerate(lens):
        qb, kb = q[b : b + 1], k_new[b : b + 1]
        if prologue:
            qb = model_prologue(qb, pro["q_norm_weight"], cos[b : b + 1], sin[b : b + 1])
            kb = model_prologue(kb, pro["k_norm_weight"], cos[b : b + 1], sin[b : b + 1])
        keys = torch.cat((kc[b : b + 1, :, :L].float(), kb.float()), dim=2)
        vals = torch.cat((vc[b : b + 1, :, :L].float(), v_new[b : b + 1].float()), dim=2)
        ref = sdpa_ref(qb, keys, vals, frame_tokens=Tn, mask="frame_causal", q_start=L)
        assert_close(out[b : b + 1], ref, dtype, msg=f"session {b}, cache length {L}")
        if write_kv:  # the new rows went to the pages the table names, after the prologue
            got_k = _logical_rows(kp, pages[b], L, L + Tn, ps)
            got_v = _logical_rows(vp, pages[b], L, L + Tn, ps)
            atol, rtol = TOL[dtype]
            torch.testing.assert_close(got_k.float(), kb[0].float(), atol=atol, rtol=rtol)
            assert torch.equal(got_v, v_new[b])
            # and the padded kernel wrote the same
            torch.testing.assert_close(got_k.float(), kpad[b, :, L : L + Tn].float(), atol=atol, rtol=rtol)
        # cached rows never change
        assert torch.equal(_logical_rows(kp, pages[b], 0, L, ps), kc[b, :, :L])
    if not write_kv:
        assert torch.equal(kp.nan_to_num(7), kp0.nan_to_num(7)) and torch.equal(vp.nan_to_num(7), vp0.nan_to_num(7))
    else:  # nothing outside the new rows was written: every other pool row is as before
        touched = torch.zeros(kp.shape[0], ps, dtype=torch.bool)
        for b, L in enumerate(lens):
            for r in range(L, L + Tn):
                touched[pages[b][r // ps], r % ps] = True
        keep = ~touched
        for now, before in ((kp, kp0), (vp, vp0)):
            a, c = now.transpose(1, 2)[keep], before.transpose(1, 2)[keep]  # (rows, H, D)
            assert torch.equal(a.nan_to_num(7), c.nan_to_num(7))


def test_cfg_rows_share_one_sessions_pages():
    """Batch rows 0/2 and 1/3 are the conditional and unconditional copies of two sessions: the
    same block table rows and lengths, different queries and new keys, write_kv off."""
    H, D, Tn, ps = 2, 32, 16, 16
    lens = [32, 48]
    q, k_new, v_new = (rand(4, H, Tn, D) for _ in range(3))
    kc, vc = rand(2, H, 49, D), rand(2, H, 49, D)
    kp, bt, pages = _paged_pool(kc, lens, Tn, ps, token_major=True)
    vp, _, _ = _paged_pool(vc, lens, Tn, ps, token_major=True)
    kp0 = kp.clone()
    bt4, lens4 = bt.repeat(2, 1), torch.tensor(lens * 2, dtype=torch.int32)
    out = flash_decode(q, k_new, v_new, kp, vp, lens4, frame_tokens=Tn, write_kv=False, block_table=bt4, page_size=ps)
    for row in range(4):
        s, L = row % 2, lens[row % 2]
        keys = torch.cat((kc[s : s + 1, :, :L], k_new[row : row + 1]), dim=2)
        vals = torch.cat((vc[s : s + 1, :, :L], v_new[row : row + 1]), dim=2)
        assert_close(
            out[row : row + 1],
            sdpa_ref(q[row : row + 1], keys, vals, frame_tokens=Tn, mask="frame_causal", q_start=L),
            torch.float32,
            msg=f"row {row}",
        )
    assert torch.equal(kp.nan_to_num(7), kp0.nan_to_num(7))
    # the torch reference's paged path (gathers each shared session once) agrees
    ref = A.attention_decode_reference(
        q, k_new, v_new, kp, vp, lens4, frame_tokens=Tn, write_kv=False, block_table=bt4, page_size=ps
    )
    assert_close(out, ref, torch.float32)


@pytest.mark.parametrize("token_major", (False, True), ids=("head-major", "token-major"))
def test_one_frame_per_page_decode_chain_equals_prefill(token_major):
    """The model's use: pages of one frame (F = 72 tokens, not a multiple of the tile), frames
    decoded one by one from an empty cache with the fused prologue, each committed into its page
    (write_kv) in a shuffled order of pages == one frame-causal prefill over all frames."""
    from worldserve.dynamics.attention.kernels.flash_prefill import flash_attention

    B, H, D, F, n = 1, 2, 32, 72, 3
    T = n * F
    q, k, v = (rand(B, H, T, D) for _ in range(3))
    qw, kw = torch.rand(D) + 0.5, torch.rand(D) + 0.5
    cos, sin = frame_angles(T, F, D, first_frame=5, batch=B)
    pro = dict(q_norm_weight=qw, k_norm_weight=kw)
    prefill = flash_attention(q, k, v, frame_tokens=F, rope_cos=cos, rope_sin=sin, **pro)
    P = 5
    if token_major:
        kp = torch.full((P, F, H, D), NAN).transpose(1, 2)
        vp = torch.full((P, F, H, D), NAN).transpose(1, 2)
    else:
        kp, vp = torch.full((P, H, F, D), NAN), torch.full((P, H, F, D), NAN)
    bt = torch.tensor([[3, 0, 4]], dtype=torch.int32)
    for i in range(n):
        s = slice(i * F, (i + 1) * F)
        out = flash_decode(
            q[:, :, s],
            k[:, :, s],
            v[:, :, s],
            kp,
            vp,
            torch.tensor([i * F], dtype=torch.int32),
            frame_tokens=F,
            rope_cos=cos[:, s],
            rope_sin=sin[:, s],
            block_table=bt,
            page_size=F,
            **pro,
        )
        assert_close(out, prefill[:, :, s].float(), torch.float32, msg=f"frame {i}")
    km = model_prologue(k, kw, cos, sin)
    for i, page in enumerate((3, 0, 4)):
        torch.testing.assert_close(kp[page], km[0, :, i * F : (i + 1) * F], atol=2e-5, rtol=2e-5)
        assert torch.equal(vp[page], v[0, :, i * F : (i + 1) * F])
    assert torch.isnan(kp[1]).all() and torch.isnan(kp[2]).all()  # pages not in the table untouched


@pytest.mark.parametrize("prologue", ("none", "fused", "rope_only"))
def test_attention_decode_paged_backends_agree_and_record_the_kernel(prologue):
    B, H, D, Tn, ps = 2, 2, 64, 16, 16
    lens = [16, 35]
    q, k_new, v_new, kc, vc, kp, vp, bt, pages = _setup(B, H, D, Tn, lens, ps, torch.float32, token_major=True)
    cos, sin = frame_angles(Tn, Tn, D, first_frame=9, batch=B)
    w1, w2 = torch.rand(D) + 0.5, torch.rand(D) + 0.5
    kw = {
        "none": {},
        "fused": dict(q_norm_weight=w1, k_norm_weight=w2, rope_cos=cos, rope_sin=sin),
        "rope_only": dict(rope_cos=cos, rope_sin=sin),
    }[prologue]
    lens_t = torch.tensor(lens, dtype=torch.int32)
    kp2, vp2 = kp.clone(), vp.clone()
    before = A.decode_counts()
    with A.use_backend("sdpa"):
        assert A.resolve_backend(q) == "sdpa"
        ref = A.attention_decode(q, k_new, v_new, kp2, vp2, lens_t, frame_tokens=Tn, block_table=bt, page_size=ps, **kw)
        assert A.last_decode() == ("sdpa", "sdpa")
    with A.use_backend("triton"):
        assert A.resolve_backend(q) == "triton"
        out = A.attention_decode(q, k_new, v_new, kp, vp, lens_t, frame_tokens=Tn, block_table=bt, page_size=ps, **kw)
        assert A.last_decode() == ("triton", "flash_decode_paged")
    after = A.decode_counts()
    assert after.get(("triton", "flash_decode_paged"), 0) - before.get(("triton", "flash_decode_paged"), 0) == 1
    assert after.get(("sdpa", "sdpa"), 0) - before.get(("sdpa", "sdpa"), 0) == 1
    assert_close(out, ref, torch.float32)
    torch.testing.assert_close(kp.nan_to_num(7), kp2.nan_to_num(7), atol=1e-5, rtol=1e-5)
    assert torch.equal(vp.nan_to_num(7), vp2.nan_to_num(7))


def test_resolve_backend_without_a_tensor(monkeypatch):
    monkeypatch.delenv(A.BACKEND_ENV, raising=False)
    monkeypatch.setattr(A, "_triton_failed", None)
    assert A.resolve_backend(device="cpu", dtype=torch.bfloat16, head_dim=64) == "sdpa"
    assert A.resolve_backend(device="cuda", dtype=torch.bfloat16, head_dim=64) == "triton"
    assert A.resolve_backend(device="cuda", dtype=torch.float32, head_dim=64) == "sdpa"
    assert A.resolve_backend(device="cuda", dtype=torch.bfloat16, head_dim=96) == "sdpa"
    with A.use_backend("sdpa"):
        assert A.resolve_backend(device="cuda", dtype=torch.bfloat16, head_dim=64) == "sdpa"
    with A.use_backend("triton"):
        assert A.resolve_backend(device="cpu", dtype=torch.float32, head_dim=80) == "triton"
    monkeypatch.setattr(A, "_triton_failed", "boom")
    assert A.resolve_backend(device="cuda", dtype=torch.bfloat16, head_dim=64) == "sdpa"
    assert A.decode_kernel_name("triton", True) == "flash_decode_paged"
    assert A.decode_kernel_name("sdpa", True) == "sdpa"
    with pytest.raises(ValueError):
        A.resolve_backend()


def test_paged_argument_checks():
    q = rand(1, 1, 8, 32)
    pool = rand(4, 1, 8, 32)
    bt = torch.tensor([[0, 1]], dtype=torch.int32)
    lens = torch.tensor([4], dtype=torch.int32)
    with pytest.raises(ValueError, match="cache too small"):  # 2 pages of 8 rows < 12 + 8
        flash_decode(
            q,
            q,
            q,
            pool,
            pool.clone(),
            torch.tensor([12], dtype=torch.int32),
            frame_tokens=8,
            block_table=bt,
            page_size=8,
        )
    with pytest.raises(ValueError, match="page_size"):
        flash_decode(q, q, q, pool, pool.clone(), lens, frame_tokens=8, block_table=bt, page_size=16)
    with pytest.raises(ValueError, match="block_table"):
        flash_decode(q, q, q, pool, pool.clone(), lens, frame_tokens=8, block_table=bt.repeat(3, 1), page_size=8)
    with pytest.raises(ValueError, match="both block_table and page_size"):
        A.attention_decode(q, q, q, pool, pool.clone(), lens, frame_tokens=8, block_table=bt)
    with A.use_backend("sdpa"), pytest.raises(ValueError, match="outside the pool"):
        A.attention_decode(
            q,
            q,
            q,
            pool,
            pool.clone(),
            lens,
            frame_tokens=8,
            block_table=torch.tensor([[0, 9]], dtype=torch.int32),
            page_size=8,
        )
