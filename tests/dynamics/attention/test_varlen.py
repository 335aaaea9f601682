"""Ragged batches in one launch (cu_seqlens, packed (total, H, D)) under TRITON_INTERPRET=1.

Reference: per sequence, SDPA with the explicit boolean mask of the contract, queries aligned to
the end of the sequence's keys. Tolerances: ``_kernel_testutil.TOL``.
"""

from __future__ import annotations

import pytest
import torch
from _kernel_testutil import DTYPES, assert_close, frame_angles, model_prologue, rand, sdpa_ref

from worldserve.dynamics.attention.backend import attention_varlen, use_backend
from worldserve.dynamics.attention.kernels.flash_prefill import flash_attention_varlen, flash_attention_varlen_reference

# (queries, keys) per sequence: a decode step (one frame against a cache), an empty query set,
# a prefill (queries == keys), a short odd one
LENGTHS = [(24, 24 * 3 + 5), (0, 10), (48, 48), (7, 100)]


def _packed(lengths, H, D, dtype, Hkv=None):
    Hkv = Hkv or H
    cu_q = torch.tensor([0] + [sum(q for q, _ in lengths[: i + 1]) for i in range(len(lengths))], dtype=torch.int32)
    cu_k = torch.tensor([0] + [sum(k for _, k in lengths[: i + 1]) for i in range(len(lengths))], dtype=torch.int32)
    q = rand(int(cu_q[-1]), H, D, dtype=dtype)
    k, v = rand(int(cu_k[-1]), Hkv, D, dtype=dtype), rand(int(cu_k[-1]), Hkv, D, dtype=dtype)
    return q, k, v, cu_q, cu_k


def _check(out, q, k, v, cu_q, cu_k, frame_tokens, mask, dtype):
    for b in range(len(cu_q) - 1):
        qs, qe, ks, ke = int(cu_q[b]), int(cu_q[b + 1]), int(cu_k[b]), int(cu_k[b + 1])
        if qe == qs:
            continue
        ref = sdpa_ref(
            q[qs:qe].transpose(0, 1)[None],
            k[ks:ke].transpose(0, 1)[None],
            v[ks:ke].transpose(0, 1)[None],
            frame_tokens=frame_tokens,
            mask=mask,
        )
        assert_close(out[qs:qe].transpose(0, 1)[None], ref, dtype, msg=f"sequence {b}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mask", ("full", "causal", "frame_causal"))
def test_ragged_batch_one_launch(mask, dtype):
    q, k, v, cu_q, cu_k = _packed(LENGTHS, 2, 64, dtype)
    out = flash_attention_varlen(q, k, v, cu_q, cu_k, frame_tokens=24, mask=mask)
    _check(out, q, k, v, cu_q, cu_k, 24, mask, dtype)


def test_head_dims_gqa_and_length_hints():
    for D in (32, 128):
        q, k, v, cu_q, cu_k = _packed(LENGTHS, 4, D, torch.float16, Hkv=2)
        out = flash_attention_varlen(q, k, v, cu_q, cu_k, frame_tokens=24, max_seqlen_q=48, max_seqlen_k=100)
        _check(out, q, k, v, cu_q, cu_k, 24, "frame_causal", torch.float16)


def test_strided_packed_inputs():
    """q/k/v as views of one packed (total, 3, H, D) projection."""
    lengths = [(30, 30), (20, 50)]
    _, _, _, cu_q, cu_k = _packed(lengths, 2, 32, torch.float32)
    qkv = rand(int(cu_k[-1]), 3, 2, 32)
    q_all, k, v = qkv.unbind(1)
    # queries are the last q-length rows of each sequence
    q = torch.cat(
        [q_all[int(cu_k[b + 1]) - (int(cu_q[b + 1]) - int(cu_q[b])) : int(cu_k[b + 1])] for b in range(len(lengths))]
    )
    assert not k.is_contiguous()
    out = flash_attention_varlen(q, k, v, cu_q, cu_k, frame_tokens=10)
    _check(out, q, k, v, cu_q, cu_k, 10, "frame_causal", torch.float32)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_fused_prologue(dtype):
    """Packed angle tables (total_k, D/2) like the keys; each query uses the row of its position."""
    lengths = [(24, 72), (48, 48)]
    D, F = 64, 24
    q, k, v, cu_q, cu_k = _packed(lengths, 2, D, dtype)
    qw, kw = (torch.rand(D) + 0.5).to(dtype), (torch.rand(D) + 0.5).to(dtype)
    tabs = [frame_angles(kl, F, D, first_frame=100 * b) for b, (_, kl) in enumerate(lengths)]
    cos = torch.cat([c[0] for c, _ in tabs])
    sin = torch.cat([s[0] for _, s in tabs])
    pro = dict(q_norm_weight=qw, k_norm_weight=kw, rope_cos=cos, rope_sin=sin)
    out = flash_attention_varlen(q, k, v, cu_q, cu_k, frame_tokens=F, **pro)
    for b, (ql, kl) in enumerate(lengths):
        qs, ks = int(cu_q[b]), int(cu_k[b])
        c, s = cos[None, ks : ks + kl], sin[None, ks : ks + kl]
        km = model_prologue(k[ks : ks + kl].transpose(0, 1)[None], kw, c, s).to(dtype)
        qm = model_prologue(q[qs : qs + ql].transpose(0, 1)[None], qw, c[:, kl - ql :], s[:, kl - ql :]).to(dtype)
        ref = sdpa_ref(qm, km, v[ks : ks + kl].transpose(0, 1)[None], frame_tokens=F, mask="frame_causal")
        assert_close(out[qs : qs + ql].transpose(0, 1)[None], ref, dtype, msg=f"sequence {b}")
    ref = flash_attention_varlen_reference(q.float(), k.float(), v.float(), cu_q, cu_k, frame_tokens=F, **pro)
    assert_close(out, ref, dtype)


def test_attention_varlen_dispatch_matches_sdpa_path():
    """The model's decode call: new frames (queries) against cache + new frame, mask 'full'."""
    q, k, v, cu_q, cu_k = _packed([(16, 16 * 4), (16, 16 * 2 + 16)], 2, 64, torch.float32)
    with use_backend("sdpa"):
        ref = attention_varlen(q, k, v, cu_q, cu_k, frame_tokens=16, mask="full")
    with use_backend("triton"):
        out = attention_varlen(q, k, v, cu_q, cu_k, frame_tokens=16, mask="full")
    assert_close(out, ref, torch.float32)


def test_more_queries_than_keys_is_rejected():
    q, k, v, cu_q, cu_k = _packed([(10, 5)], 1, 32, torch.float32)
    with pytest.raises(ValueError, match="more queries than keys"):
        flash_attention_varlen(q, k, v, cu_q, cu_k, frame_tokens=4)
