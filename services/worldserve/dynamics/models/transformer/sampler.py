"""Few-step rectified-flow sampler pieces: seeded noise, the time grid, CFG, the Euler update.

Convention (rectified flow / flow matching): ``x_t = (1 - t) * x_0 + t * noise``, so t = 1 is pure
noise and t = 0 is the clean latent; the model predicts the velocity ``v = noise - x_0`` and the
sampler integrates dx/dt = v from t = 1 down to t = 0 with Euler steps.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Sequence

import torch


def noise_seed(seed: int, step: int) -> int:
    """A 63-bit generator seed, a stable function of (session seed, absolute step).

    Uses BLAKE2b, not ``hash()`` (salted per process for str and not part of any contract), so the
    noise of a step is the same in every process, on every machine, in any batch.
    """
    seed, step = operator.index(seed), operator.index(step)
    digest = hashlib.blake2b(f"worldserve.dynamics:{seed}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def initial_noise(
    seeds: Sequence[int],
    steps: Sequence[int],
    shape: tuple[int, ...],  # (C, h, w) of one frame's latents
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:  # (N, C, h, w)
    """Gaussian noise per (seed, step), drawn on CPU in float32 (device-independent), then moved."""
    out = []
    for seed, step in zip(seeds, steps):
        g = torch.Generator(device="cpu").manual_seed(noise_seed(seed, step))
        out.append(torch.randn(shape, generator=g, dtype=torch.float32))
    return torch.stack(out).to(device=device, dtype=dtype)


def time_grid(sample_steps: int) -> list[float]:
    """Flow times from 1 (noise) to 0 (clean): ``sample_steps + 1`` points, evenly spaced."""
    return [1.0 - i / sample_steps for i in range(sample_steps + 1)]


def cfg_combine(v_cond: torch.Tensor, v_uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance: v = v_uncond + g * (v_cond - v_uncond); g = 1 is plain conditional."""
    return v_uncond + guidance * (v_cond - v_uncond)


def euler_step(x: torch.Tensor, v: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """One Euler step of dx/dt = v from t to t_next (t_next < t)."""
    return x + (t_next - t) * v
