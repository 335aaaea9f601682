"""CaptionDecoder: a deterministic caption -> first-frame regression model (an ``ImageBackend``).

The platformer's first frame is a pure function of its caption (objects at fixed slots, ground,
day/night with stars, rain streaks at t=0, fixed clouds, the player at the start), so this backend
does not sample: it regresses the frame directly.

    prompt --(ASCII lower-case, whitespace collapsed; a grammar caption in its canonical form)-->
      UTF-8 bytes (worldserve.common.bytetok)
      -> byte transformer (``text_layers`` pre-norm blocks, learned absolute positions)
      -> a learned ``grid`` x ``grid`` array of queries (per-cell embedding + row + column
         embeddings) that cross-attend to the caption tokens (``cross_layers`` blocks, each
         cross-attention + MLP)
      -> ``conv_blocks`` residual 3x3 conv blocks on the query grid
      -> per-cell MLP to (3 + ``fine_channels``) x patch x patch values, pixel shuffle to full size
      -> (if ``fine_channels`` > 0) a full-resolution 3x3 conv refinement of the fine features,
         added to the 3 base channels
      -> sigmoid -> uint8

The shipped shape (``worldserve.train.image_trainer.DECODER_CONFIG``): an 8 x 8 grid of 8 x 8 px
patches, no full-resolution refinement (it doubled the training cost for no measured gain).

Deterministic: ``seeds``, ``steps`` and ``guidance`` are accepted (and validated) for the
``ImageBackend`` interface but ignored; the same prompt always gives bitwise the same image (on
CPU each prompt runs alone by default, so the batch around it does not matter either).

Saved as a ``save_pretrained`` folder: ``config.json`` (with ``"kind": "caption_decoder"``) and
``model.safetensors`` (never pickle). ``load_caption_decoder(path, *, device)`` is the registry
loader (kind ``caption_decoder`` in the ``worldserve.image_models`` group).
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from worldserve.common import caption as grammar
from worldserve.common.bytetok import VOCAB, tokenize_bytes
from worldserve.common.pretrained import read_folder, write_folder

KIND = "caption_decoder"

_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def normalize_prompt(prompt: str) -> str:
    """ASCII lower-case and runs of whitespace collapsed to one space (never more UTF-8 bytes)."""
    return " ".join(prompt.translate(_LOWER).split())


def canonical_prompt(prompt: str) -> str:
    """What the model reads: a prompt in the caption grammar as its canonical caption (one form for
    every phrasing of a world: clause order, "and", articles, synonyms, the default clauses), any
    other prompt normalized (``normalize_prompt``). Text normalization, as a tokenizer's: the model
    learns the composition of worlds, not the grammar's phrasings."""
    norm = normalize_prompt(prompt)
    spec = grammar.is_caption(norm)
    return grammar.caption_of(spec) if spec is not None else norm


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an int in [{lo}, {hi}], got {value!r}")


def _check_float(name: str, value: Any, lo: float, hi: float) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or not lo <= value <= hi:
        raise ValueError(f"{name} must be a finite number in [{lo}, {hi}], got {value!r}")


# --------------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class CaptionDecoderConfig:
    """Shape and limits of ``CaptionDecoder``; every field is checked in ``__post_init__``."""

    name: str = "caption-decoder"
    """Model name reported to clients. 1..64 chars."""
    image_size: int = 64
    """Output width = height in pixels (the only supported size). In [8, 1024], a multiple of ``grid``."""
    grid: int = 16
    """Query grid side; each query draws an (image_size / grid)^2 patch. In [1, 128]."""
    default_steps: int = 1
    """Reported default steps (ignored: the model is deterministic). In [1, max_steps]."""
    max_steps: int = 64
    """Most steps a request may ask for (validated, then ignored). In [1, 1000]."""
    default_guidance: float = 1.0
    """Reported default guidance (ignored). In [0, max_guidance]."""
    max_guidance: float = 20.0
    """Largest guidance a request may ask for (validated, then ignored). In [0, 100]."""
    max_prompt_bytes: int = 512
    """Longest prompt, in UTF-8 bytes. In [1, 8192]."""
    text_dim: int = 128
    """Caption encoder width. In [16, 2048], divisible by ``heads``."""
    text_layers: int = 3
    """Caption encoder transformer blocks. In [0, 24]."""
    dim: int = 128
    """Query / decoder width. In [16, 2048], divisible by ``heads``."""
    heads: int = 4
    """Attention heads (caption encoder and cross-attention). In [1, 32]."""
    cross_layers: int = 2
    """Query blocks (cross-attention to the caption + MLP). In [1, 16]."""
    conv_blocks: int = 1
    """Residual 3x3 conv blocks on the query grid. In [0, 16]."""
    head_hidden: int = 256
    """Hidden width of the per-cell output MLP. In [8, 4096]."""
    fine_channels: int = 16
    """Full-resolution feature channels refined by two 3x3 convs (0 = no refinement). In [0, 256]."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not 1 <= len(self.name) <= 64:
            raise ValueError(f"name must be a string of 1..64 chars, got {self.name!r}")
        _check_int("grid", self.grid, 1, 128)
        _check_int("image_size", self.image_size, 8, 1024)
        if self.image_size % self.grid:
            raise ValueError(f"image_size must be a multiple of grid={self.grid}, got {self.image_size!r}")
        _check_int("max_steps", self.max_steps, 1, 1000)
        _check_int("default_steps", self.default_steps, 1, self.max_steps)
        _check_float("max_guidance", self.max_guidance, 0.0, 100.0)
        _check_float("default_guidance", self.default_guidance, 0.0, self.max_guidance)
        _check_int("max_prompt_bytes", self.max_prompt_bytes, 1, 8192)
        _check_int("heads", self.heads, 1, 32)
        for f in ("text_dim", "dim"):
            _check_int(f, getattr(self, f), 16, 2048)
            if getattr(self, f) % self.heads:
                raise ValueError(f"{f} must be divisible by heads={self.heads}, got {getattr(self, f)!r}")
        _check_int("text_layers", self.text_layers, 0, 24)
        _check_int("cross_layers", self.cross_layers, 1, 16)
        _check_int("conv_blocks", self.conv_blocks, 0, 16)
        _check_int("head_hidden", self.head_hidden, 8, 4096)
        _check_int("fine_channels", self.fine_channels, 0, 256)

    @property
    def patch(self) -> int:
        return self.image_size // self.grid

    def to_dict(self) -> dict[str, Any]:
        return {"kind": KIND, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CaptionDecoderConfig:
        if not isinstance(data, Mapping):
            raise ValueError(f"config must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        kind = data.pop("kind", None)
        if kind != KIND:
            raise ValueError(f"config kind is {kind!r}, not {KIND!r}: not a CaptionDecoder checkpoint")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown CaptionDecoderConfig fields {unknown!r}")
        return cls(**data)


# --------------------------------------------------------------------------------------------------
# Modules


class _Attention(nn.Module):
    """Multi-head attention of queries x (B, N, C) over keys/values ctx (B, L, C), key-padding mask (B, L)."""

    def __init__(self, dim: int, ctx_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(ctx_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        L, H = ctx.shape[1], self.heads
        q = self.q(x).view(B, N, H, C // H).transpose(1, 2)  # (B, H, N, D)
        k, v = self.kv(ctx).view(B, L, 2, H, C // H).permute(2, 0, 3, 1, 4)  # (B, H, L, D) each
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return self.proj(a.transpose(1, 2).reshape(B, N, C))


def _mlp(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))


class _SelfBlock(nn.Module):
    """Pre-norm transformer block over the caption bytes."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), _Attention(dim, dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), _mlp(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, mask)
        return x + self.mlp(self.norm2(x))


class _CrossBlock(nn.Module):
    """Pre-norm block: the query grid attends to the caption tokens, then an MLP."""

    def __init__(self, dim: int, ctx_dim: int, heads: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), _Attention(dim, ctx_dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), _mlp(dim)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), ctx, mask)
        return x + self.mlp(self.norm2(x))


class _ConvBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.gelu(self.conv1(F.gelu(x))))


# --------------------------------------------------------------------------------------------------
# The backend


class CaptionDecoder(nn.Module):
    """``ImageBackend``: caption -> first frame in one deterministic forward pass (see module doc)."""

    def __init__(self, config: CaptionDecoderConfig | None = None):
        super().__init__()
        cfg = self.config = config if config is not None else CaptionDecoderConfig()
        self.name = cfg.name
        g, p = cfg.grid, cfg.patch
        # caption encoder
        self.tok = nn.Embedding(VOCAB, cfg.text_dim)
        self.pos = nn.Embedding(cfg.max_prompt_bytes + 2, cfg.text_dim)
        self.text_blocks = nn.ModuleList(_SelfBlock(cfg.text_dim, cfg.heads) for _ in range(cfg.text_layers))
        self.text_norm = nn.LayerNorm(cfg.text_dim)
        # query grid
        self.queries = nn.Parameter(torch.randn(g * g, cfg.dim) * 0.02)
        self.row = nn.Parameter(torch.randn(g, 1, cfg.dim) * 0.02)
        self.col = nn.Parameter(torch.randn(1, g, cfg.dim) * 0.02)
        self.cross_blocks = nn.ModuleList(
            _CrossBlock(cfg.dim, cfg.text_dim, cfg.heads) for _ in range(cfg.cross_layers)
        )
        self.grid_norm = nn.LayerNorm(cfg.dim)
        # decoder
        self.convs = nn.ModuleList(_ConvBlock(cfg.dim) for _ in range(cfg.conv_blocks))
        self.head1 = nn.Linear(cfg.dim, cfg.head_hidden)
        self.head2 = nn.Linear(cfg.head_hidden, (3 + cfg.fine_channels) * p * p)
        if cfg.fine_channels:
            self.fine1 = nn.Conv2d(cfg.fine_channels, cfg.fine_channels, 3, padding=1)
            self.fine2 = nn.Conv2d(cfg.fine_channels, 3, 3, padding=1)
        self.eval()

    # --- forward ------------------------------------------------------------------------------------

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask (B, L) -> image in [0, 1], (B, 3, image_size, image_size)."""
        cfg = self.config
        B, L = ids.shape
        t = self.tok(ids) + self.pos(torch.arange(L, device=ids.device))  # (B, L, Ct)
        for blk in self.text_blocks:
            t = blk(t, mask)
        t = self.text_norm(t)
        g = cfg.grid
        q = (self.queries.view(g, g, -1) + self.row + self.col).view(1, g * g, -1).expand(B, -1, -1)  # (B, g*g, C)
        for blk in self.cross_blocks:
            q = blk(q, t, mask)
        h = self.grid_norm(q)  # (B, g*g, C)
        if self.convs:
            h = h.transpose(1, 2).reshape(B, cfg.dim, g, g)  # (B, C, g, g)
            for blk in self.convs:
                h = blk(h)
            h = h.flatten(2).transpose(1, 2)  # (B, g*g, C)
        h = self.head2(F.gelu(self.head1(h)))  # (B, g*g, (3 + F) p^2): the per-cell output MLP
        h = F.pixel_shuffle(h.transpose(1, 2).reshape(B, -1, g, g), cfg.patch)  # (B, 3 + F, S, S)
        out = h[:, :3]
        if cfg.fine_channels:
            out = out + self.fine2(F.gelu(self.fine1(F.gelu(h[:, 3:]))))
        return torch.sigmoid(out)

    def encode_prompts(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Canonical (``canonical_prompt``), byte-tokenized prompts: ids, mask (B, L) on the model's device."""
        ids, mask = tokenize_bytes([canonical_prompt(p) for p in prompts], self.config.max_prompt_bytes, what="prompt")
        dev = self.queries.device
        return ids.to(dev), mask.to(dev)

    # --- ImageBackend members ----------------------------------------------------------------------

    @property
    def supported_sizes(self) -> tuple[tuple[int, int], ...]:
        s = self.config.image_size
        return ((s, s),)

    @property
    def default_steps(self) -> int:
        return self.config.default_steps

    @property
    def default_guidance(self) -> float:
        return self.config.default_guidance

    def check_size(self, width: int, height: int) -> None:
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (width, height))
        if not ints or (width, height) not in self.supported_sizes:
            sizes = ", ".join(f"{w}x{h}" for w, h in self.supported_sizes)
            raise ValueError(f"unsupported size {width!r}x{height!r} (width x height); supported: {sizes}")

    def generate(
        self, prompt: str, *, seed: int = 0, width: int, height: int, steps: int = 1, guidance: float = 1.0
    ) -> np.ndarray:  # (H, W, 3) uint8
        return self.generate_batch([prompt], seeds=[seed], width=width, height=height, steps=steps, guidance=guidance)[
            0
        ]

    @torch.no_grad()
    def generate_batch(
        self,
        prompts: Sequence[str],
        *,
        seeds: Sequence[int] | None = None,
        width: int,
        height: int,
        steps: int = 1,
        guidance: float = 1.0,
        batch_invariant: bool | None = None,
    ) -> np.ndarray:  # (N, H, W, 3) uint8
        """Several prompts: image i depends only on prompts[i] (seeds, steps and guidance are
        validated and ignored; ``seeds`` may be None, else one per prompt). ``batch_invariant``
        (default: on for a CPU model, off on CUDA): bit for bit whatever else is in the batch, by
        running each prompt alone; off: one batched pass, equal up to float rounding."""
        cfg = self.config
        if isinstance(prompts, str) or not prompts:
            raise ValueError(f"need a non-empty list of prompts, got {prompts!r}")
        if seeds is not None and (isinstance(seeds, (str, bytes)) or len(seeds) != len(prompts)):
            raise ValueError(f"need as many seeds as prompts, got {len(prompts)} prompts and seeds {seeds!r}")
        for p in prompts:
            if not isinstance(p, str):
                raise ValueError(f"prompt must be a string, got {type(p).__name__}")
            if not p.strip():
                raise ValueError(f"prompt must not be empty or whitespace, got {p!r}")
            n_bytes = len(p.encode("utf-8"))
            if n_bytes > cfg.max_prompt_bytes:
                raise ValueError(
                    f"prompt is {n_bytes} bytes in UTF-8; at most {cfg.max_prompt_bytes} allowed: {p[:80]!r}"
                )
        self.check_size(width, height)
        _check_int("steps", steps, 1, cfg.max_steps)
        _check_float("guidance", guidance, 0.0, cfg.max_guidance)
        if seeds is not None:
            for s in seeds:
                operator.index(s)  # TypeError for a non-integer seed, like TinyTextToImage
        if batch_invariant is None:
            batch_invariant = self.queries.device.type != "cuda"
        groups = [[p] for p in prompts] if batch_invariant else [list(prompts)]
        out = []
        for group in groups:
            ids, mask = self.encode_prompts(group)
            img = self(ids, mask).float()  # (n, 3, S, S) in [0, 1]
            out.append((img * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
        return np.concatenate(out)

    # --- construction and persistence -------------------------------------------------------------

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def random(cls, config: CaptionDecoderConfig | None = None, seed: int = 0) -> CaptionDecoder:
        """Random init; the same (config, seed) always gives the same weights. Leaves the global
        torch RNG untouched."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(operator.index(seed))
            return cls(config)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> CaptionDecoder:
        """Load a directory written by ``save_pretrained`` (config.json + model.safetensors)."""
        data, state = read_folder(path)
        model = cls(CaptionDecoderConfig.from_dict(data))
        model.load_state_dict(state, strict=True)
        return model.to(device=device, dtype=dtype).eval()

    def save_pretrained(self, path: str | Path) -> None:
        """Write config.json (with ``"kind": "caption_decoder"``) and model.safetensors (never pickle)."""
        write_folder(path, self.config.to_dict(), self.state_dict())


def load_caption_decoder(path: str | None, *, device: str = "cpu") -> CaptionDecoder:
    """Registry loader for kind ``caption_decoder``: ``path`` a ``save_pretrained`` folder (a missing
    or corrupt file: ModelLoadError naming it), or None for random init (seed 0)."""
    from worldserve.common.registry import load_pretrained

    return load_pretrained(
        "image model 'caption_decoder'",
        path,
        lambda: CaptionDecoder.random(seed=0).to(device),
        lambda folder: CaptionDecoder.from_pretrained(folder).to(device),
    )
