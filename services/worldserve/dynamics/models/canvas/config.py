"""The scroll-canvas model's configuration (:class:`CanvasConfig`, saved as a model folder's config.json).

See :mod:`worldserve.dynamics.models.canvas.model` for the model it configures.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

KIND = "scroll_canvas"


@dataclass(frozen=True)
class CanvasConfig:
    frame_height: int = 64
    frame_width: int = 64
    keys: tuple[str, ...] = ("left", "right", "up", "down", "jump", "fire")
    mouse_axes: tuple[str, ...] = ("mouse_x", "mouse_y")
    max_scroll: int = 8
    """The view moves at most this many pixels per step (the scroll head has 2*max_scroll+1 classes)."""
    canvas_width: int = 1024
    """Columns of world memory per session."""
    canvas_origin: int = 384
    """Canvas column of world x = 0 (the first frame's left edge): the view may go this far left."""
    channels: tuple[int, int, int] = (32, 64, 96)
    """U-Net widths at full, 1/2 and 1/4 resolution."""
    head_dim: int = 32
    """Attention head size at 1/4 resolution (channels[2] // head_dim heads)."""
    world_channels: int = 4
    time_period: int = 64
    event_dim: int = 32
    event_max_bytes: int = 64
    events: tuple[str, ...] = ()
    """The events the model declares (``ModelInfo.events``: free text is mapped to one); empty: the
    platformer's events it was trained on (``worldserve.common.caption.EVENTS``)."""
    cond_dim: int = 64
    context_frames: int = 32
    """Frames a prefill rebuilds the canvas from (the engine's window in Redis)."""
    copy_radius: int = 8
    """Copy offsets: every (dy, 0) and (0, dx) with |d| <= copy_radius ..."""
    copy_columns: tuple[int, ...] = (-4, 4)
    """... and every (dy, c) for these column offsets c (a sprite moving sideways while it jumps)."""
    player_layer: bool = False
    """Draw the player as a sprite layer: the U-Net also places it (a heat map over its anchor, the
    bottom-centre pixel) and picks its pose; a lighting head picks one of ``lightings``; the sprite
    is a learned template per (lighting, pose), pasted over the frame where its learned mask is set."""
    sprite_size: tuple[int, int] = (10, 18)
    """(rows, columns) of a sprite template: rows above the anchor row (included), columns centred on it."""
    poses: int = 8
    lightings: int = 4
    background_canvas: bool = False
    """(needs ``player_layer``) The canvas remembers the world without the player: each step writes
    the frame before the sprite is pasted, and the latent holds that frame plus where and how the
    sprite goes (decode pastes it). So a place the player walked past comes back whole; the U-Net
    also sees the canvas's player-free view of the new frame."""
    kind: str = KIND

    def __post_init__(self) -> None:
        for name in (
            "frame_height",
            "frame_width",
            "max_scroll",
            "canvas_width",
            "time_period",
            "cond_dim",
            "context_frames",
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.frame_height % 4 or self.frame_width % 4:
            raise ValueError(f"frame size must be a multiple of 4, got {self.frame_width}x{self.frame_height}")
        if not 0 <= self.canvas_origin <= self.canvas_width - self.frame_width:
            raise ValueError(f"canvas_origin {self.canvas_origin} outside [0, {self.canvas_width - self.frame_width}]")
        if self.background_canvas and not self.player_layer:
            raise ValueError("background_canvas needs player_layer")
        if len(self.channels) != 3 or self.channels[2] % self.head_dim or any(c % 8 for c in self.channels):
            raise ValueError(
                f"channels must be 3 multiples of 8 and channels[2] a multiple of head_dim, got {self.channels}"
            )
        object.__setattr__(self, "keys", tuple(self.keys))
        object.__setattr__(self, "mouse_axes", tuple(self.mouse_axes))
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "copy_columns", tuple(self.copy_columns))
        object.__setattr__(self, "sprite_size", tuple(self.sprite_size))
        object.__setattr__(self, "events", tuple(self.events))
        if not all(isinstance(e, str) and e.strip() for e in self.events):
            raise ValueError(f"events must be non-empty strings, got {list(self.events)!r}")

    @property
    def action_dim(self) -> int:
        return len(self.keys) + len(self.mouse_axes)

    @property
    def n_scroll(self) -> int:
        return 2 * self.max_scroll + 1

    @property
    def copy_offsets(self) -> tuple[tuple[int, int], ...]:
        """(dy, dx) offsets a pixel may copy from the base frame, nearest first: (0, 0) -- no change --
        then by |dy| + |dx|. Training labels a pixel with the first offset that gives it exactly."""
        r = self.copy_radius
        offs = set()
        for d in range(-r, r + 1):
            offs.update({(d, 0), (0, d), *((d, c) for c in self.copy_columns)})
        return tuple(sorted(offs, key=lambda o: (abs(o[0]) + abs(o[1]), o)))

    @property
    def latent_size(self) -> int:
        """The frame (the player-free one with ``background_canvas``), the camera x, then with
        ``background_canvas`` the sprite's anchor row and column, pose and lighting."""
        return 3 * self.frame_height * self.frame_width + (5 if self.background_canvas else 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["keys"], d["mouse_axes"], d["channels"] = list(self.keys), list(self.mouse_axes), list(self.channels)
        d["copy_columns"] = list(self.copy_columns)
        d["sprite_size"] = list(self.sprite_size)
        d["events"] = list(self.events)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CanvasConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}")
        d = dict(data)
        for k in ("keys", "mouse_axes", "channels", "copy_columns", "sprite_size", "events"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)
