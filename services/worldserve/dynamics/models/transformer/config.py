"""The one typed config of the dynamics world model.

Every field has a bound checked in ``__post_init__``; errors quote the bad value. The defaults give
a small model (about 3.5M parameters) that steps on a CPU in tens of milliseconds.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value!r}")


def _check_float(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value > hi or value < lo or (lo_open and value == lo):
        bracket = "(" if lo_open else "["
        raise ValueError(f"{name} must be in {bracket}{lo}, {hi}], got {value!r}")


def _check_names(name: str, value: Any) -> None:
    if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must be a tuple of strings, got {value!r}")
    if len(value) > 256:
        raise ValueError(f"{name} may hold at most 256 names, got {len(value)}")
    for v in value:
        if not _NAME_RE.match(v):
            raise ValueError(f"{name}: invalid name {v!r} (letters, digits, '_', '.', '-'; at most 64 chars)")
    dupes = sorted({v for v in value if value.count(v) > 1})
    if dupes:
        raise ValueError(f"{name}: duplicate names {dupes!r}")


@dataclass(frozen=True)
class WorldModelConfig:
    """Shape of the autoencoder, the transformer, the action space and the sampler."""

    # --- frames and autoencoder ---
    frame_height: int = 64
    """Frame height in pixels (RGB). In [8, 2048], a multiple of ``downsample``."""
    frame_width: int = 64
    """Frame width in pixels. In [8, 2048], a multiple of ``downsample``."""
    latent_channels: int = 8
    """Channels of the latent grid a frame encodes to. In [1, 256]."""
    downsample: int = 8
    """Spatial downsampling of the autoencoder: a power of two in [1, 64]. The latent grid is
    (frame_height / downsample) x (frame_width / downsample); each cell is one transformer token."""
    ae_channels: int = 32
    """Base conv width of the autoencoder (doubles per downsampling stage, capped at 4x). In [4, 512]."""
    latent_scale: float = 1.0
    """Encoder outputs are multiplied by this (decoder inputs divided) so latents have about unit
    variance, matching the sampler's Gaussian noise. In (0, 1000]."""

    # --- transformer ---
    dim: int = 128
    """Token width (the CPU default: ~3x cheaper per step than 256, head_dim stays 64). In [16, 8192], divisible by ``n_heads`` with an even head dim (RoPE)."""
    n_layers: int = 4
    """Transformer blocks. In [1, 128]."""
    n_heads: int = 2
    """Attention heads. In [1, 128]; head_dim = dim / n_heads."""
    mlp_ratio: float = 4.0
    """MLP hidden width as a multiple of ``dim``. In [1, 16]."""
    context_frames: int = 16
    """Frames a new frame attends to, itself included; the KV cache holds at most
    ``context_frames - 1`` past frames. In [2, 4096]."""
    rope_theta: float = 10000.0
    """RoPE base over the absolute frame index. In (1, 1e7]."""
    spatial_rope: bool = True
    """Give half of each head's RoPE frequency pairs to the token's (row, column) in the latent grid
    (a quarter each; base 100) and the other half to the frame index, so attention scores depend
    on spatial offsets too: a strong prior for content that moves (the view scrolls). Still only
    relative offsets, so cached keys stay valid as the window slides. Needs head_dim % 8 == 0.
    False = every pair rotates by the frame index."""
    norm_eps: float = 1e-6
    """Epsilon of every RMSNorm. In (0, 0.01]."""

    # --- action space ---
    keys: tuple[str, ...] = ("left", "right", "up", "down", "jump", "fire")
    """Named keys; an action is the multi-hot vector of the keys held (none held = no-op)."""
    mouse_axes: tuple[str, ...] = ("mouse_x", "mouse_y")
    """Continuous mouse axes, each in [-1, 1]; may be empty. Disjoint from ``keys``; together they
    must name at least one action dimension."""

    # --- event text conditioning ---
    event_dim: int = 64
    """Width of the event text encoder (byte tokens -> ``event_layers`` blocks -> mean pool -> an
    MLP to ``dim``); its output is added to every frame's conditioning. 0 = no event conditioning
    (``WorldModel.events_supported`` is False). In [0, 1024], even."""
    event_layers: int = 1
    """Transformer blocks of the event encoder. In [0, 8]."""
    event_max_bytes: int = 64
    """Longest event text in UTF-8 bytes (after lowercasing and collapsing whitespace). In [1, 1024]."""
    events: tuple[str, ...] = ()
    """The events the model declares (``ModelInfo.events``: free text is mapped to one); empty: the
    platformer's events it was trained on (``worldserve.common.caption.EVENTS``)."""

    # --- sampler ---
    sample_steps: int = 4
    """Default Euler steps of the rectified-flow sampler per frame. In [1, 1000]."""
    guidance: float = 2.0
    """Default classifier-free guidance scale on the action (1 = no guidance). In [0, 100]."""
    cfg_dropout_p: float = 0.1
    """Training only: probability a frame's action is replaced by the null action, which teaches
    the unconditional branch that guidance needs. In [0, 1)."""

    def __post_init__(self) -> None:
        # JSON gives lists; accept them and store tuples so the frozen config stays hashable.
        for name in ("keys", "mouse_axes", "events"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        _check_int("downsample", self.downsample, 1, 64)
        if self.downsample & (self.downsample - 1):
            raise ValueError(f"downsample must be a power of two, got {self.downsample!r}")
        for name in ("frame_height", "frame_width"):
            _check_int(name, getattr(self, name), 8, 2048)
            if getattr(self, name) % self.downsample:
                raise ValueError(
                    f"{name} must be a multiple of downsample={self.downsample}, got {getattr(self, name)!r}"
                )
        _check_int("latent_channels", self.latent_channels, 1, 256)
        _check_int("ae_channels", self.ae_channels, 4, 512)
        _check_float("latent_scale", self.latent_scale, 0.0, 1000.0, lo_open=True)
        _check_int("dim", self.dim, 16, 8192)
        _check_int("n_layers", self.n_layers, 1, 128)
        _check_int("n_heads", self.n_heads, 1, 128)
        if self.dim % self.n_heads or (self.dim // self.n_heads) % 2:
            raise ValueError(
                f"dim must be divisible by n_heads={self.n_heads} with an even head dim, got dim={self.dim!r}"
            )
        _check_float("mlp_ratio", self.mlp_ratio, 1.0, 16.0)
        _check_int("context_frames", self.context_frames, 2, 4096)
        _check_float("rope_theta", self.rope_theta, 1.0, 1e7, lo_open=True)
        _check_float("norm_eps", self.norm_eps, 0.0, 0.01, lo_open=True)
        if not isinstance(self.spatial_rope, bool):
            raise ValueError(f"spatial_rope must be a bool, got {self.spatial_rope!r}")
        if self.spatial_rope and self.head_dim % 8:
            raise ValueError(f"spatial_rope needs head_dim = dim / n_heads divisible by 8, got {self.head_dim!r}")
        _check_names("keys", self.keys)
        _check_names("mouse_axes", self.mouse_axes)
        both = sorted(set(self.keys) & set(self.mouse_axes))
        if both:
            raise ValueError(f"keys and mouse_axes must be disjoint, both name {both!r}")
        if not self.keys and not self.mouse_axes:
            raise ValueError("keys and mouse_axes are both empty; the action space needs at least one dimension")
        _check_int("event_dim", self.event_dim, 0, 1024)
        if self.event_dim % 2:
            raise ValueError(f"event_dim must be even, got {self.event_dim!r}")
        _check_int("event_layers", self.event_layers, 0, 8)
        if not all(isinstance(e, str) and e.strip() for e in self.events):
            raise ValueError(f"events must be non-empty strings, got {list(self.events)!r}")
        _check_int("event_max_bytes", self.event_max_bytes, 1, 1024)
        _check_int("sample_steps", self.sample_steps, 1, 1000)
        _check_float("guidance", self.guidance, 0.0, 100.0)
        _check_float("cfg_dropout_p", self.cfg_dropout_p, 0.0, 1.0)
        if self.cfg_dropout_p >= 1.0:
            raise ValueError(f"cfg_dropout_p must be < 1, got {self.cfg_dropout_p!r}")

    # --- derived sizes ---
    @property
    def latent_height(self) -> int:
        return self.frame_height // self.downsample

    @property
    def latent_width(self) -> int:
        return self.frame_width // self.downsample

    @property
    def frame_tokens(self) -> int:
        """Tokens per frame: one per latent grid cell."""
        return self.latent_height * self.latent_width

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def action_dim(self) -> int:
        """Length of an action vector: the multi-hot keys, then the mouse axes."""
        return len(self.keys) + len(self.mouse_axes)

    # --- JSON ---
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (tuples become lists); ``from_dict`` inverts it."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorldModelConfig:
        """Build from ``to_dict()`` output; unknown fields are an error, missing ones take defaults."""
        if not isinstance(data, Mapping):
            raise ValueError(f"config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown WorldModelConfig fields {unknown!r}")
        kwargs = {k: (tuple(v) if k in ("keys", "mouse_axes") and isinstance(v, list) else v) for k, v in data.items()}
        return cls(**kwargs)
