"""Text-to-image backends: prompt -> first frame of a world.

``ImageBackend`` is the interface the image service depends on; any object with these members
plugs in (a diffusers pipeline wrapper, a remote client, ...); ``isinstance(obj, ImageBackend)``
checks the members exist. ``TinyTextToImage`` is the built-in
default: a small text-conditioned rectified-flow generator that runs on a CPU in well under a
second at 64x64 and needs no downloads (byte-level tokenizer). Its random init (fixed seed) makes
structured noise, not pictures; trained weights load through ``from_pretrained`` -- the shipped
ones (``worldserve/weights/image``, trained by ``python -m worldserve.train`` on the platformer's
captioned first frames) draw the world a caption like "a red door on the left, grass, night" describes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from worldserve.common.bytetok import VOCAB, tokenize_bytes
from worldserve.common.pretrained import read_folder, write_folder


@runtime_checkable
class ImageBackend(Protocol):
    """What the image service needs from a text-to-image model."""

    name: str
    """Model name reported to clients (GenerateImageResponse.model)."""
    supported_sizes: tuple[tuple[int, int], ...]
    """(width, height) pairs the backend can make; the first is the default size."""
    default_steps: int
    """Denoising steps used when a request leaves them unset."""
    default_guidance: float
    """Classifier-free guidance scale used when a request leaves it unset."""

    def check_size(self, width: int, height: int) -> None:
        """Raise ValueError quoting the value if (width, height) is not a size this backend makes."""
        ...

    def generate(self, prompt: str, *, seed: int, width: int, height: int, steps: int, guidance: float) -> np.ndarray:
        """One image, (height, width, 3) uint8; the same arguments always give the same image.
        Raises ValueError (quoting the bad value) for an empty prompt or an unsupported option."""
        ...


# --------------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class TinyTextToImageConfig:
    """Shape and limits of ``TinyTextToImage``; every field is checked in ``__post_init__``."""

    name: str = "tiny-t2i"
    """Model name reported to clients. 1..64 chars."""
    sizes: tuple[tuple[int, int], ...] = ((64, 64),)
    """(width, height) pairs the model makes, first = default. Each side in [8, 1024], a multiple
    of 4 (the denoiser downsamples twice). The convolutional denoiser runs at any such size;
    trained weights are only good at the sizes they were trained on, so list exactly those."""
    default_steps: int = 4
    """Euler steps when a request gives none. In [1, max_steps]."""
    max_steps: int = 64
    """Most steps a request may ask for. In [1, 1000]."""
    default_guidance: float = 3.0
    """CFG scale (against the empty prompt) when a request gives none. In [0, max_guidance]."""
    max_guidance: float = 20.0
    """Largest CFG scale a request may ask for. In [0, 100]."""
    max_prompt_bytes: int = 512
    """Longest prompt, in UTF-8 bytes (one token per byte). In [1, 8192]."""
    text_dim: int = 128
    """Text encoder width. In [16, 2048], divisible by ``text_heads``."""
    text_layers: int = 2
    """Text encoder transformer layers. In [0, 24]."""
    text_heads: int = 4
    """Text encoder attention heads. In [1, 32]."""
    channels: int = 32
    """Base conv width of the denoiser (2x at the coarser levels). In [8, 512]."""
    cond_dim: int = 128
    """Width of the conditioning vector (text + time) fed to every residual block. In [16, 2048]."""
    coord_channels: bool = True
    """Feed the denoiser two extra input channels holding each pixel's x and y in [-1, 1]. The text
    enters as a spatially uniform FiLM, so without them the convolutions barely know where they
    are and cannot follow "a red door on the left". False for checkpoints saved before this field."""

    def __post_init__(self) -> None:
        if isinstance(self.sizes, list):
            object.__setattr__(self, "sizes", tuple(tuple(s) for s in self.sizes))
        if not isinstance(self.name, str) or not 1 <= len(self.name) <= 64:
            raise ValueError(f"name must be a string of 1..64 chars, got {self.name!r}")
        if not isinstance(self.sizes, tuple) or not self.sizes:
            raise ValueError(f"sizes must be a non-empty tuple of (width, height), got {self.sizes!r}")
        for s in self.sizes:
            ok = isinstance(s, tuple) and len(s) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in s)
            if not ok or not all(8 <= v <= 1024 and v % 4 == 0 for v in s):
                raise ValueError(
                    f"sizes: each (width, height) side must be an int in [8, 1024], a multiple of 4; got {s!r}"
                )
        if len(set(self.sizes)) != len(self.sizes):
            raise ValueError(f"sizes has duplicates: {self.sizes!r}")
        _check_int("max_steps", self.max_steps, 1, 1000)
        _check_int("default_steps", self.default_steps, 1, self.max_steps)
        _check_float("max_guidance", self.max_guidance, 0.0, 100.0)
        _check_float("default_guidance", self.default_guidance, 0.0, self.max_guidance)
        _check_int("max_prompt_bytes", self.max_prompt_bytes, 1, 8192)
        _check_int("text_dim", self.text_dim, 16, 2048)
        _check_int("text_layers", self.text_layers, 0, 24)
        _check_int("text_heads", self.text_heads, 1, 32)
        if self.text_dim % self.text_heads:
            raise ValueError(f"text_dim must be divisible by text_heads={self.text_heads}, got {self.text_dim!r}")
        _check_int("channels", self.channels, 8, 512)
        _check_int("cond_dim", self.cond_dim, 16, 2048)
        if not isinstance(self.coord_channels, bool):
            raise ValueError(f"coord_channels must be a bool, got {self.coord_channels!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sizes"] = [list(s) for s in self.sizes]
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TinyTextToImageConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TinyTextToImageConfig fields {unknown!r}")
        return cls(**dict(data))


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an int in [{lo}, {hi}], got {value!r}")


def _check_float(name: str, value: Any, lo: float, hi: float) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or not lo <= value <= hi:
        raise ValueError(f"{name} must be a finite number in [{lo}, {hi}], got {value!r}")


# --------------------------------------------------------------------------------------------------
# Tokenizer and text encoder


def tokenize(prompts: Sequence[str], max_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Byte-level: ids (B, L) = BOS + UTF-8 bytes + EOS, right-padded; mask (B, L) True on real tokens."""
    return tokenize_bytes(prompts, max_bytes, what="prompt")


class TextBlock(nn.Module):
    """Pre-norm transformer block with a key-padding mask."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # x (B, L, C), mask (B, L)
        B, L, C = x.shape
        q, k, v = (
            self.qkv(self.norm1(x)).view(B, L, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        )  # (B, H, L, D)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])  # (B, H, L, D)
        x = x + self.proj(a.transpose(1, 2).reshape(B, L, C))
        return x + self.mlp(self.norm2(x))


class TextEncoder(nn.Module):
    """ids (B, L) -> mean-pooled embedding (B, cond_dim)."""

    def __init__(self, cfg: TinyTextToImageConfig):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, cfg.text_dim)
        self.pos = nn.Embedding(cfg.max_prompt_bytes + 2, cfg.text_dim)
        self.blocks = nn.ModuleList(TextBlock(cfg.text_dim, cfg.text_heads) for _ in range(cfg.text_layers))
        self.norm = nn.LayerNorm(cfg.text_dim)
        self.out = nn.Linear(cfg.text_dim, cfg.cond_dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))  # (B, L, C)
        for block in self.blocks:
            x = block(x, mask)
        m = mask[..., None].to(x.dtype)  # (B, L, 1)
        pooled = (self.norm(x) * m).sum(1) / m.sum(1)  # (B, C): mean over real tokens
        return self.out(pooled)


# --------------------------------------------------------------------------------------------------
# Denoiser: a small conditioned U-Net in pixel space


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of flow times t in [0, 1]: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


class FiLMResBlock(nn.Module):
    """x + conv(film(conv(silu(x)))): the conditioning vector scales and shifts every channel."""

    def __init__(self, ch: int, cond_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.film = nn.Linear(cond_dim, 2 * ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # x (B, ch, H, W), c (B, cond)
        h = self.conv1(F.silu(x))
        scale, shift = self.film(c)[:, :, None, None].chunk(2, dim=1)  # (B, ch, 1, 1) each
        h = F.silu(h * (1 + scale) + shift)
        return x + self.conv2(h)


class Denoiser(nn.Module):
    """Velocity v(x_t, t, text): (B, 3, H, W) -> (B, 3, H, W); H, W multiples of 4."""

    def __init__(self, cfg: TinyTextToImageConfig):
        super().__init__()
        c, c2, e = cfg.channels, 2 * cfg.channels, cfg.cond_dim
        self.time_mlp = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        self.coords = cfg.coord_channels
        self.inp = nn.Conv2d(3 + (2 if cfg.coord_channels else 0), c, 3, padding=1)
        self.enc1 = FiLMResBlock(c, e)  # H
        self.down1 = nn.Conv2d(c, c2, 3, stride=2, padding=1)
        self.enc2 = FiLMResBlock(c2, e)  # H/2
        self.down2 = nn.Conv2d(c2, c2, 3, stride=2, padding=1)
        self.mid = FiLMResBlock(c2, e)  # H/4
        self.up2 = nn.Conv2d(2 * c2, c2, 3, padding=1)
        self.dec2 = FiLMResBlock(c2, e)  # H/2
        self.up1 = nn.Conv2d(c2 + c, c, 3, padding=1)
        self.dec1 = FiLMResBlock(c, e)  # H
        self.out = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        c = text + self.time_mlp(timestep_embedding(t, text.shape[-1]).to(text.dtype))  # (B, cond)
        if self.coords:  # (B, 2, H, W): x then y, each in [-1, 1]
            B, _, H, W = x.shape
            ys = torch.linspace(-1, 1, H, device=x.device, dtype=x.dtype)[:, None].expand(H, W)
            xs = torch.linspace(-1, 1, W, device=x.device, dtype=x.dtype)[None, :].expand(H, W)
            x = torch.cat([x, torch.stack([xs, ys])[None].expand(B, -1, -1, -1)], dim=1)
        h1 = self.enc1(self.inp(x), c)  # (B, c, H, W)
        h2 = self.enc2(self.down1(F.silu(h1)), c)  # (B, 2c, H/2, W/2)
        h = self.mid(self.down2(F.silu(h2)), c)  # (B, 2c, H/4, W/4)
        h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        h = self.dec2(self.up2(torch.cat([h, h2], 1)), c)  # (B, 2c, H/2, W/2)
        h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        h = self.dec1(self.up1(torch.cat([h, h1], 1)), c)  # (B, c, H, W)
        return self.out(F.silu(h))


# --------------------------------------------------------------------------------------------------
# The backend


def image_noise_seed(seed: int) -> int:
    """63-bit generator seed from a request seed (any int, e.g. a uint64); stable across processes."""
    digest = hashlib.blake2b(f"worldserve.image:{operator.index(seed)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class TinyTextToImage(nn.Module):
    """Built-in ``ImageBackend``: byte tokenizer -> text encoder -> few-step rectified flow in pixel
    space with classifier-free guidance against the empty prompt."""

    def __init__(self, config: TinyTextToImageConfig | None = None):
        super().__init__()
        self.config = config if config is not None else TinyTextToImageConfig()
        self.name = self.config.name
        self.text_encoder = TextEncoder(self.config)
        self.denoiser = Denoiser(self.config)
        self.eval()

    # --- ImageBackend members ----------------------------------------------------------------------

    @property
    def supported_sizes(self) -> tuple[tuple[int, int], ...]:
        return self.config.sizes

    @property
    def default_steps(self) -> int:
        return self.config.default_steps

    @property
    def default_guidance(self) -> float:
        return self.config.default_guidance

    def check_size(self, width: int, height: int) -> None:
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (width, height))
        if not ints or (width, height) not in self.config.sizes:
            sizes = ", ".join(f"{w}x{h}" for w, h in self.config.sizes)
            raise ValueError(f"unsupported size {width!r}x{height!r} (width x height); supported: {sizes}")

    def generate(
        self, prompt: str, *, seed: int, width: int, height: int, steps: int, guidance: float
    ) -> np.ndarray:  # (H, W, 3) uint8
        return self.generate_batch([prompt], seeds=[seed], width=width, height=height, steps=steps, guidance=guidance)[
            0
        ]

    # --- batched generation ------------------------------------------------------------------------

    @torch.no_grad()
    def generate_batch(
        self,
        prompts: Sequence[str],
        *,
        seeds: Sequence[int],
        width: int,
        height: int,
        steps: int,
        guidance: float,
        batch_invariant: bool | None = None,
    ) -> np.ndarray:  # (N, H, W, 3) uint8
        """Several prompts at one size; image i depends only on (prompts[i], seeds[i]) and the
        options. ``batch_invariant`` (default: on for a CPU model, off on CUDA): bit for bit,
        whatever else is in the batch, by running each prompt alone (every kernel then sees the
        same shapes); off: one batched pass, equal up to float rounding."""
        cfg = self.config
        if batch_invariant is None:
            batch_invariant = self.denoiser.out.weight.device.type != "cuda"
        if batch_invariant and not isinstance(prompts, str) and len(prompts) > 1 and len(prompts) == len(seeds):
            return np.concatenate(
                [
                    self.generate_batch(
                        [p],
                        seeds=[s],
                        width=width,
                        height=height,
                        steps=steps,
                        guidance=guidance,
                        batch_invariant=False,
                    )
                    for p, s in zip(prompts, seeds)
                ]
            )
        if isinstance(prompts, str) or len(prompts) != len(seeds) or not prompts:
            raise ValueError(f"need a non-empty list of prompts and as many seeds, got {len(prompts)} and {len(seeds)}")
        for p in prompts:
            if not isinstance(p, str):
                raise ValueError(f"prompt must be a string, got {type(p).__name__}")
            if not p.strip():
                raise ValueError(f"prompt must not be empty or whitespace, got {p!r}")
        self.check_size(width, height)
        _check_int("steps", steps, 1, cfg.max_steps)
        _check_float("guidance", guidance, 0.0, cfg.max_guidance)
        seeds = [operator.index(s) for s in seeds]

        dev, dt = self.denoiser.out.weight.device, self.denoiser.out.weight.dtype
        n = len(prompts)
        use_cfg = guidance != 1.0
        ids, mask = tokenize([*prompts, *([""] if use_cfg else [])], cfg.max_prompt_bytes)
        text = self.text_encoder(ids.to(dev), mask.to(dev))  # (n [+1], cond)
        if use_cfg:  # rows 0..n-1 conditional, rows n..2n-1 the empty prompt
            text = torch.cat([text[:n], text[n:].expand(n, -1)])
        x = torch.stack(
            [torch.randn(3, height, width, generator=torch.Generator().manual_seed(image_noise_seed(s))) for s in seeds]
        ).to(dev, dt)  # (n, 3, H, W): noise drawn on CPU in float32, device-independent
        groups = 2 if use_cfg else 1
        grid = [1.0 - i / steps for i in range(steps + 1)]  # flow time: 1 = noise, 0 = image
        for t, t_next in zip(grid[:-1], grid[1:]):
            tt = torch.full((groups * n,), t, device=dev)
            v = self.denoiser(x.repeat(groups, 1, 1, 1), tt, text)  # (G*n, 3, H, W)
            if use_cfg:
                v = v[n:] + guidance * (v[:n] - v[n:])
            x = x + (t_next - t) * v
        img = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (n, 3, H, W)
        return img.permute(0, 2, 3, 1).cpu().numpy()

    # --- construction and persistence -------------------------------------------------------------

    @classmethod
    def random(cls, config: TinyTextToImageConfig | None = None, seed: int = 0) -> TinyTextToImage:
        """Random init; the same (config, seed) always gives the same weights. Leaves the global
        torch RNG untouched."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(operator.index(seed))
            return cls(config)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> TinyTextToImage:
        """Load a directory written by ``save_pretrained`` (config.json + model.safetensors)."""
        data, state = read_folder(path)
        if isinstance(data, dict) and "coord_channels" not in data:
            data = {**data, "coord_channels": False}  # saved before coordinate channels existed
        model = cls(TinyTextToImageConfig.from_dict(data))
        model.load_state_dict(state, strict=True)
        return model.to(device=device, dtype=dtype).eval()

    def save_pretrained(self, path: str | Path) -> None:
        """Write config.json and model.safetensors (never pickle) into directory ``path``."""
        write_folder(path, self.config.to_dict(), self.state_dict())
