"""Shared helpers of the kernel tests: the SDPA reference with an explicit boolean mask, tolerances."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from worldserve.dynamics.attention.backend import build_mask

DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Tolerances (atol, rtol) of a kernel output against fp32 SDPA on the same inputs. The
# interpreter computes in fp32 (UPCAST), so what is left is the output's rounding to its dtype
# (fp16: 2^-11 relative, bf16: 2^-8) on values of magnitude ~1, plus summation order. On a GPU,
# P is also rounded to the input dtype before P @ V, which stays within the same bounds.
TOL = {
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-2, 2e-2),
}


def sdpa_ref(q, k, v, *, frame_tokens, mask, q_start=None, scale=None):
    """fp32 torch SDPA with the explicit boolean mask of the attention contract (build_mask)."""
    q, k, v = q.float(), k.float(), v.float()
    if k.shape[1] != q.shape[1]:  # grouped-query attention: repeat kv heads
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    m = build_mask(q.shape[2], k.shape[2], frame_tokens=frame_tokens, mask=mask, q_start=q_start)
    if m is None:
        m = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=scale)


def assert_close(out, ref, dtype, msg=""):
    atol, rtol = TOL[dtype]
    assert out.dtype == dtype, (out.dtype, dtype)
    assert torch.isfinite(out.float()).all(), "non-finite output"
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol, msg=lambda m: f"{msg}\n{m}")


def rand(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


def model_prologue(x, w, cos, sin, eps=1e-6):
    """The model's own pre-attention ops, written independently of the kernels' reference:
    F.rms_norm over the head dim, then GPT-NeoX rotate-half RoPE. x (B, H, T, D), cos/sin (B, T, D/2)."""
    xf = F.rms_norm(x.float(), (x.shape[-1],), w.float(), eps)
    x1, x2 = xf.chunk(2, dim=-1)
    c, s = cos.float()[:, None], sin.float()[:, None]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


def frame_angles(n_tokens, frame_tokens, head_dim, first_frame=0, batch=1):
    """RoPE angles as the model uses them: all tokens of a frame share its absolute frame index."""
    from worldserve.dynamics.attention.kernels._common import rope_angles

    pos = (torch.arange(n_tokens) // frame_tokens + first_frame)[None].expand(batch, n_tokens)
    return rope_angles(pos, head_dim)


def start_aot_gate(log_path):
    """Start the AOT compile gate (``python -m worldserve.dynamics.attention.kernels.aot``) in a subprocess
    without TRITON_INTERPRET, output to ``log_path``. Started at the beginning of the test session
    (conftest) so that it compiles on one core while the interpreter tests run on the other."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "worldserve.dynamics.attention.kernels.aot", "--arch", "90", "80"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, log
