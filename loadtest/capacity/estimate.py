"""What follows from the measurements: H200 steps/s (FLOPs / (peak x efficiency)), sessions per GPU
and per Redis node, archive bandwidth, cost per simulated second."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

H200_PEAK_BF16 = 989e12  # dense bf16 tensor FLOP/s (NVIDIA H200 SXM datasheet; loadtest.engine_bench_common)
H200_MEMORY = 141e9  # bytes of HBM3e
GPU_STATE_FRACTION = 0.8  # of the GPU's memory, what session state may use (weights, activations, workspace: the rest)
REDIS_NODE = 64 * 1024**3  # a 64 GB Redis node
REDIS_USABLE = (
    0.75  # of it, what sessions may use: maxmemory headroom for AOF rewrite (fork, copy-on-write) and fragmentation
)
DECART_USD_PER_SIM_S = 0.02  # Decart's published price per simulated second
DEFAULT_EFFICIENCY = 0.35  # assumed kernel efficiency (fraction of peak) while no GPU figure is measured
DEFAULT_GPU_USD_PER_H = 3.50


@dataclass(frozen=True)
class GpuFigures:
    """What ``--gpu-figures`` gave: an efficiency measured on a GPU, and/or steps/s measured per model and size."""

    efficiency: float | None = None
    source: str = ""
    steps_per_s: dict[str, dict[str, float]] | None = None  # {model: {"HxW": steps/s}}


def read_gpu_figures(path: Path) -> GpuFigures:
    """A GPU check's JSON: ``loadtest/gpu_check.sh``'s engine results (``engine_default.json``:
    ``flops_per_frame``, ``peak_flops`` and ``runs[].frames_per_s`` -> efficiency = best frames/s x
    FLOPs per frame / peak), or ``{"efficiency": x}``, and/or ``{"steps_per_s": {model: {"HxW": n}}}``.
    ValueError naming the file when it is none of these."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"--gpu-figures {str(path)!r}: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--gpu-figures {str(path)!r}: expected a JSON object")
    eff = data.get("efficiency")
    source = f"{path.name}: efficiency given"
    if eff is None and data.get("flops_per_frame") and data.get("peak_flops") and data.get("runs"):
        fps = max((float(r.get("frames_per_s") or 0) for r in data["runs"]), default=0.0)
        if fps > 0 and str(data.get("device", "cuda")).startswith("cuda"):
            eff = fps * float(data["flops_per_frame"]) / float(data["peak_flops"])
            source = f"{path.name}: {data.get('model', '?')}, best {fps:.0f} frames/s x FLOPs per frame / peak"
    sps = data.get("steps_per_s")
    if eff is None and not sps:
        raise ValueError(f"--gpu-figures {str(path)!r}: no efficiency, engine runs on CUDA or steps_per_s in it")
    if eff is not None and not 0 < float(eff) <= 1:
        raise ValueError(f"--gpu-figures {str(path)!r}: efficiency {eff!r} outside (0, 1]")
    return GpuFigures(None if eff is None else float(eff), source, sps)


def derive(row: dict[str, Any], *, efficiency: float, gpu: GpuFigures, usd_per_h: float) -> dict[str, Any]:
    """Fill the derived figures of one model x size row (in place; returns it)."""
    if row.get("cannot_run"):
        return row
    measured = (gpu.steps_per_s or {}).get(row["model"], {}).get(row["size"])
    if measured:
        row["steps_per_s_h200"], row["steps_per_s_h200_estimate"] = float(measured), False
        row["h200_source"] = "measured (--gpu-figures)"
    else:
        row["steps_per_s_h200"] = H200_PEAK_BF16 * efficiency / row["flops_per_step"]
        row["steps_per_s_h200_estimate"] = True
        row["h200_source"] = f"ESTIMATE: FLOPs / (989 TFLOP/s x {efficiency:.2f})"
    # session state on the GPU: the transformer's KV pages in bf16 (half the CPU's float32 bytes)
    gpu_state = row["state_bytes_per_session"] * (0.5 if row["kind"] == "world_model" else 1.0)
    row["state_bytes_per_session_gpu"] = int(gpu_state)
    row["sessions_per_gpu_memory"] = int(H200_MEMORY * GPU_STATE_FRACTION // max(1, gpu_state))
    for fps in (24, 8):
        row[f"sessions_per_gpu_{fps}fps"] = min(row["steps_per_s_h200"] / fps, row["sessions_per_gpu_memory"])
        if "archive_bytes_per_step" in row:
            row[f"archive_bytes_per_session_hour_{fps}fps"] = row["archive_bytes_per_step"] * fps * 3600
            row[f"archive_write_bytes_per_s_per_1000_sessions_{fps}fps"] = row["archive_bytes_per_step"] * fps * 1000
    if "redis_bytes_active" in row:
        usable = REDIS_NODE * REDIS_USABLE
        row["sessions_per_redis_node_active"] = int(usable // row["redis_bytes_active"])
        row["sessions_per_redis_node_idle"] = int(usable // row["redis_bytes_idle"])
    row["usd_per_gpu_hour"] = usd_per_h
    row["usd_per_simulated_s_24fps"] = (usd_per_h / 3600) / row["sessions_per_gpu_24fps"]
    return row
