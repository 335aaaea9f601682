"""The GPU benchmark script: imports, argument parsing and FLOP / byte counting on CPU; clean exit
without a GPU."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest
import torch

from worldserve.dynamics.attention.backend import build_mask

_PATH = pathlib.Path(__file__).resolve().parents[3] / "loadtest" / "kernels" / "bench_attention.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_attention", _PATH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


@pytest.mark.parametrize("mask", ("full", "causal", "frame_causal"))
@pytest.mark.parametrize(
    "tq,tk,q_start,frame_tokens",
    [
        (96, 96, None, 24),
        (24, 120, None, 24),
        (40, 96, 13, 24),
        (50, 50, None, 7),
        (1, 33, None, 8),
        (30, 100, 0, 1000),
    ],
)
def test_visible_pairs_match_the_mask(bench, mask, tq, tk, q_start, frame_tokens):
    m = build_mask(tq, tk, frame_tokens=frame_tokens, mask=mask, q_start=q_start)
    want = tq * tk if m is None else int(m.sum())
    assert bench.visible_pairs(tq, tk, frame_tokens=frame_tokens, mask=mask, q_start=q_start) == want


def test_flops_and_bytes(bench):
    # 4 frames of 256: 256^2 * (1 + 2 + 3 + 4) visible pairs
    c = bench.Case("prefill", 256, 4, 128, 16)
    assert c.shapes() == (1, 1024, 1024)
    assert c.pairs() == 256 * 256 * 10
    assert c.flops() == 4 * 16 * 128 * 256 * 256 * 10
    d = bench.Case("decode", 1024, 8, 64, 32)
    assert d.shapes() == (1, 1024, 8192) and d.pairs() == 1024 * 8192
    assert bench.decode_kv_bytes(1, 32, 7 * 1024, 1024, 64, 2) == 2 * 32 * 8192 * 64 * 2
    f = bench.Case("full", 3600, 8, 128, 16)
    assert f.shapes() == (8, 3600, 3600) and f.flops() == 4 * 8 * 16 * 128 * 3600 * 3600
    assert bench.tflops(10**12, 1000.0) == pytest.approx(1.0)
    assert bench.fmt_ratio(2.0, 1.0).strip() == "2.00x" and bench.fmt_ratio(None, 1.0).strip() == "-"


def test_argument_parsing_and_case_grid(bench):
    a = bench.parse_args([])
    assert a.frames == [256, 1024, 3600] and a.contexts == [1, 2, 4, 8, 16, 32] and a.head_dims == [64, 128]
    assert a.dtype == "bf16" and not a.require_gpu
    cases = bench.build_cases(a.kinds, a.frames, a.contexts, a.head_dims, a.model_dim)
    kinds = {c.kind for c in cases}
    assert kinds == {"prefill", "decode", "full"}
    assert len([c for c in cases if c.kind == "prefill"]) == 2 * 3 * 6
    assert all(c.heads * c.head_dim == 2048 for c in cases)
    q = bench.parse_args(["--quick", "--kinds", "prefill", "--max-tokens", "4096"])
    assert q.frames == [1024] and q.head_dims == [128]
    small = bench.build_cases(q.kinds, q.frames, q.contexts, q.head_dims, q.model_dim, max_tokens=q.max_tokens)
    assert [(c.frame_tokens, c.frames) for c in small] == [(1024, 1)]
    with pytest.raises(SystemExit):
        bench.parse_args(["--kinds", "training"])


def test_goal_report_from_fake_results(bench):
    c1, c2 = bench.Case("prefill", 1024, 8, 128, 16), bench.Case("decode", 1024, 8, 128, 16)
    res = [{"case": c1, "ours": 1.0, "flex": 1.5, "sdpa_dense": 4.0, "sdpa_best": 1.1}, {"case": c2, "ours": 1e9}]
    lines = bench.check_goals(res)
    assert any("FlexAttention: worst 1.50x" in ln and "MET" in ln for ln in lines)
    assert any("dense-mask SDPA: worst 4.00x" in ln and "NOT MET" in ln for ln in lines)
    assert any(ln.startswith("decode") and "NOT MET" in ln for ln in lines)
    assert any(ln.startswith("within-frame") and "no data" in ln for ln in lines)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit")
def test_exits_cleanly_without_a_gpu(bench, capsys):
    assert bench.main([]) == 0
    assert "no CUDA device" in capsys.readouterr().err
    assert bench.main(["--require-gpu"]) == 1


@pytest.mark.parametrize("kind", ("prefill", "decode", "full"))
def test_run_case_logic_on_cpu(bench, kind, monkeypatch, capsys):
    """Smoke-run the GPU code path on CPU: tiny shapes, our kernels interpreted, timing replaced
    by one call (do_bench needs CUDA), no FlexAttention."""
    monkeypatch.setattr(bench, "_bench", lambda fn, rep_ms: (fn(), 1.0)[1])
    args = bench.parse_args(["--dtype", "fp16"])
    args.device = "cpu"
    case = bench.Case(kind, 16, 3, 32, 2)
    res = bench.run_case(case, args, flex=None)
    assert res["ours"] == 1.0 and res["sdpa_best"] == 1.0
    assert ("sdpa_dense" in res) == (kind == "prefill")
    if kind == "decode":
        assert res["ours_gbs"] == pytest.approx(bench.decode_kv_bytes(1, 2, 32, 16, 32, 2) / 1e-3 / 1e9)
        assert res["ours_paged"] == 1.0  # the paged (served) layout ran too
    bench.print_row(res)
    assert case.label.strip() in capsys.readouterr().out
