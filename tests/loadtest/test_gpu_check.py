"""The one GPU check (loadtest/gpu_check.sh) and the engine benchmark, on a CPU.

Without CUDA the check must say its GPU parts are skipped, run its CPU smoke parts and exit 0 in
seconds; ``python -m loadtest.engine_bench --device cpu --quick`` must report sane figures (positive
steps/s and frames/s, a computed FLOP bound). Subprocesses see no GPU (``CUDA_VISIBLE_DEVICES=""``)
so this stays a CPU test wherever it runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _env(out: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in ("services", ".", env.get("PYTHONPATH", "")) if p)
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["GPU_CHECK_OUT"] = str(out)
    env["PYTHON"] = sys.executable
    env.pop("TRITON_INTERPRET", None)
    env.pop("WORLDSERVE_ATTENTION", None)
    return env


def _run(cmd: list[str], out: Path, timeout: float) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=ROOT, env=_env(out), capture_output=True, text=True, timeout=timeout)
    return p


@pytest.mark.timeout(120)
def test_gpu_check_without_cuda_skips_gpu_parts_and_passes(tmp_path):
    p = _run(["bash", "loadtest/gpu_check.sh"], tmp_path, timeout=110)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    assert "GPU parts [1]-[5] are SKIPPED" in out
    assert "torch " in out and "triton" in out  # the environment is printed
    assert "GPU CHECK: OK" in out
    assert "cpu_engine" in out and "engine bench: PASS" in out
    summary = json.loads((tmp_path / "cpu_engine.json").read_text())
    assert all(r["frames_per_s"] > 0 for r in summary["runs"])
    assert "cpu_dit" in out and "dit bench: PASS" in out  # part 5's CPU smoke (the tiny causal DiT)
    dit = json.loads((tmp_path / "cpu_dit.json").read_text())
    assert [r["sessions"] for r in dit["runs"]] == [1, 4] and dit["runs"][0]["fps_per_gpu"] > 0
    if "triton" in out and "kernel check: SKIPPED" not in out:
        assert "kernel check: PASS" in out and "flash_decode_paged" in out  # the paged kernel ran (interpreter)


@pytest.mark.timeout(120)
def test_engine_bench_cpu_quick_reports_sane_figures(tmp_path):
    js = tmp_path / "engine.json"
    p = _run(
        [sys.executable, "-m", "loadtest.engine_bench", "--device", "cpu", "--quick", "--json", str(js)],
        tmp_path,
        timeout=110,
    )
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    s = json.loads(js.read_text())
    assert s["flops_per_frame"] > 1e6 and s["peak_flops"] > 0
    assert s["bound_frames_per_s"] == pytest.approx(s["peak_flops"] / s["flops_per_frame"])
    assert s["runtime"]["attention_backend"] == "sdpa"  # CPU
    assert s["state_bytes_per_session"] > 0
    runs = s["runs"]
    assert [r["sessions"] for r in runs if r["batch_invariant"]][:2] == [1, 4]
    for r in runs:
        assert r["fits"] and "error" not in r
        assert r["batches_per_s"] > 0 and r["frames_per_s"] > 0 and r["p50_batch_ms"] > 0
        assert r["frames_per_s"] == pytest.approx(r["batches_per_s"] * r["mean_batch_size"])
        assert 0 < r["frames_achieved_fraction"] < 10
        assert r["state_nbytes_measured"] == r["sessions"] * s["state_bytes_per_session"]
    assert s["batch_invariant_cost"] > 0
    assert sum(s["decode_calls"].values()) > 0
    for text in (
        "FLOPs per frame",
        "bound",
        "batch-invariant mode at 4 sessions",
        "runtime: device=cpu",
        "Triton attention kernel ran",
    ):
        assert text in out, text


@pytest.mark.timeout(120)
def test_engine_bench_large_reports_what_does_not_fit(tmp_path):
    """The large path with a tiny state-memory cap: runs that do not fit are reported, not tried."""
    js = tmp_path / "large.json"
    p = _run(
        [
            sys.executable,
            "-m",
            "loadtest.engine_bench",
            "--device",
            "cpu",
            "--quick",
            "--large",
            "--sessions",
            "1",
            "64",
            "--state-memory-gib",
            "0.01",
            "--time-budget-s",
            "1",
            "--json",
            str(js),
        ],
        tmp_path,
        timeout=110,
    )
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    assert "does not fit (needs" in out
    runs = {r["sessions"]: r for r in json.loads(js.read_text())["runs"]}
    assert runs[1]["fits"] and runs[1]["frames_per_s"] > 0
    assert runs[64]["fits"] is False and runs[64]["state_bytes"] > 0.01 * 2**30


def test_peak_table():
    from loadtest.engine_bench_common import FALLBACK_GPU_PEAK, gpu_peak_flops

    assert gpu_peak_flops("NVIDIA H200")[0] == 989e12
    assert gpu_peak_flops("NVIDIA GH200 480GB")[0] == 989e12
    assert gpu_peak_flops("NVIDIA H100 PCIe")[0] == 756e12
    assert gpu_peak_flops("NVIDIA L40S")[0] == 362e12 and gpu_peak_flops("NVIDIA L4")[0] == 121e12
    assert gpu_peak_flops("Some Future GPU")[0] == FALLBACK_GPU_PEAK
    assert "not in the table" in gpu_peak_flops("Some Future GPU")[1]
