"""What the engine bench's parts share: the device's peak FLOP/s and free memory, the large
configurations, the optional packages that are missing, and the log line.

Split from :mod:`loadtest.engine_bench` (the command). Imports nothing heavy at import time:
``loadtest/gpu_check.sh`` calls :func:`missing_packages` on a bare machine.
"""

from __future__ import annotations

import importlib.util
import os

GIB = 1024**3

# Peak dense (no sparsity) bf16 tensor FLOP/s by device name; the first substring that matches wins.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
)
FALLBACK_GPU_PEAK = 989e12  # an unknown GPU: assume an H200 (said so in the output)
CPU_FLOPS_PER_CORE = 2.5e9 * 32  # nominal: 2.5 GHz x two 8-lane fp32 FMA units

# The large configuration: same architecture, ~460M parameters, 640x360 frames -> 80x45 = 3600 tokens.
LARGE_CONFIG = dict(
    frame_height=360,
    frame_width=640,
    downsample=8,
    latent_channels=16,
    dim=1536,
    n_heads=12,
    n_layers=16,
    context_frames=16,
    sample_steps=4,
    guidance=2.0,
)
# --quick stand-in of the large configuration (CPU smoke test): the same code path, tiny sizes.
LARGE_QUICK_CONFIG = dict(
    frame_height=32,
    frame_width=64,
    downsample=8,
    latent_channels=8,
    dim=128,
    n_heads=2,
    n_layers=2,
    context_frames=8,
    sample_steps=2,
    guidance=2.0,
    ae_channels=8,
    event_dim=0,
)


def log(msg: str = "") -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------------------------------
# Missing packages on a bare machine


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package (google.protobuf)
        return False


OPTIONAL = {
    "numpy": "numpy",
    "PIL": "pillow",
    "safetensors": "safetensors",
    "grpc": "grpcio",
    "google.protobuf": "protobuf",
    "triton": "triton",
    "diffusers": "diffusers",  # the causal DiT's VAE (part 5); the H200 image lacks it: carry its wheel
}


def missing_packages() -> list[str]:
    """pip names of the optional packages that are not importable here."""
    return [pip for mod, pip in OPTIONAL.items() if not _has(mod)]


# --------------------------------------------------------------------------------------------------
# Device facts


def gpu_peak_flops(name: str) -> tuple[float, str]:
    """(peak dense bf16 FLOP/s, where the figure comes from) of a GPU by its device name."""
    for key, value in PEAK_BF16_FLOPS:
        if key in name:
            return value, f"{name}: {value / 1e12:.0f} TFLOP/s dense bf16 (table)"
    return FALLBACK_GPU_PEAK, f"{name}: not in the table, assuming {FALLBACK_GPU_PEAK / 1e12:.0f} TFLOP/s (H200)"


def peak_flops(device: str) -> tuple[float, str]:
    """(peak dense bf16 FLOP/s, where the figure comes from) of ``device``."""
    import torch

    if device.startswith("cuda"):
        return gpu_peak_flops(torch.cuda.get_device_name(torch.device(device)))
    cores = torch.get_num_threads()
    value = cores * CPU_FLOPS_PER_CORE
    return value, f"CPU, {cores} threads: nominal {value / 1e12:.2f} TFLOP/s fp32 (rough)"


def device_memory_available(device: str, override_gib: float | None) -> float:
    """Bytes available for session state on ``device`` now (an override wins)."""
    import torch

    if override_gib is not None:
        return override_gib * GIB
    if device.startswith("cuda"):
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        cached = torch.cuda.memory_reserved(torch.device(device)) - torch.cuda.memory_allocated(torch.device(device))
        return float(free + cached)
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError):
        return float("inf")


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def _is_oom(e: BaseException) -> bool:
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(e, oom) or "out of memory" in str(e).lower()
