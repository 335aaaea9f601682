"""Frame autoencoder: RGB uint8 frames <-> a small latent grid the transformer tokenizes.

Deterministic both ways (no sampling at encode): the same frame always gives the same latents, so
a session's context window can be rebuilt from stored frames or stored latents alike.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import WorldModelConfig


def _widths(cfg: WorldModelConfig) -> list[int]:
    """Conv width at each resolution level, from full resolution (level 0) down."""
    n_stages = cfg.downsample.bit_length() - 1  # log2(downsample)
    return [cfg.ae_channels * min(2**i, 4) for i in range(n_stages + 1)]


class ResBlock(nn.Module):
    """x + conv(silu(conv(silu(x)))): keeps resolution and width."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, ch, H, W)
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class Encoder(nn.Module):
    """(N, 3, H, W) in [-1, 1] -> (N, C, H/ds, W/ds)."""

    def __init__(self, cfg: WorldModelConfig):
        super().__init__()
        w = _widths(cfg)
        self.stem = nn.Conv2d(3, w[0], 3, padding=1)
        # one stride-2 conv + residual block per halving of resolution
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(w[i], w[i + 1], 3, stride=2, padding=1), ResBlock(w[i + 1]))
            for i in range(len(w) - 1)
        )
        self.out = nn.Conv2d(w[-1], cfg.latent_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (N, w0, H, W)
        for stage in self.down:
            x = stage(x)  # (N, w[i+1], H/2^(i+1), W/2^(i+1))
        return self.out(F.silu(x))  # (N, C, h, w)


class Decoder(nn.Module):
    """(N, C, h, w) -> (N, 3, h*ds, w*ds), unbounded (``decode`` clamps to [-1, 1])."""

    def __init__(self, cfg: WorldModelConfig):
        super().__init__()
        w = _widths(cfg)[::-1]  # coarsest first
        self.stem = nn.Conv2d(cfg.latent_channels, w[0], 3, padding=1)
        # nearest 2x upsample + conv + residual block per doubling of resolution
        self.up = nn.ModuleList(
            nn.Sequential(
                nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(w[i], w[i + 1], 3, padding=1), ResBlock(w[i + 1])
            )
            for i in range(len(w) - 1)
        )
        self.out = nn.Conv2d(w[-1], 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.stem(z)  # (N, w_coarse, h, w)
        for stage in self.up:
            x = stage(x)  # (N, w, 2h, 2w)
        return self.out(F.silu(x))  # (N, 3, H, W)


class Autoencoder(nn.Module):
    """uint8 frames (N, H, W, 3) <-> float latents (N, C, h, w)."""

    def __init__(self, cfg: WorldModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def check_frames(self, frames: torch.Tensor) -> None:
        c = self.cfg
        want = (c.frame_height, c.frame_width, 3)
        if not isinstance(frames, torch.Tensor) or frames.dtype != torch.uint8:
            raise ValueError(
                f"frames must be a uint8 tensor (N, H, W, 3), got {getattr(frames, 'dtype', type(frames))}"
            )
        if frames.dim() != 4 or tuple(frames.shape[1:]) != want:
            raise ValueError(f"frames must have shape (N, {want[0]}, {want[1]}, 3), got {tuple(frames.shape)}")

    def check_latents(self, latents: torch.Tensor) -> None:
        c = self.cfg
        want = (c.latent_channels, c.latent_height, c.latent_width)
        if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
            raise ValueError(
                f"latents must be a float tensor (N, C, h, w), got {getattr(latents, 'dtype', type(latents))}"
            )
        if latents.dim() != 4 or tuple(latents.shape[1:]) != want:
            raise ValueError(
                f"latents must have shape (N, {want[0]}, {want[1]}, {want[2]}), got {tuple(latents.shape)}"
            )

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> (N, C, h, w) in the parameters' dtype."""
        self.check_frames(frames)
        p = self.encoder.out.weight
        x = frames.to(device=p.device).permute(0, 3, 1, 2).to(p.dtype) / 127.5 - 1.0  # (N, 3, H, W) in [-1, 1]
        return self.encoder(x) * self.cfg.latent_scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) -> (N, H, W, 3) uint8."""
        self.check_latents(latents)
        p = self.decoder.out.weight
        x = self.decoder(latents.to(device=p.device, dtype=p.dtype) / self.cfg.latent_scale)  # (N, 3, H, W)
        x = ((x.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round()
        return x.to(torch.uint8).permute(0, 2, 3, 1).contiguous()  # (N, H, W, 3)
