"""Serving options of a causal DiT: what the published checkpoint does not say.

A published Wan-lineage folder holds the network's and the VAE's config and weights; how it is run
(chunk size, rolling KV cache, denoising schedule, frame size, action names) comes from the served
model's ``options:`` in the serve YAML (``ModelSpec.options``), read here into one frozen
:class:`CausalDiTOptions`. Unknown options are errors naming the option.

Time layout (the kind's one definition): step 0 is the session's first frame, one latent frame
(the VAE encoding of its first image); every later step makes ``chunk_frames`` latent frames under
one action. Chunk j's frames see each other and, of earlier frames, the first ``sink_frames`` plus
the last ``window_frames`` before the chunk's first frame: the session's KV cache keeps exactly those.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CausalDiTOptions:
    """How a causal DiT is served. Every field has a default; see the module docstring."""

    chunk_frames: int = 1
    """Latent frames one step makes (1 .. 16). Each decodes to 4 pixel frames (Wan's VAE); the
    step's frame is the last one."""
    sink_frames: int = 1
    """Earliest latent frames every later chunk keeps attending to (0 .. 64; the attention sink)."""
    window_frames: int = 12
    """Most recent latent frames before a chunk that it attends to (1 .. 1024): the rolling cache."""
    timesteps: tuple[int, ...] = (1000, 750, 500, 250)
    """The few-step denoising schedule, strictly decreasing in (0, 1000], before the shift: pass k
    runs at sigma = shift(k / 1000) (Self-Forcing's warped denoising steps)."""
    shift: float = 5.0
    """Wan's flow shift: sigma' = shift * s / (1 + (shift - 1) * s) (1: no shift)."""
    latent_height: int = 60
    """Latent rows of a frame (the frame is 8x: 60 -> 480 pixels)."""
    latent_width: int = 104
    """Latent columns of a frame (104 -> 832 pixels)."""
    keys: tuple[str, ...] | None = None
    """Names of the keyboard inputs, in the action module's order; None: defaults for the action
    config's keyboard size (4: forward, back, left, right)."""
    mouse_axes: tuple[str, ...] | None = None
    """Names of the mouse inputs, in the action module's order; None: defaults for the action
    config's mouse size (2: pitch, yaw)."""
    text_len: int = 512
    """Text tokens a session's prompt embedding is zero-padded to (Wan's text_len): every session
    then has the same cross-attention length, so batching does not change a session's frames."""
    decode_cache: str = "store"
    """How an exact resume gets the session's VAE decode cache back: ``"store"`` keeps it in every
    step's resume data (bytes: the cache, 3.5 GiB at 480x832 in float32); ``"rebuild"`` decodes the
    last ``history_frames`` latent frames again at prefill (38 for Wan2.1's VAE: compute instead of
    bytes; the engine's window then spans them)."""

    exact_resume: bool = True
    """Keep what an exact resume needs in every step's resume data (the step's keys/values: 274 MiB a
    latent frame for Wan2.1-1.3B at 480x832 in bf16; see ``decode_cache``). False: none; a session
    rebuilt from its latents is then close to the warm one, not bitwise."""

    def __post_init__(self) -> None:
        _int_in("chunk_frames", self.chunk_frames, 1, 16)
        _int_in("sink_frames", self.sink_frames, 0, 64)
        _int_in("window_frames", self.window_frames, 1, 1024)
        _int_in("latent_height", self.latent_height, 1, 4096)
        _int_in("latent_width", self.latent_width, 1, 4096)
        _int_in("text_len", self.text_len, 1, 4096)
        ts = _names_or_ints("timesteps", self.timesteps, int)
        if not ts or any(not 0 < t <= 1000 for t in ts) or any(a <= b for a, b in zip(ts, ts[1:])):
            raise ValueError(f"timesteps must be strictly decreasing integers in (0, 1000], got {self.timesteps!r}")
        object.__setattr__(self, "timesteps", ts)
        s = self.shift
        if isinstance(s, bool) or not isinstance(s, numbers.Real) or not (math.isfinite(s) and 0 < s <= 100):
            raise ValueError(f"shift must be a number in (0, 100], got {s!r}")
        object.__setattr__(self, "shift", float(s))
        if not isinstance(self.exact_resume, bool):
            raise ValueError(f"exact_resume must be true or false, got {self.exact_resume!r}")
        if self.decode_cache not in ("store", "rebuild"):
            raise ValueError(f"decode_cache must be 'store' or 'rebuild', got {self.decode_cache!r}")
        for name in ("keys", "mouse_axes"):
            value = getattr(self, name)
            if value is not None:
                names = _names_or_ints(name, value, str)
                if len(set(names)) != len(names) or any(not n for n in names):
                    raise ValueError(f"{name} must be distinct non-empty names, got {value!r}")
                object.__setattr__(self, name, names)

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> CausalDiTOptions:
        """From a served model's ``options:`` mapping; an unknown option is a ValueError naming it."""
        options = dict(options or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown causal_dit option {unknown[0]!r}; expected some of {sorted(known)}")
        for name in ("timesteps", "keys", "mouse_axes"):
            if isinstance(options.get(name), list):
                options[name] = tuple(options[name])
        return cls(**options)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    # --- the time layout ------------------------------------------------------------------------

    def step_frames(self, step: int) -> range:
        """Absolute latent frames step ``step`` holds: frame 0 for step 0, then ``chunk_frames`` each."""
        if step == 0:
            return range(0, 1)
        first = 1 + (step - 1) * self.chunk_frames
        return range(first, first + self.chunk_frames)

    def frame_step(self, frame: int) -> int:
        """The step that made latent frame ``frame``."""
        return 0 if frame == 0 else (frame - 1) // self.chunk_frames + 1

    def visible_before(self, first_frame: int) -> list[int]:
        """Earlier frames a chunk starting at ``first_frame`` sees, ascending: the sink frames and
        the last ``window_frames`` before it (what the session's KV cache holds then)."""
        keep = set(range(min(self.sink_frames, first_frame)))
        keep.update(range(max(0, first_frame - self.window_frames), first_frame))
        return sorted(keep)

    @property
    def window_steps(self) -> int:
        """Steps whose frames a chunk can see in its window: ``floor((window - 1) / chunk) + 1``."""
        return (self.window_frames - 1) // self.chunk_frames + 1

    def sigmas(self) -> list[float]:
        """The denoising passes' noise levels (the shifted ``timesteps / 1000``), then 0."""
        sh = self.shift
        out = [sh * (t / 1000) / (1 + (sh - 1) * (t / 1000)) for t in self.timesteps]
        return out + [0.0]


def _int_in(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")


def _names_or_ints(name: str, value: Any, kind: type) -> tuple[Any, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{name} must be a list, got {value!r}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, kind if kind is str else numbers.Integral):
            raise ValueError(f"{name} must be a list of {'names' if kind is str else 'integers'}, got {value!r}")
    return tuple(kind(v) for v in value)


DEFAULT_KEYS: dict[int, tuple[str, ...]] = {4: ("forward", "back", "left", "right")}
DEFAULT_MOUSE_AXES: dict[int, tuple[str, ...]] = {2: ("pitch", "yaw")}


def action_names(
    options: CausalDiTOptions, keyboard_dim: int, mouse_dim: int
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The key and mouse-axis names for an action module of these sizes: the options' names (their
    count must match), else the defaults (``key0``.. / ``axis0``.. for sizes without one)."""
    keys = options.keys
    if keys is None:
        keys = DEFAULT_KEYS.get(keyboard_dim, tuple(f"key{i}" for i in range(keyboard_dim)))
    axes = options.mouse_axes
    if axes is None:
        axes = DEFAULT_MOUSE_AXES.get(mouse_dim, tuple(f"axis{i}" for i in range(mouse_dim)))
    if len(keys) != keyboard_dim:
        raise ValueError(f"options name {len(keys)} keys {keys!r}; the action module takes {keyboard_dim}")
    if len(axes) != mouse_dim:
        raise ValueError(f"options name {len(axes)} mouse axes {axes!r}; the action module takes {mouse_dim}")
    return keys, axes
