"""The causal-DiT bench (loadtest/dit_bench.py, part 5 of the GPU check) on a CPU: the tiny smoke run
in process and its table, the FLOP count (by hand on a small config, and against FlopCounterMode on
the served path), the real-size counts on meta tensors, the goal verdicts."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from loadtest.dit_bench_common import (
    QUICK_OPTIONS,
    REAL_OPTIONS,
    WAN21_T2V_1_3B,
    WAN21_T2V_1_3B_PARAMETERS,
    WAN21_VAE_CACHE_BYTES,
    WAN21_VAE_CHUNK_FLOPS,
    chunk_flops,
    goals,
    pass_flops,
    percentile,
    session_bytes,
    steady_cached_frames,
    steady_step,
    vae_facts,
    wan21_vae_config,
)
from worldserve.dynamics.models.causal_dit import CausalDiTOptions
from worldserve.dynamics.models.causal_dit.config import WanTransformerConfig


@pytest.mark.timeout(120)
def test_cpu_smoke_prints_the_table(tmp_path, capsys):
    from loadtest.dit_bench import main

    js = tmp_path / "dit.json"
    # a generous deadline: a busy CI machine must not skip the 4-session count
    assert main(["--device", "cpu", "--quick", "--time-budget-s", "0.2", "--deadline-s", "300", "--json", str(js)]) == 0
    out = capsys.readouterr().out
    s = json.loads(js.read_text())
    fl, peak, px = s["flops_per_chunk"], s["peak_flops"], s["pixel_frames_per_chunk"]
    assert px == 12 and s["frame_size"] == [32, 32] and s["runtime"]["attention_backend"] == "sdpa"
    assert fl["total"] == fl["transformer"] + fl["vae"] > 0
    assert [r["sessions"] for r in s["runs"]] == [1, 4]
    for r in s["runs"]:
        n = r["sessions"]
        assert r["rounds"] >= 1 and r["chunk_p50_ms"] > 0 and r["chunk_p99_ms"] >= r["chunk_p50_ms"]
        assert r["fps_per_gpu"] == pytest.approx(n * r["fps_per_session"])
        assert r["fps_per_gpu"] == pytest.approx(n * px * r["rounds"] / r["elapsed_s"])
        assert r["steps_per_s"] == pytest.approx(r["fps_per_gpu"] / px)
        assert r["fps_per_gpu_bound"] == pytest.approx(px * peak / fl["total"])
        assert r["chunk_bound_ms"] == pytest.approx(1e3 * n * fl["total"] / peak)
        assert r["decode_bound_ms"] == pytest.approx(1e3 * n * fl["vae"] / peak)
        assert 0 < r["attention_share_of_step"] < 1 and 0 < r["vae_share_of_chunk"] < 1
        assert r["vae_flop_share_of_chunk"] == pytest.approx(fl["vae"] / fl["total"])
        # the timer saw each layer's self- and cross-attention of every pass, none of the VAE's SDPA;
        # on CPU each session steps alone (batch-independent frames), so once per session
        calls = 2 * (len(QUICK_OPTIONS["timesteps"]) + 1) * n  # 2 layers x (4 passes + commit) x sessions
        assert r["attention_calls_per_round"] == {"self": calls, "cross": calls}
        assert r["kernel_calls"] == {"sdpa/sdpa": calls * r["rounds"]}
    b, m = s["session_bytes"], s["session_bytes_measured"]
    assert {k: m[k] for k in ("kv", "decoder_cache", "text", "total")} == {
        k: b[k] for k in ("kv", "decoder_cache", "text", "total")
    }
    assert m["state_nbytes"] == b["total"] and s["resume_data"]["bytes"] > 0
    assert [g["name"] for g in s["goals"]] == [
        "one session >= 30 fps at 480x832",
        "per-GPU fps at 4 sessions >= at 1",
        "chunk p99 <= 250 ms (1 session)",
    ]
    assert not s["goals"][0]["met"]  # a 32x32 run never meets the 480x832 goal
    for text in (
        "real size (meta tensors): transformer 1,418,996,800 parameters",
        "H200 bound",
        "FLOPs of a steady chunk",
        "frames/s per session",
        "chunk p50",
        "attention",
        "VAE",
        "session state (measured on a live state)",
        "equal to the expected",
        "Triton attention kernel ran",
        "goal: one session >= 30 fps at 480x832: NOT MET",
        "dit bench: PASS",
    ):
        assert text in out, text


@pytest.mark.timeout(180)
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_cpu_smoke_through_the_triton_paged_kernel(tmp_path):
    """``--attention triton`` on a CPU: the served chunks (3 latent frames of queries, mask "full",
    the commit pass writing pages) run the Triton paged decode kernel in the interpreter (a
    subprocess: the variable must be set before the kernels are imported)."""
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(["services", ".", os.environ.get("PYTHONPATH", "")]))
    env.pop("TRITON_INTERPRET", None)
    env.pop("WORLDSERVE_ATTENTION", None)
    js = tmp_path / "dit.json"
    cmd = [sys.executable, "-m", "loadtest.dit_bench", "--device", "cpu", "--quick", "--attention", "triton"]
    cmd += ["--sessions", "1", "--time-budget-s", "0", "--json", str(js)]
    p = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=170)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    s = json.loads(js.read_text())
    assert s["runtime"]["attention_backend"] == "triton" and s["runtime"]["decode_kernel"] == "flash_decode_paged"
    calls = 2 * (len(QUICK_OPTIONS["timesteps"]) + 1)
    assert s["kernel_calls"] == {"triton/flash_decode_paged": calls}  # one timed round, every pass's layers
    assert "Triton attention kernel ran: yes" in p.stdout


def test_pass_flops_by_hand():
    # D = 8 (1 head x 8), ffn 16, 1 layer, 4 latent channels, patch (1, 2, 2), freq 4; a chunk of one
    # frame of N = 2 tokens after one cached frame (K = 4 keys), L = 3 text tokens.
    cfg = WanTransformerConfig(
        num_attention_heads=1, attention_head_dim=8, in_channels=4, out_channels=4, text_dim=4, freq_dim=4,
        ffn_dim=16, num_layers=1,
    )  # fmt: skip
    f = pass_flops(cfg, frames=1, frame_tokens=2, cached_frames=1, text_len=3, head=True)
    patch = 2 * 2 * 8 * (4 * 4)  # 2 N D C_in*4 = 512
    time_emb = 2 * 1 * (4 * 8 + 8 * 8 + 8 * 48)  # 960
    block = 8 * 2 * 64 + 4 * 2 * 8 * 16 + 4 * 2 * 64 + 4 * 3 * 64  # qkvo 1024, ffn 1024, cross q,o 512, k,v 768
    head = 2 * 2 * 8 * (4 * 4)  # 512
    assert f.linear == patch + time_emb + block + head == 5312
    assert f.self_attention == 4 * 2 * 4 * 8 == 256
    assert f.cross_attention == 4 * 2 * 3 * 8 == 192
    assert f.total == 5760
    no_head = pass_flops(cfg, frames=1, frame_tokens=2, cached_frames=1, text_len=0, head=False, batch=3)
    assert no_head.linear == 3 * (patch + time_emb + 1024 + 1024) and no_head.cross_attention == 0
    assert no_head.self_attention == 3 * 256
    # a chunk: 2 denoising passes with the head, the commit pass without; steady cache = sink + window
    o = CausalDiTOptions(chunk_frames=1, sink_frames=1, window_frames=1, timesteps=(1000, 500), latent_height=2)
    assert steady_step(o) == 2 and steady_cached_frames(o) == 2
    c = chunk_flops(cfg, o, 2, text=True, vae_flops=7)
    kw = dict(frames=1, frame_tokens=2, cached_frames=2, text_len=o.text_len)
    assert c.transformer.total == 2 * pass_flops(cfg, head=True, **kw).total + pass_flops(cfg, head=False, **kw).total
    assert c.total == c.transformer.total + 7


def test_flops_equal_flop_counter_on_the_served_path():
    """The analytic count of a steady chunk equals FlopCounterMode's on model.step (batch 1 and 2,
    SDPA's math backend: plain matmuls the counter sees), the meta-tensor VAE count equals it on
    decode_step, and the expected session bytes equal a live state's."""
    from loadtest.dit_bench import build, prefill

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only contend on a busy machine
    try:
        _count_served_chunks(build("cpu", True, "float32"), prefill)
    finally:
        torch.set_num_threads(threads)


def _count_served_chunks(setup, prefill) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    m = setup.model
    states = [prefill(setup, i, "cpu") for i in range(2)]
    for n in (1, 2):
        sts = states[:n]
        acts = torch.stack([m.null_action() for _ in sts])
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
            z = m.step(sts, acts, seeds=list(range(n)), steps=[m.state_step(st) + 1 for st in sts])
        assert fc.get_total_flops() == n * setup.flops.transformer.total
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
            m.decode_step(sts, z)
        assert fc.get_total_flops() == n * setup.flops.vae
    st = states[0]
    assert len(st.pages) * st.page_nbytes == setup.bytes["kv"]
    assert st.vae.nbytes == setup.bytes["decoder_cache"]
    assert m.state_nbytes(st) == setup.bytes["total"]


@pytest.mark.timeout(120)
def test_real_size_counts_on_meta():
    """Wan2.1-T2V-1.3B builds with its parameter count; a session's bytes and the VAE's figures at
    480x832 are what the bench prints."""
    from loadtest.dit_bench import real_size_facts

    f = real_size_facts(count_vae=True)  # counts the VAE on meta tensors
    assert f["parameters"] == WAN21_T2V_1_3B_PARAMETERS == 1_418_996_800
    assert f["vae_parameters"] == 126_892_531 and f["frame_tokens"] == 1560
    assert f["flops"]["vae"] == WAN21_VAE_CHUNK_FLOPS
    b = f["session_bytes"]
    assert b["page_bytes"] == 2 * 30 * 1560 * 12 * 128 * 2 == 287_539_200  # K and V, 30 layers, bf16
    assert b["pages"] == 3 + 15 + 3 and b["kv"] == 21 * 287_539_200
    assert b["text"] == 512 * 1536 * 2
    assert b["decoder_cache"] == WAN21_VAE_CACHE_BYTES
    assert f["session_bytes_vae_bf16"]["decoder_cache"] == WAN21_VAE_CACHE_BYTES // 2
    o = CausalDiTOptions.from_options(REAL_OPTIONS)
    assert steady_step(o) == 7 and steady_cached_frames(o) == 18  # 21 frames seen with the chunk: 32760 keys
    cfg = WanTransformerConfig(**WAN21_T2V_1_3B)
    c = chunk_flops(cfg, o, 1560, text=True)
    assert c.transformer.self_attention == 5 * 30 * 4 * 4680 * (4680 + 18 * 1560) * 1536
    assert f["chunk_bound_ms_h200"] == pytest.approx(1e3 * (c.transformer.total + WAN21_VAE_CHUNK_FLOPS) / 989e12)


def test_vae_facts_bf16_halves_the_cache():
    o = CausalDiTOptions.from_options(QUICK_OPTIONS)
    from worldserve.dynamics.models.causal_dit.vae import tiny_vae_config

    a, b = vae_facts(tiny_vae_config(z_dim=4), o, 4), vae_facts(tiny_vae_config(z_dim=4), o, 2)
    assert a["flops"] == b["flops"] and a["cache_bytes"] == 2 * b["cache_bytes"] > 0
    assert wan21_vae_config()["base_dim"] == 96


def _run(n: int, fps: float, p99: float) -> dict:
    return dict(sessions=n, fps_per_session=fps, fps_per_gpu=n * fps, chunk_p99_ms=p99)


def test_goal_verdicts():
    hw = (480, 832)
    met = [g.met for g in goals([_run(1, 30.0, 250.0), _run(4, 7.5, 1000.0)], hw)]
    assert met == [True, True, True]  # the bounds are inclusive
    met = [g.met for g in goals([_run(1, 29.9, 250.1), _run(4, 7.4, 900.0)], hw)]
    assert met == [False, False, False]
    g = goals([_run(1, 100.0, 10.0), _run(4, 30.0, 20.0)], (32, 32))
    assert [x.met for x in g] == [False, True, True] and "not the goal's size" in g[0].detail
    g = goals([_run(1, 31.0, 200.0)], hw)
    assert [x.met for x in g] == [True, False, True] and "4 sessions not measured" in g[1].detail
    g = goals([dict(sessions=1), _run(4, 10.0, 1.0)], hw)  # 1 session not measured (skipped / failed)
    assert [x.met for x in g] == [False, False, False]
    assert g[0].line().startswith("goal: one session >= 30 fps at 480x832: NOT MET (")
    assert goals([_run(1, 40.0, 100.0)], hw)[0].line() == "goal: one session >= 30 fps at 480x832: MET (40.0 fps)"


def test_percentile_and_session_bytes():
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([10.0, 20.0], 99) == pytest.approx(19.9)
    assert percentile([5.0], 99) == 5.0
    cfg = WanTransformerConfig(num_attention_heads=2, attention_head_dim=4, num_layers=3)
    o = CausalDiTOptions(chunk_frames=2, sink_frames=1, window_frames=4, text_len=5)
    b = session_bytes(cfg, o, frame_tokens=6, dtype_bytes=2, decoder_cache_bytes=100)
    assert b["page_bytes"] == 2 * 3 * 6 * 8 * 2 and b["pages"] == 7
    assert b["total"] == 7 * b["page_bytes"] + 100 + 5 * 8 * 2
