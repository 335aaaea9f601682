"""Part 1 of the engine bench: the Triton decode and prefill kernels against SDPA (``--kernel-check``).

Split from :mod:`loadtest.engine_bench` (the command). torch and worldserve are imported when a
check runs, after the command has set ``TRITON_INTERPRET`` on a CPU.
"""

from __future__ import annotations

import inspect
import json
import os
import traceback
from collections.abc import Callable
from typing import Any

from loadtest.engine_bench_common import LARGE_CONFIG, _is_oom, _sync, log

# bf16 kernel tolerance of the repository's kernel tests (tests/dynamics/attention/_kernel_testutil.py):
# |out - ref_fp32| <= ATOL + RTOL * |ref_fp32| elementwise.
KERNEL_TOL = {"bfloat16": (2e-2, 2e-2), "float16": (2e-3, 2e-3), "float32": (2e-5, 2e-5)}

# --------------------------------------------------------------------------------------------------
# Part 1: kernel correctness against SDPA


def _kernel_shapes(quick_cpu: bool) -> list[tuple[str, dict]]:
    """(label, dict(F, D, H, C)) of the served default model and of the large config."""
    from worldserve.dynamics.models.transformer.config import WorldModelConfig

    if quick_cpu:  # interpreter: tiny
        return [("tiny (interpreter)", dict(F=16, D=64, H=2, C=4))]
    shapes = []
    try:
        from worldserve.common.config import model_path

        path = model_path("shipped:transformer", "dynamics")
        data = json.loads(open(os.path.join(path, "config.json")).read()) if path else {}
        default = WorldModelConfig.from_dict(data)
    except Exception:
        default = WorldModelConfig()
    for label, cfg in (("default", default), ("large", WorldModelConfig(**LARGE_CONFIG))):
        shapes.append(
            (
                f"{label} (F={cfg.frame_tokens} D={cfg.head_dim} H={cfg.n_heads} ctx={cfg.context_frames})",
                dict(F=cfg.frame_tokens, D=cfg.head_dim, H=cfg.n_heads, C=cfg.context_frames),
            )
        )
    return shapes


def _compare(name: str, got, ref_lp, ref32, tol: tuple[float, float]) -> tuple[bool, str]:
    atol, rtol = tol
    g, r32 = got.float(), ref32.float()
    err = (g - r32).abs()
    ok = bool(torch_all_finite(g)) and bool((err <= atol + rtol * r32.abs()).all())
    e_lp = (g - ref_lp.float()).abs().max().item()
    e_ref = (ref_lp.float() - r32).abs().max().item()
    line = (
        f"  {name:44s} max|triton - sdpa|={e_lp:.3e}  max|triton - sdpa_fp32|={err.max().item():.3e}  "
        f"(sdpa vs fp32: {e_ref:.3e})  tol {atol:g}+{rtol:g}*|ref|  {'PASS' if ok else 'FAIL'}"
    )
    return ok, line


def torch_all_finite(x) -> bool:
    import torch

    return bool(torch.isfinite(x).all())


def kernel_check(device: str, dtype_name: str, quick_cpu: bool) -> bool:
    """Triton decode (paged, fused prologue, KV write) and prefill (dense + varlen) vs SDPA."""
    import torch

    from worldserve.dynamics.attention import backend as A

    dt = getattr(torch, dtype_name)
    tol = KERNEL_TOL[dtype_name]
    paged = "block_table" in inspect.signature(A.attention_decode).parameters
    if not paged:
        log("  NOTE: attention_decode has no block_table/page_size yet: checking the unpaged decode call")
    all_ok = True
    gen = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dt)

    def run(backend: str, fn: Callable[[], Any]):
        with A.use_backend(backend):
            out = fn()
        _sync(device)
        return out

    for label, s in _kernel_shapes(quick_cpu):
        F_, D, H, C = s["F"], s["D"], s["H"], s["C"]
        log(f"- {label}, {dtype_name} on {device}")
        # ---- decode: S sessions with uneven windows, pages scattered over a pool ----
        S = 3
        lens_frames = [C - 1, max(1, (C - 1) // 2), 1]
        P = S * C + 2
        try:
            kpool, vpool = rnd(P, H, F_, D), rnd(P, H, F_, D)
            bt = torch.randperm(P, generator=gen)[: S * C].view(S, C).to(torch.int32).to(device)
            lens = torch.tensor([n * F_ for n in lens_frames], dtype=torch.int32, device=device)
            qn, kn = 1 + rnd(D, scale=0.1), 1 + rnd(D, scale=0.1)
            ang = torch.randn(S, F_, D // 2, generator=gen).to(device) * 3.0
            cos, sin = ang.cos(), ang.sin()  # fp32 tables, as the model passes them
            max_len = max(lens_frames) * F_

            def decode_call(q, k, v, kp, vp, bt_, lens_, cos_, sin_, write_kv):
                kw = dict(
                    frame_tokens=F_,
                    mask="frame_causal",
                    write_kv=write_kv,
                    max_cache_len=max_len,
                    q_norm_weight=qn.to(q.dtype),
                    k_norm_weight=kn.to(q.dtype),
                    norm_eps=1e-6,
                    rope_cos=cos_,
                    rope_sin=sin_,
                )
                if paged:
                    return A.attention_decode(q, k, v, kp, vp, lens_, block_table=bt_, page_size=F_, **kw)
                # unpaged: gather each row's pages into a padded (B, H, C*F, D) cache
                idx = bt_.long()
                kc = kp[idx].permute(0, 2, 1, 3, 4).flatten(2, 3).contiguous()
                vc = vp[idx].permute(0, 2, 1, 3, 4).flatten(2, 3).contiguous()
                return A.attention_decode(q, k, v, kc, vc, lens_, **kw)

            for write_kv, rows in ((False, 2), (True, 1)):  # CFG pass (two rows per session), commit pass
                B = S * rows
                # the model's layout: (B, F, H, D) projections viewed as (B, H, F, D)
                q, k, v = (rnd(B, F_, H, D).transpose(1, 2) for _ in range(3))
                args = (bt.repeat(rows, 1), lens.repeat(rows), cos.repeat(rows, 1, 1), sin.repeat(rows, 1, 1))
                outs = {}
                for backend, cast in (("triton", dt), ("sdpa", dt), ("sdpa32", torch.float32)):
                    kp, vp = kpool.clone().to(cast), vpool.clone().to(cast)
                    o = run(
                        "triton" if backend == "triton" else "sdpa",
                        lambda: decode_call(
                            q.to(cast), k.to(cast), v.to(cast), kp, vp, args[0], args[1], args[2], args[3], write_kv
                        ),
                    )
                    outs[backend] = (o, kp, vp)
                name = f"decode {'paged' if paged else 'padded'} {'commit(write_kv)' if write_kv else 'CFG'} B={B}"
                ok, line = _compare(name + " out", outs["triton"][0], outs["sdpa"][0], outs["sdpa32"][0], tol)
                log(line)
                all_ok &= ok
                if write_kv and paged:
                    ok, line = _compare(name + " K pages", outs["triton"][1], outs["sdpa"][1], outs["sdpa32"][1], tol)
                    log(line)
                    all_ok &= ok
                    ok, line = _compare(name + " V pages", outs["triton"][2], outs["sdpa"][2], outs["sdpa32"][2], tol)
                    log(line)
                    all_ok &= ok
                del outs
        except Exception as e:
            all_ok &= _report_failure("decode", e)
        # ---- prefill: C frames, frame-causal; and a ragged pair (C and C/2 frames) ----
        try:
            T = C * F_
            q, k, v = (rnd(1, T, H, D).transpose(1, 2) for _ in range(3))
            outs = {
                b: run(
                    "triton" if b == "triton" else "sdpa",
                    lambda: A.attention(q.to(c), k.to(c), v.to(c), frame_tokens=F_, mask="frame_causal"),
                )
                for b, c in (("triton", dt), ("sdpa", dt), ("sdpa32", torch.float32))
            }
            ok, line = _compare(f"prefill frame_causal T={T}", outs["triton"], outs["sdpa"], outs["sdpa32"], tol)
            log(line)
            all_ok &= ok
            outs = q = k = v = None  # freed before the next shape
        except Exception as e:
            all_ok &= _report_failure("prefill", e)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        try:
            n_fr = [C, max(1, C // 2)]
            cu = torch.tensor([0, n_fr[0] * F_, (n_fr[0] + n_fr[1]) * F_], dtype=torch.int32, device=device)
            tot, mx = int(cu[-1]), max(n_fr) * F_
            q, k, v = rnd(tot, H, D), rnd(tot, H, D), rnd(tot, H, D)
            outs = {
                b: run(
                    "triton" if b == "triton" else "sdpa",
                    lambda: A.attention_varlen(
                        q.to(c),
                        k.to(c),
                        v.to(c),
                        cu,
                        cu,
                        frame_tokens=F_,
                        mask="frame_causal",
                        max_seqlen_q=mx,
                        max_seqlen_k=mx,
                    ),
                )
                for b, c in (("triton", dt), ("sdpa", dt), ("sdpa32", torch.float32))
            }
            ok, line = _compare(f"prefill varlen frames={n_fr}", outs["triton"], outs["sdpa"], outs["sdpa32"], tol)
            log(line)
            all_ok &= ok
            outs = q = k = v = None  # freed before the next shape
        except Exception as e:
            all_ok &= _report_failure("prefill varlen", e)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    counts = {f"{b}/{k}": n for (b, k), n in A.decode_counts().items()} if hasattr(A, "decode_counts") else {}
    log(f"  decode calls by backend/kernel in this check: {counts}")
    return all_ok


def _report_failure(what: str, e: BaseException) -> bool:
    """Print a failed check; an out-of-memory reference is a skip (True), anything else a failure."""
    if _is_oom(e):
        log(f"  {what}: SKIPPED (out of memory: {str(e).splitlines()[0][:160]})")
        return True
    log(f"  {what}: FAIL ({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''})")
    traceback.print_exc(limit=6)
    return False
