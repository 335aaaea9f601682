"""attention.py's backend dispatch: Triton for CUDA tensors (none here), SDPA on CPU unless forced,
``use_backend`` / ``WORLDSERVE_ATTENTION``; both paths agree, including the partial prologue."""

from __future__ import annotations

import inspect

import pytest
import torch
from _kernel_testutil import assert_close, frame_angles, rand

import worldserve.dynamics.attention.kernels.flash_decode as fd
import worldserve.dynamics.attention.kernels.flash_prefill as fp
from worldserve.dynamics.attention import backend as A


@pytest.fixture
def calls(monkeypatch):
    """Count kernel wrapper calls made through attention.py."""
    seen = []
    for mod, name in ((fp, "flash_attention"), (fp, "flash_attention_varlen"), (fd, "flash_decode")):
        real = getattr(mod, name)

        def spy(*a, _real=real, _name=name, **kw):
            seen.append(_name)
            return _real(*a, **kw)

        monkeypatch.setattr(mod, name, spy)
    return seen


def test_cpu_defaults_to_sdpa_even_when_interpreting(calls, monkeypatch):
    monkeypatch.delenv(A.BACKEND_ENV, raising=False)
    q = rand(1, 2, 16, 32)
    assert A.current_backend() == "auto"
    A.attention(q, q, q, frame_tokens=8)
    A.attention_varlen(
        q[0].transpose(0, 1),
        q[0].transpose(0, 1),
        q[0].transpose(0, 1),
        torch.tensor([0, 16], dtype=torch.int32),
        torch.tensor([0, 16], dtype=torch.int32),
        frame_tokens=8,
    )
    assert calls == []


def test_use_backend_forces_triton_and_nests(calls):
    q = rand(1, 2, 16, 32)
    with A.use_backend("triton"):
        A.attention(q, q, q, frame_tokens=8)
        with A.use_backend("sdpa"):
            A.attention(q, q, q, frame_tokens=8)
            assert A.current_backend() == "sdpa"
        assert A.current_backend() == "triton"
    assert A.current_backend() == "auto"
    assert calls == ["flash_attention"]
    with pytest.raises(ValueError):
        with A.use_backend("cuda"):
            pass


def test_env_var(calls, monkeypatch):
    q = rand(1, 2, 16, 32)
    monkeypatch.setenv(A.BACKEND_ENV, "triton")
    A.attention(q, q, q, frame_tokens=8)
    assert calls == ["flash_attention"]
    monkeypatch.setenv(A.BACKEND_ENV, "bogus")
    with pytest.raises(ValueError, match="WORLDSERVE_ATTENTION"):
        A.attention(q, q, q, frame_tokens=8)


def test_forced_triton_on_cpu_without_interpreter_is_an_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q = rand(1, 1, 4, 32)
    with A.use_backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        A.attention(q, q, q, frame_tokens=4)


def test_auto_rules_for_cuda_tensors():
    """Without a GPU, check the rule itself on a stand-in object."""

    class FakeCuda:
        is_cuda = True

        def __init__(self, dtype):
            self.dtype = dtype

    assert A._use_triton(FakeCuda(torch.bfloat16), 64, False)
    assert A._use_triton(FakeCuda(torch.float16), 128, False)
    assert not A._use_triton(FakeCuda(torch.float32), 64, False)  # fp32 stays on SDPA
    assert not A._use_triton(FakeCuda(torch.bfloat16), 96, False)  # not a gated head dim
    assert not A._use_triton(FakeCuda(torch.bfloat16), 64, True)  # empty
    assert not A._use_triton(rand(1), 64, False)  # CPU


def test_public_signatures_are_backward_compatible():
    for fn, positional in (
        (A.attention, ["q", "k", "v"]),
        (A.attention_reference, ["q", "k", "v"]),
        (A.attention_varlen, ["q", "k", "v", "cu_seqlens_q", "cu_seqlens_k"]),
    ):
        params = inspect.signature(fn).parameters
        assert [n for n, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD] == positional
        assert {"frame_tokens", "mask", "scale"} <= set(params)
    assert list(inspect.signature(A.build_mask).parameters) == ["tq", "tk", "frame_tokens", "mask", "q_start", "device"]


@pytest.mark.parametrize("mask", ("full", "causal", "frame_causal"))
@pytest.mark.parametrize("prologue", ("none", "fused", "rope_only", "norm_only"))
def test_both_backends_agree(mask, prologue, calls):
    B, H, D, F, Tk, Tq = 2, 2, 64, 24, 72, 48
    q, k, v = rand(B, H, Tq, D), rand(B, H, Tk, D), rand(B, H, Tk, D)
    cos, sin = frame_angles(Tk, F, D, first_frame=5, batch=B)
    w1, w2 = torch.rand(D) + 0.5, torch.rand(D) + 0.5
    kw = {
        "none": {},
        "fused": dict(q_norm_weight=w1, k_norm_weight=w2, rope_cos=cos, rope_sin=sin),
        "rope_only": dict(rope_cos=cos, rope_sin=sin),
        "norm_only": dict(q_norm_weight=w1, k_norm_weight=w2),
    }[prologue]
    with A.use_backend("sdpa"):
        ref = A.attention(q, k, v, frame_tokens=F, mask=mask, **kw)
    with A.use_backend("triton"):
        out = A.attention(q, k, v, frame_tokens=F, mask=mask, **kw)
    assert calls == ["flash_attention"]
    assert_close(out, ref, torch.float32)


@pytest.mark.parametrize("prologue", ("none", "fused", "rope_only"))
def test_decode_backends_agree_including_cache_writes(prologue, calls):
    B, H, D, F, lens = 2, 2, 64, 16, [16, 35]
    q, k_new, v_new = (rand(B, H, F, D) for _ in range(3))
    kc, vc = rand(B, H, 64, D), rand(B, H, 64, D)
    cos, sin = frame_angles(F, F, D, first_frame=9, batch=B)
    w1, w2 = torch.rand(D) + 0.5, torch.rand(D) + 0.5
    kw = {
        "none": {},
        "fused": dict(q_norm_weight=w1, k_norm_weight=w2, rope_cos=cos, rope_sin=sin),
        "rope_only": dict(rope_cos=cos, rope_sin=sin),
    }[prologue]
    lens_t = torch.tensor(lens, dtype=torch.int32)
    kc2, vc2 = kc.clone(), vc.clone()
    with A.use_backend("sdpa"):
        ref = A.attention_decode(q, k_new, v_new, kc2, vc2, lens_t, frame_tokens=F, **kw)
    with A.use_backend("triton"):
        out = A.attention_decode(q, k_new, v_new, kc, vc, lens_t, frame_tokens=F, **kw)
    assert calls == ["flash_decode"]
    assert_close(out, ref, torch.float32)
    torch.testing.assert_close(kc, kc2, atol=1e-5, rtol=1e-5)
    assert torch.equal(vc, vc2)


@pytest.mark.parametrize("prologue", ("fused", "rope_only"))
def test_varlen_backends_agree_with_prologue(prologue, calls):
    D, F = 64, 16
    cu_q = torch.tensor([0, 16, 48], dtype=torch.int32)
    cu_k = torch.tensor([0, 48, 80], dtype=torch.int32)
    q, k, v = rand(48, 2, D), rand(80, 2, D), rand(80, 2, D)
    cos = torch.cat([frame_angles(48, F, D, first_frame=3)[0][0], frame_angles(32, F, D, first_frame=0)[0][0]])
    sin = torch.cat([frame_angles(48, F, D, first_frame=3)[1][0], frame_angles(32, F, D, first_frame=0)[1][0]])
    w1, w2 = torch.rand(D) + 0.5, torch.rand(D) + 0.5
    kw = dict(rope_cos=cos, rope_sin=sin)
    if prologue == "fused":
        kw.update(q_norm_weight=w1, k_norm_weight=w2)
    with A.use_backend("sdpa"):
        ref = A.attention_varlen(q, k, v, cu_q, cu_k, frame_tokens=F, **kw)
    with A.use_backend("triton"):
        out = A.attention_varlen(q, k, v, cu_q, cu_k, frame_tokens=F, **kw)
    assert calls == ["flash_attention_varlen"]
    assert_close(out, ref, torch.float32)


def test_kernel_failure_in_auto_mode_falls_back_to_sdpa_once(monkeypatch):
    monkeypatch.delenv(A.BACKEND_ENV, raising=False)
    monkeypatch.setattr(A, "_triton_failed", None)

    def broken():
        raise RuntimeError("out of resources: shared memory")

    with pytest.warns(RuntimeWarning, match="using torch SDPA from now on"):
        assert A._guarded(broken) is None
    assert "shared memory" in A._triton_failed

    class FakeCuda:
        is_cuda = True
        dtype = torch.bfloat16

    assert not A._use_triton(FakeCuda(), 64, False)  # auto stays on SDPA from now on
    monkeypatch.setattr(A, "_triton_failed", None)
    with pytest.raises(ValueError):  # the caller's mistakes are not swallowed
        A._guarded(lambda: (_ for _ in ()).throw(ValueError("bad shape")))
    with A.use_backend("triton"), pytest.raises(RuntimeError):  # forced: raise
        A._guarded(broken)
    assert A._triton_failed is None
