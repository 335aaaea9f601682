"""Benchmark worldserve's Triton attention kernels against torch baselines on one GPU.

Run on a machine with one CUDA GPU (the numbers in the goals are for an H200)::

    python -m loadtest.kernels.bench_attention            # full grid
    python loadtest/kernels/bench_attention.py --quick    # a few shapes

Cases, all bf16 by default, head dims 64 and 128 (heads chosen so H * D = --model-dim), frames of
256, 1024 and 3600 tokens, contexts of 1-32 frames:

- ``prefill``: frame-block-causal attention over ``ctx`` frames. Ours (fully masked key blocks
  skipped) vs FlexAttention with the same block mask (``torch.compile``d), SDPA with the dense
  boolean mask, and SDPA's best backend with ``is_causal=True`` (token-causal: a mask SDPA can run
  on its flash kernel, doing about the same useful work; a speed reference, not the same result).
- ``decode``: one new frame of queries against a KV cache of ``ctx - 1`` frames plus the new frame
  (every key visible), ours writing the new K/V into the cache, vs SDPA's best backend (no mask
  needed) and FlexAttention; also reported as achieved bandwidth over the KV bytes read, and ours
  again on the served layout (``paged``: one page per frame in a token-major pool, shuffled pages
  read through a block table).
- ``full``: spatial attention within a frame (``ctx`` frames as the batch, one frame each), ours vs
  SDPA's best backend and FlexAttention.

TFLOP/s count only the unmasked (query, key) pairs -- 4 * D flops each (QK^T and PV) -- so a
kernel gets no credit for computing masked blocks. Ratios are ``t_baseline / t_ours`` (> 1: ours is
faster). Without a CUDA device the script prints a message and exits with status 0 (1 with
``--require-gpu``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Iterable

# Goals from the issue (H200): checked and printed at the end.
H200_PEAK_BF16_TFLOPS = 790.0
GOALS = {
    "prefill_vs_flex": 1.3,  # frame-causal prefill >= 1.3x FlexAttention
    "prefill_vs_dense": 5.0,  # ... and >= 5x SDPA with a dense boolean mask
    "decode_peak_fraction": 0.5,  # decode of one frame, >= 1024 tokens/frame: >= 50% of 790 TFLOP/s
    "full_vs_sdpa": 0.9,  # within-frame full attention >= 0.9x SDPA's best backend
}
DEFAULT_FRAMES = (256, 1024, 3600)
DEFAULT_CONTEXTS = (1, 2, 4, 8, 16, 32)
DEFAULT_HEAD_DIMS = (64, 128)


# --------------------------------------------------------------------------------------------
# pure helpers (unit-tested on CPU)


def visible_pairs(tq: int, tk: int, *, frame_tokens: int, mask: str, q_start: int | None = None) -> int:
    """Number of (query, key) pairs a mask lets through -- the work a kernel that skips every
    masked pair must do. Closed form; equals ``build_mask(...).sum()``."""
    q_start = tk - tq if q_start is None else q_start
    if mask == "full":
        return tq * tk
    g = 1 if mask == "causal" else frame_tokens
    if mask not in ("causal", "frame_causal"):
        raise ValueError(f"unknown mask {mask!r}")
    total = 0
    # queries are grouped by the group (frame) they sit in: each sees min(tk, (group + 1) * g) keys
    p = q_start
    end = q_start + tq
    while p < end:
        grp = p // g
        nxt = min(end, (grp + 1) * g)
        total += (nxt - p) * min(tk, (grp + 1) * g)
        p = nxt
    return total


def attention_flops(batch: int, heads: int, head_dim: int, pairs: int) -> int:
    """FLOPs of attention over ``pairs`` unmasked pairs per (batch, head): QK^T and PV, 2 each."""
    return 4 * batch * heads * head_dim * pairs


def decode_kv_bytes(batch: int, kv_heads: int, cache_len: int, new: int, head_dim: int, elem_bytes: int) -> int:
    """Bytes of K and V a decode step must read: the cache rows plus the new frame's rows."""
    return 2 * batch * kv_heads * (cache_len + new) * head_dim * elem_bytes


@dataclasses.dataclass(frozen=True)
class Case:
    kind: str  # prefill | decode | full
    frame_tokens: int
    frames: int  # context frames (decode: cache = frames - 1 past frames + the new one)
    head_dim: int
    heads: int
    batch: int = 1

    @property
    def label(self) -> str:
        return f"{self.kind:7s} F={self.frame_tokens:<5d} ctx={self.frames:<3d} D={self.head_dim:<3d} H={self.heads}"

    def shapes(self) -> tuple[int, int, int]:
        """(batch, Tq, Tk) of the attention call."""
        F, n = self.frame_tokens, self.frames
        if self.kind == "prefill":
            return self.batch, n * F, n * F
        if self.kind == "decode":
            return self.batch, F, n * F
        if self.kind == "full":
            return self.batch * n, F, F
        raise ValueError(self.kind)

    def pairs(self) -> int:
        B, tq, tk = self.shapes()
        mask = "frame_causal" if self.kind == "prefill" else "full"
        return visible_pairs(tq, tk, frame_tokens=self.frame_tokens, mask=mask)

    def flops(self) -> int:
        B, _, _ = self.shapes()
        return attention_flops(B, self.heads, self.head_dim, self.pairs())


def build_cases(
    kinds: Iterable[str],
    frames: Iterable[int],
    contexts: Iterable[int],
    head_dims: Iterable[int],
    model_dim: int,
    batch: int = 1,
    max_tokens: int | None = None,
) -> list[Case]:
    cases = []
    for kind in kinds:
        for d in head_dims:
            if model_dim % d:
                raise ValueError(f"--model-dim {model_dim} not divisible by head dim {d}")
            for f in frames:
                for n in contexts:
                    if kind == "full" and n != max(contexts):
                        continue  # within-frame attention: one case per frame size, ctx frames as batch
                    if max_tokens is not None and n * f > max_tokens:
                        continue
                    cases.append(Case(kind, f, n, d, model_dim // d, batch))
    return cases


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench_attention", description="Triton attention kernels vs torch baselines")
    ap.add_argument("--kinds", nargs="+", default=["prefill", "decode", "full"], choices=["prefill", "decode", "full"])
    ap.add_argument("--frames", nargs="+", type=int, default=list(DEFAULT_FRAMES), help="tokens per frame")
    ap.add_argument("--contexts", nargs="+", type=int, default=list(DEFAULT_CONTEXTS), help="frames of context")
    ap.add_argument("--head-dims", nargs="+", type=int, default=list(DEFAULT_HEAD_DIMS))
    ap.add_argument("--model-dim", type=int, default=2048, help="heads = model_dim / head_dim")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument("--max-tokens", type=int, default=None, help="skip cases whose context exceeds this")
    ap.add_argument(
        "--dense-mask-limit-gb",
        type=float,
        default=8.0,
        help="skip the dense-mask SDPA baseline above this mask + score memory",
    )
    ap.add_argument("--no-flex", action="store_true", help="skip FlexAttention")
    ap.add_argument("--rep-ms", type=int, default=200, help="timing repetitions (ms) per measurement")
    ap.add_argument("--quick", action="store_true", help="a few shapes: F=1024, ctx 1/8, D=128")
    ap.add_argument("--require-gpu", action="store_true", help="exit 1 instead of 0 when there is no GPU")
    a = ap.parse_args(argv)
    if a.quick:
        a.frames, a.contexts, a.head_dims = [1024], [1, 8], [128]
    return a


def fmt_ratio(t_base: float | None, t_ours: float | None) -> str:
    if not t_base or not t_ours:
        return "   -  "
    return f"{t_base / t_ours:6.2f}x"


def tflops(flops: int, ms: float | None) -> float | None:
    return None if not ms else flops / (ms * 1e-3) / 1e12


# --------------------------------------------------------------------------------------------
# GPU part


def _bench(fn: Callable[[], object], rep_ms: int) -> float | None:
    """Median milliseconds of ``fn`` (None if it fails, e.g. out of memory)."""
    import torch
    import triton

    try:
        fn()
        torch.cuda.synchronize()
        return float(triton.testing.do_bench(fn, warmup=25, rep=rep_ms, return_mode="median"))
    except Exception as e:
        print(f"      ({type(e).__name__}: {str(e).splitlines()[0][:120]})", file=sys.stderr)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return None


def run_case(case: Case, args, flex=None) -> dict:
    import torch
    import torch.nn.functional as F

    from worldserve.dynamics.attention.backend import build_mask
    from worldserve.dynamics.attention.kernels.flash_decode import flash_decode
    from worldserve.dynamics.attention.kernels.flash_prefill import flash_attention

    dt = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    dev = getattr(args, "device", "cuda")
    B, tq, tk = case.shapes()
    H, D, Fr = case.heads, case.head_dim, case.frame_tokens
    # the model's layout: (B, T, H, D) projections viewed as (B, H, T, D)
    q = torch.randn(B, tq, H, D, device=dev, dtype=dt).transpose(1, 2)
    k = torch.randn(B, tk, H, D, device=dev, dtype=dt).transpose(1, 2)
    v = torch.randn(B, tk, H, D, device=dev, dtype=dt).transpose(1, 2)
    res: dict = {"case": case}

    if case.kind == "prefill":
        res["ours"] = _bench(lambda: flash_attention(q, k, v, frame_tokens=Fr, mask="frame_causal"), args.rep_ms)
        res["sdpa_best"] = _bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), args.rep_ms)
        dense_gb = (tq * tk + B * H * tq * tk * 4) / 1e9  # bool mask + fp32 scores of the math path
        if dense_gb <= args.dense_mask_limit_gb:
            m = build_mask(tq, tk, frame_tokens=Fr, mask="frame_causal", device=dev)
            res["sdpa_dense"] = _bench(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=m), args.rep_ms)
            del m
        if flex is not None:
            res["flex"] = flex.run(q, k, v, tq, tk, Fr, "frame_causal", args.rep_ms)
    elif case.kind == "decode":
        L = tk - tq
        kc = torch.zeros(B, H, tk + 128, D, device=dev, dtype=dt)  # capacity beyond the step
        vc = torch.zeros_like(kc)
        kc[:, :, :L] = torch.randn(B, H, L, D, device=dev, dtype=dt)
        vc[:, :, :L] = torch.randn(B, H, L, D, device=dev, dtype=dt)
        lens = torch.full((B,), L, device=dev, dtype=torch.int32)
        kn, vn = k[:, :, L:], v[:, :, L:]
        res["ours"] = _bench(
            lambda: flash_decode(q, kn, vn, kc, vc, lens, frame_tokens=Fr, mask="frame_causal", max_cache_len=L),
            args.rep_ms,
        )
        # the served layout: pages of one frame in the model's token-major pool, shuffled, read
        # through a block table (a frame of Fr tokens is one page; L is a whole number of frames)
        n_pages = tk // Fr + 1
        perm = torch.randperm(B * n_pages, device=dev)
        kpool = torch.zeros(B * n_pages, Fr, H, D, device=dev, dtype=dt)
        vpool = torch.zeros_like(kpool)
        bt = perm.view(B, n_pages).to(torch.int32)
        kpool[bt[:, : L // Fr].reshape(-1).long()] = kc[:, :, :L].transpose(1, 2).reshape(-1, Fr, H, D)
        vpool[bt[:, : L // Fr].reshape(-1).long()] = vc[:, :, :L].transpose(1, 2).reshape(-1, Fr, H, D)
        kp, vp = kpool.transpose(1, 2), vpool.transpose(1, 2)  # (P, H, Fr, D) views
        res["ours_paged"] = _bench(
            lambda: flash_decode(
                q,
                kn,
                vn,
                kp,
                vp,
                lens,
                frame_tokens=Fr,
                mask="frame_causal",
                max_cache_len=L,
                block_table=bt,
                page_size=Fr,
            ),
            args.rep_ms,
        )
        res["sdpa_best"] = _bench(lambda: F.scaled_dot_product_attention(q, k, v), args.rep_ms)
        if flex is not None:
            res["flex"] = flex.run(q, k, v, tq, tk, Fr, "full", args.rep_ms)
        nbytes = decode_kv_bytes(B, H, L, tq, D, q.element_size())
        res["ours_gbs"] = None if not res["ours"] else nbytes / (res["ours"] * 1e-3) / 1e9
    else:  # full
        res["ours"] = _bench(lambda: flash_attention(q, k, v, frame_tokens=Fr, mask="full"), args.rep_ms)
        res["sdpa_best"] = _bench(lambda: F.scaled_dot_product_attention(q, k, v), args.rep_ms)
        if flex is not None:
            res["flex"] = flex.run(q, k, v, tq, tk, Fr, "full", args.rep_ms)
    return res


class _Flex:
    """FlexAttention, compiled, with a block mask built from the same mask_mod as ours."""

    def __init__(self):
        import torch
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        self.create_block_mask = create_block_mask
        self.fn = torch.compile(flex_attention, dynamic=False)

    def run(self, q, k, v, tq, tk, frame_tokens, mask, rep_ms):
        q_start = tk - tq
        if mask == "full":
            block_mask = None
        else:

            def mask_mod(b, h, q_idx, kv_idx):
                return (kv_idx // frame_tokens) <= ((q_idx + q_start) // frame_tokens)

            block_mask = self.create_block_mask(mask_mod, None, None, tq, tk, device=q.device)
        return _bench(lambda: self.fn(q, k, v, block_mask=block_mask), rep_ms)


def print_row(res: dict) -> None:
    c: Case = res["case"]
    flops = c.flops()
    ours = res.get("ours")
    cols = [c.label, f"{tflops(flops, ours) or 0:7.1f} TF/s", f"{ours or float('nan'):8.3f} ms"]
    for key in ("flex", "sdpa_dense", "sdpa_best"):
        if key in res:
            t = res[key]
            cols.append(f"{key}: {tflops(flops, t) or 0:6.1f} TF/s {fmt_ratio(t, ours)}")
    if c.kind == "decode" and res.get("ours_gbs"):
        cols.append(f"KV read {res['ours_gbs']:7.0f} GB/s")
    if c.kind == "decode" and res.get("ours_paged"):
        cols.append(f"paged: {tflops(flops, res['ours_paged']) or 0:6.1f} TF/s {res['ours_paged']:8.3f} ms")
    print("  ".join(cols), flush=True)


def check_goals(results: list[dict]) -> list[str]:
    """One line per goal: the worst case over the cases it applies to (reported, not asserted)."""
    lines = []

    def worst(kind, key, pred=lambda c: True):
        rs = [
            (r[key] / r["ours"], r["case"])
            for r in results
            if r["case"].kind == kind and pred(r["case"]) and r.get(key) and r.get("ours")
        ]
        return min(rs, key=lambda x: x[0]) if rs else None

    for name, kind, key, goal in (
        ("frame-causal prefill vs FlexAttention", "prefill", "flex", GOALS["prefill_vs_flex"]),
        ("frame-causal prefill vs dense-mask SDPA", "prefill", "sdpa_dense", GOALS["prefill_vs_dense"]),
        ("within-frame full vs SDPA best", "full", "sdpa_best", GOALS["full_vs_sdpa"]),
    ):
        w = worst(kind, key)
        if w is None:
            lines.append(f"{name}: no data")
        else:
            lines.append(
                f"{name}: worst {w[0]:.2f}x at [{w[1].label.strip()}] (goal >= {goal}x) "
                f"{'MET' if w[0] >= goal else 'NOT MET'}"
            )
    dec = [
        (tflops(r["case"].flops(), r["ours"]), r["case"])
        for r in results
        if r["case"].kind == "decode" and r["case"].frame_tokens >= 1024 and r.get("ours")
    ]
    if dec:
        t, c = min(dec, key=lambda x: x[0])
        goal = GOALS["decode_peak_fraction"] * H200_PEAK_BF16_TFLOPS
        lines.append(
            f"decode (>= 1024 tokens/frame): worst {t:.0f} TFLOP/s at [{c.label.strip()}] "
            f"(goal >= {goal:.0f}) {'MET' if t >= goal else 'NOT MET'}"
        )
    else:
        lines.append("decode (>= 1024 tokens/frame): no data")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import torch
    except ImportError:
        print("bench_attention: torch is not installed", file=sys.stderr)
        return 1 if args.require_gpu else 0
    if not torch.cuda.is_available():
        print(
            "bench_attention: no CUDA device available -- this benchmark needs one GPU; nothing to do.", file=sys.stderr
        )
        return 1 if args.require_gpu else 0
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("bench_attention: unset TRITON_INTERPRET to benchmark compiled kernels", file=sys.stderr)
        return 1
    cases = build_cases(
        args.kinds, args.frames, args.contexts, args.head_dims, args.model_dim, args.batch, args.max_tokens
    )
    print(
        f"# {torch.cuda.get_device_name()}  torch {torch.__version__}  dtype {args.dtype}  "
        f"{len(cases)} cases; TF/s over unmasked pairs; ratios = t_baseline / t_ours",
        flush=True,
    )
    flex = None
    if not args.no_flex:
        try:
            flex = _Flex()
        except Exception as e:
            print(f"# FlexAttention unavailable: {e}", file=sys.stderr)
    results = []
    for c in cases:
        r = run_case(c, args, flex)
        print_row(r)
        results.append(r)
        torch.cuda.empty_cache()
    print("#")
    for line in check_goals(results):
        print("# " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
