"""The scroll-canvas world model: next frames in pixel space, remembered in world coordinates.

One step, for a batch of sessions (shapes per session)::

    prev frame (3, H, W) --> scroll head --> dx, the view's shift in pixels (one of 2*max_scroll+1)
    canvas window around the view (3, H, W + 2m)  --read at cam + dx-->  base A (3, H, W)
        columns the previous frame covered: the previous frame, shifted
        columns it did not cover: what the canvas remembers there, or 0 (never seen)
    [A, frame before prev aligned, known/fresh masks, world prior, time prior, coords, action]
        --> U-Net (FiLM on action + event + dx; self-attention at 1/4 resolution)
        --> per pixel: one choice among "copy A from offset (dy, dx)" (65 offsets, (0, 0) =
            unchanged) and "draw" (A + a predicted delta)
    next frame = each pixel's choice, rounded to 8 bits; written into the canvas at cam + dx

- **Copy, don't repaint**: a pixel that stays, or that moves (the player walking or jumping, rain
  falling, the background closing over where the player stood), is an exact copy of a pixel of A;
  only what appears from nowhere (a muzzle flash, never-seen columns, the light changing) is
  drawn. So a still world is free and small sprites stay sharp over long rollouts.
- **Memory**: the canvas is a per-session image of the world in world coordinates (the first
  frame's left edge is world x = 0). Walking back brings back exactly what was seen there.
- **Learned priors**: a world-coordinate map (``world_channels`` x H x canvas width, e.g. where
  stars hang at night) and a screen-space map per step phase (``time_period``, e.g. where rain
  streaks fall at a given step) are parameters, read at the view's position / the frame's step.
- **Events** (free text, "night falls") are embedded by the byte-level event encoder and condition
  every block, so the text in force may be repeated every step.
- **Player layer** (``player_layer``): copying pixel by pixel, a small sprite that changes shape
  (a crouch, a jump, a flash) breaks into pieces and never recovers. With the layer, the U-Net
  also says where the player's anchor (the sprite's bottom-centre pixel) is in the new frame (a
  heat map, argmax) and its pose there (8 classes: crouch x facing x flash); a lighting head (two
  small convolutions over the previous frame, its mean colours, the event) picks one of 4 lightings; the sprite is a learned template per
  (lighting, pose) with a learned mask per pose, pasted over the copied frame. Every frame shows a
  whole sprite, so the next step reads a clean one.
- **Player-free canvas** (``background_canvas``, with the player layer): the canvas keeps each
  frame as it was before the sprite was pasted, so a place the player walked in front of comes back
  whole when the view returns; the copies start from that player-free base, while the U-Net still
  sees the previous frame (player included) where it stood.

The model is deterministic: ``seeds`` and ``guidance`` are accepted and ignored, and ``sample_steps``
is 1 (a single pass per frame). Latents are the frame itself plus the view's world position:
``(3 * H * W + 1,)`` float32, values k/255, then the camera x -- so a session's state can be
rebuilt from its last frames in Redis (the canvas then remembers what those frames saw). With
``background_canvas`` the frame is the player-free one and 4 more values follow the camera: the
sprite's anchor row and column, its pose and lighting (``decode`` pastes it; ``encode`` of an outside
frame says "no sprite", anchor row -1, and keeps the frame whole).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from worldserve.common.pretrained import CONFIG_FILE, WEIGHTS_FILE, read_folder, write_folder  # noqa: F401 (re-exported)
from worldserve.dynamics.attention.backend import attention, resolve_backend
from worldserve.dynamics.interface import ActionSpace, ModelInfo, Runtime
from worldserve.dynamics.layers.actions import check_actions, check_events
from worldserve.dynamics.layers.events import EventEncoder

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
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CanvasConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}")
        d = dict(data)
        for k in ("keys", "mouse_axes", "channels", "copy_columns", "sprite_size"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


# --------------------------------------------------------------------------------------------------
# Per-session state (serving)


@dataclass
class CanvasState:
    """One session: its canvas (uint8 world memory), where the view is, the last two frames."""

    canvas: torch.Tensor  # (3, H, Wc) uint8
    valid: torch.Tensor  # (Wc,) bool: column ever seen
    cam: int  # world x of the view's left edge (newest frame)
    prev: torch.Tensor  # (3, H, W) uint8: the newest frame, as served
    prev2: torch.Tensor  # (3, H, W) uint8: the frame before it
    prev_cam: int  # its world x
    step: int  # absolute step of the newest frame
    released: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return self.canvas.numel() + self.valid.numel() + self.prev.numel() + self.prev2.numel()


# --------------------------------------------------------------------------------------------------
# Building blocks


def shift_view(frame: torch.Tensor, off: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """out[..., j] = frame[..., j + off] where that column exists, else fill[..., j].
    frame, fill (B, C, H, W); off (B,) long."""
    B, C, H, W = frame.shape
    idx = torch.arange(W, device=frame.device)[None] + off[:, None]  # (B, W)
    ok = (idx >= 0) & (idx < W)
    g = frame.gather(3, idx.clamp(0, W - 1)[:, None, None, :].expand(B, C, H, W))
    return torch.where(ok[:, None, None, :], g, fill)


def window_cols(win: torch.Tensor, start: torch.Tensor, width: int) -> torch.Tensor:
    """Columns ``start .. start + width`` of each row's window. win (B, C, H, L) or (B, L); start (B,)."""
    idx = start[:, None] + torch.arange(width, device=win.device)[None]  # (B, width)
    if win.dim() == 2:
        return win.gather(1, idx)
    B, C, H, _ = win.shape
    return win.gather(3, idx[:, None, None, :].expand(B, C, H, width))


class ResBlock(nn.Module):
    def __init__(self, ch: int, cond_dim: int):
        super().__init__()
        self.n1 = nn.GroupNorm(8, ch)
        self.c1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.film = nn.Linear(cond_dim, 2 * ch)
        self.n2 = nn.GroupNorm(8, ch)
        self.c2 = nn.Conv2d(ch, ch, 3, padding=1)
        nn.init.zeros_(self.c2.weight)
        nn.init.zeros_(self.c2.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:  # x (B, C, h, w), cond (B, D)
        h = self.c1(F.silu(self.n1(x)))
        s, b = self.film(cond)[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1) each
        h = h * (1 + s) + b
        return x + self.c2(F.silu(self.n2(h)))


class SelfAttention(nn.Module):
    """Spatial self-attention over the 1/4-resolution grid, through the project's attention
    function (Triton flash attention on a GPU in bf16/fp16, SDPA elsewhere)."""

    def __init__(self, ch: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = ch // head_dim, head_dim
        self.norm = nn.GroupNorm(8, ch)
        self.qkv = nn.Linear(ch, 3 * ch)
        self.proj = nn.Linear(ch, ch)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, h, w)
        B, C, h, w = x.shape
        t = self.norm(x).flatten(2).transpose(1, 2)  # (B, T, C)
        q, k, v = self.qkv(t).view(B, h * w, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, T, D) each
        a = attention(q, k, v, frame_tokens=h * w, mask="full")  # (B, H, T, D)
        a = a.transpose(1, 2).reshape(B, h * w, C)
        return x + self.proj(a).transpose(1, 2).reshape(B, C, h, w)


class UNet(nn.Module):
    def __init__(self, in_ch: int, cfg: CanvasConfig):
        super().__init__()
        c0, c1, c2 = cfg.channels
        d = cfg.cond_dim
        self.inp = nn.Conv2d(in_ch, c0, 3, padding=1)
        self.e0 = ResBlock(c0, d)
        self.down1 = nn.Conv2d(c0, c1, 3, stride=2, padding=1)
        self.e1 = ResBlock(c1, d)
        self.down2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.m1 = ResBlock(c2, d)
        self.attn = SelfAttention(c2, cfg.head_dim)
        self.m2 = ResBlock(c2, d)
        self.up2 = nn.Conv2d(c2, c1, 3, padding=1)
        self.merge1 = nn.Conv2d(2 * c1, c1, 1)
        self.d1 = ResBlock(c1, d)
        self.up1 = nn.Conv2d(c1, c0, 3, padding=1)
        self.merge0 = nn.Conv2d(2 * c0, c0, 1)
        self.d0 = ResBlock(c0, d)
        self.out_norm = nn.GroupNorm(8, c0)
        n_choices = len(cfg.copy_offsets) + 1
        extra = 1 + cfg.poses if cfg.player_layer else 0  # player anchor heat map, pose logits
        self.out = nn.Conv2d(c0, 3 + n_choices + extra, 3, padding=1)  # drawn colour delta (3), choice logits
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        with torch.no_grad():
            self.out.bias[3] = 4.0  # start by copying: choice 0 is "no change"

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor
    ) -> torch.Tensor:  # (B, in, H, W) -> (B, 3 + K + 1 [+ 1 + P], H, W)
        h0 = self.e0(self.inp(x), cond)  # (B, c0, H, W)
        h1 = self.e1(self.down1(F.silu(h0)), cond)  # (B, c1, H/2, W/2)
        h = self.down2(F.silu(h1))  # (B, c2, H/4, W/4)
        h = self.m2(self.attn(self.m1(h, cond)), cond)
        h = self.up2(F.interpolate(F.silu(h), scale_factor=2.0, mode="nearest"))  # (B, c1, H/2, W/2)
        h = self.d1(self.merge1(torch.cat([h, h1], 1)), cond)
        h = self.up1(F.interpolate(F.silu(h), scale_factor=2.0, mode="nearest"))  # (B, c0, H, W)
        h = self.d0(self.merge0(torch.cat([h, h0], 1)), cond)
        return self.out(F.silu(self.out_norm(h)))


class ScrollHead(nn.Module):
    """prev frame + action + view position -> logits over the view's shift (2*max_scroll+1)."""

    def __init__(self, cfg: CanvasConfig):
        super().__init__()
        H, W = cfg.frame_height, cfg.frame_width
        self.conv = nn.Sequential(
            nn.Conv2d(3, 32, 4, stride=4),
            nn.SiLU(),  # (B, 32, H/4, W/4)
            nn.Conv2d(32, 32, 3, stride=2, padding=1),
            nn.SiLU(),  # (B, 32, H/8, W/8)
        )
        flat = 32 * (H // 8) * (W // 8)
        self.mlp = nn.Sequential(nn.Linear(flat + cfg.action_dim + 4, 256), nn.SiLU(), nn.Linear(256, cfg.n_scroll))

    def forward(self, prev: torch.Tensor, action: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
        c = cam.to(prev.dtype)[:, None] / 128.0  # (B, 1)
        feats = torch.cat([c, c * c, torch.relu(-c), torch.relu(c - 1.5)], 1)  # (B, 4)
        return self.mlp(torch.cat([self.conv(prev).flatten(1), action, feats], 1))  # (B, n_scroll)


# --------------------------------------------------------------------------------------------------
# The network


class CanvasNet(nn.Module):
    """The trainable part: ``predict`` is one step for a batch, on canvas windows (shared by the
    served step and training, so training runs the production code path)."""

    IN_CH = 3 + 3 + 2 + 2 + 1  # A, prev2 aligned, known/fresh, coords, dx -- plus world, time priors, action
    # (and with background_canvas the canvas's player-free base, 3)

    def __init__(self, cfg: CanvasConfig):
        super().__init__()
        self.cfg = cfg
        H, W = cfg.frame_height, cfg.frame_width
        self.scroll = ScrollHead(cfg)
        self.events = EventEncoder(
            event_dim=cfg.event_dim, event_max_bytes=cfg.event_max_bytes, layers=1, dim=cfg.cond_dim
        )
        self.cond = nn.Sequential(
            nn.Linear(cfg.action_dim + cfg.cond_dim + cfg.n_scroll, cfg.cond_dim),
            nn.SiLU(),
            nn.Linear(cfg.cond_dim, cfg.cond_dim),
        )
        self.world_prior = nn.Parameter(torch.zeros(cfg.world_channels, H, cfg.canvas_width))
        self.time_prior = nn.Parameter(torch.zeros(cfg.time_period, 1, H, W))
        ys = torch.linspace(-1, 1, H)[:, None].expand(H, W)
        xs = torch.linspace(-1, 1, W)[None, :].expand(H, W)
        self.register_buffer("coords", torch.stack([ys, xs])[None], persistent=False)  # (1, 2, H, W)
        in_ch = self.IN_CH + cfg.world_channels + 1 + cfg.action_dim + (3 if cfg.background_canvas else 0)
        self.unet = UNet(in_ch, cfg)
        if cfg.player_layer:
            sh, sw = cfg.sprite_size
            self.sprite_rgb = nn.Parameter(torch.full((cfg.lightings, cfg.poses, 3, sh, sw), 0.5))
            self.sprite_mask = nn.Parameter(torch.zeros(cfg.poses, sh, sw))  # logits
            self.light = LightHead(cfg)
        self.amp_dtype: torch.dtype | None = None
        """On CUDA, run the U-Net under autocast in this dtype (parameters stay float32)."""

    def predict(
        self,
        prev: torch.Tensor,  # (B, 3, H, W) newest frame (as served), in [0, 1]
        prev2: torch.Tensor,  # (B, 3, H, W) the frame before it
        off2: torch.Tensor,  # (B,) long: cam - prev_cam
        win: torch.Tensor,  # (B, 3, H, W + 2m) canvas columns [cam - m, cam + W + m) (player-free with background_canvas)
        win_valid: torch.Tensor,  # (B, W + 2m) float: column seen
        cam: torch.Tensor,  # (B,) long: world x of prev's left edge
        action: torch.Tensor,  # (B, A)
        event: torch.Tensor,  # (B, cond_dim): event embedding (zeros = none)
        t_new: torch.Tensor,  # (B,) long: absolute step of the new frame
        dx: torch.Tensor | None = None,  # (B,) long: the shift to use (training); None = the head's
    ) -> Prediction:
        """One step for a batch. Each pixel of the new frame is either copied from the base at one
        of ``copy_offsets`` (choice 0: unchanged) or drawn (the last choice: base + delta). The base
        is the canvas read at the new view (A; with ``background_canvas`` the player-free canvas,
        while A, the U-Net's main input, is the previous frame shifted with the canvas beyond it)."""
        cfg = self.cfg
        m, W = cfg.max_scroll, cfg.frame_width
        B = prev.shape[0]
        logits = self.scroll(prev, action, cam)
        if dx is None:
            dx = logits.argmax(-1) - m
        new_cam = cam + dx
        A = window_cols(win, m + dx, W)  # (B, 3, H, W)
        known = window_cols(win_valid, m + dx, W)  # (B, W)
        j = torch.arange(W, device=prev.device)[None] + dx[:, None]
        fresh = ((j >= 0) & (j < W)).to(prev.dtype)  # (B, W): the previous frame covered it
        A = A * known[:, None, None, :]
        base = A  # what copies and draws start from
        if cfg.background_canvas:  # the canvas is player-free; A shows the player where it stood
            A = shift_view(prev, dx, base)
        P = shift_view(prev2, dx + off2, A)  # (B, 3, H, W)
        col = (new_cam + cfg.canvas_origin).clamp(0, cfg.canvas_width - W)
        wp = window_cols(self.world_prior.expand(B, -1, -1, -1), col, W)  # (B, Cw, H, W)
        tp = self.time_prior[t_new % cfg.time_period]  # (B, 1, H, W)
        H = prev.shape[2]
        bc = lambda v: v[:, :, None, None].expand(-1, -1, H, W)
        x = torch.cat(
            [
                A,
                P,
                known[:, None, None, :].expand(-1, 1, H, -1),
                fresh[:, None, None, :].expand(-1, 1, H, -1),
                self.coords.expand(B, -1, -1, -1),
                bc(dx.to(prev.dtype)[:, None] / m),
                wp,
                tp,
                bc(action),
                *((base,) if cfg.background_canvas else ()),
            ],
            1,
        )
        onehot = F.one_hot(dx + m, cfg.n_scroll).to(prev.dtype)
        cond = self.cond(torch.cat([action, event, onehot], 1))
        if self.amp_dtype is not None and x.is_cuda:  # the U-Net (and its attention) in bf16/fp16
            with torch.autocast("cuda", dtype=self.amp_dtype):
                y = self.unet(x, cond)
            y = y.float()
        else:
            y = self.unet(x, cond)
        # the frame arithmetic stays float32: a copied pixel is exact
        draw = (base + y[:, :3]).clamp(0.0, 1.0)  # (B, 3, H, W)
        choice = y[:, 3 : 4 + len(cfg.copy_offsets)]  # (B, K + 1, H, W)
        taps = copy_taps(base, cfg.copy_offsets)  # (B, K, 3, H, W)
        options = torch.cat([taps, draw[:, None]], 1)  # (B, K + 1, 3, H, W)
        pick = choice.argmax(1)  # (B, H, W)
        frame = options.gather(1, pick[:, None, None].expand(-1, 1, 3, -1, -1))[:, 0]
        if not cfg.player_layer:
            return Prediction(frame, logits, dx, base, choice, draw, taps, background=frame)
        # the player layer: where (anchor), how (pose) and under which light the sprite is drawn
        K1 = choice.shape[1]
        heat = y[:, 3 + K1]  # (B, H, W)
        pose_logits = y[:, 4 + K1 : 4 + K1 + cfg.poses]  # (B, P, H, W)
        light_logits = self.light(prev, event)  # (B, L)
        at = heat.flatten(1).argmax(1)  # (B,)
        ay, ax = at // W, at % W
        pose = pose_logits.flatten(2).gather(2, at[:, None, None].expand(-1, cfg.poses, 1))[:, :, 0].argmax(1)
        light = light_logits.argmax(1)
        sprite = torch.stack([ay, ax, pose, light], 1)  # (B, 4)
        return Prediction(
            self.paste(frame, sprite),
            logits,
            dx,
            base,
            choice,
            draw,
            taps,
            heat,
            pose_logits,
            light_logits,
            frame,
            sprite,
        )

    def paste(self, frame: torch.Tensor, sprite: torch.Tensor) -> torch.Tensor:
        """frame (B, 3, H, W); sprite (B, 4) long [anchor row, anchor column, pose, lighting]."""
        ay, ax, pose, light = sprite.unbind(1)
        return paste_sprites(frame, self.sprite_rgb[light, pose], self.sprite_mask[pose] > 0, ay, ax)


class Prediction(NamedTuple):
    frame: torch.Tensor  # (B, 3, H, W): each pixel its most likely choice
    scroll_logits: torch.Tensor  # (B, n_scroll)
    dx: torch.Tensor  # (B,) the view's shift used
    base: torch.Tensor  # (B, 3, H, W) what copies start from
    choice_logits: torch.Tensor  # (B, K + 1, H, W): copy offsets, then "draw"
    draw: torch.Tensor  # (B, 3, H, W) the drawn colour
    taps: torch.Tensor  # (B, K, 3, H, W) the base shifted by each copy offset
    heat: torch.Tensor | None = None  # (B, H, W) player anchor logits (player layer)
    pose_logits: torch.Tensor | None = None  # (B, P, H, W)
    light_logits: torch.Tensor | None = None  # (B, L)
    background: torch.Tensor | None = None  # (B, 3, H, W) the frame before the sprite is pasted
    sprite: torch.Tensor | None = None  # (B, 4) long: anchor row, anchor column, pose, lighting


class LightHead(nn.Module):
    """prev frame + event embedding -> logits over the lightings (e.g. day/night x dry/rain): two
    small convolutions, mean- and max-pooled, beside the frame's mean colours, then an MLP."""

    def __init__(self, cfg: CanvasConfig):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.SiLU(), nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.SiLU()
        )
        self.mlp = nn.Sequential(nn.Linear(32 + 9 + cfg.cond_dim, 64), nn.SiLU(), nn.Linear(64, cfg.lightings))

    def forward(self, frame: torch.Tensor, event: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W), (B, D) -> (B, L)
        H = frame.shape[2]
        h = self.conv(frame)  # (B, 16, H/2, W/2)
        means = [frame.mean((2, 3)), frame[:, :, : H // 4].mean((2, 3)), frame[:, :, -(H // 4) :].mean((2, 3))]
        return self.mlp(torch.cat([h.mean((2, 3)), h.amax((2, 3)), *means, event], 1))


def sprite_cells(
    frame: torch.Tensor, ay: torch.Tensor, ax: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The frame padded so a sprite fits beyond any edge, and the index ``(bi, rr, cc)`` of each
    sprite's cells in it (``padded[bi, :, rr, cc]`` is (B, sh, sw, C)). frame (B, C, H, W); anchor
    (ay, ax) (B,) long: the sprite's bottom row sits on row ay, its centre column (sw // 2) on
    column ax. The frame itself is ``padded[:, :, sh:, sw // 2 : sw // 2 + W]``."""
    sh, sw = size
    dev = frame.device
    padded = F.pad(frame, (sw // 2, sw - sw // 2, sh, 0))
    rr = (ay + 1)[:, None, None] + torch.arange(sh, device=dev)[None, :, None]  # (B, sh, 1) padded rows
    cc = ax[:, None, None] + torch.arange(sw, device=dev)[None, None, :]  # (B, 1, sw) padded columns
    return padded, (torch.arange(frame.shape[0], device=dev)[:, None, None], rr, cc)


def paste_sprites(
    frame: torch.Tensor, rgb: torch.Tensor, mask: torch.Tensor, ay: torch.Tensor, ax: torch.Tensor
) -> torch.Tensor:
    """Paste one sprite per frame. frame (B, 3, H, W); rgb (B, 3, sh, sw); mask (B, sh, sw) bool;
    anchor (ay, ax) as in :func:`sprite_cells`. Parts outside the frame are dropped."""
    sh, sw = rgb.shape[-2:]
    fp, (bi, rr, cc) = sprite_cells(frame, ay, ax, (sh, sw))
    rgb_q = quantize(rgb.clamp(0.0, 1.0)).permute(0, 2, 3, 1).to(frame.dtype)  # (B, sh, sw, C)
    fp[bi, :, rr, cc] = torch.where(mask[..., None], rgb_q, fp[bi, :, rr, cc])
    return fp[:, :, sh:, sw // 2 : sw // 2 + frame.shape[-1]]


def copy_taps(A: torch.Tensor, offsets: Sequence[tuple[int, int]]) -> torch.Tensor:
    """(B, C, H, W) -> (B, K, C, H, W): tap k at (y, x) is A[y + dy_k, x + dx_k] (0 outside)."""
    r = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    H, W = A.shape[-2:]
    Ap = F.pad(A, (r, r, r, r))
    return torch.stack([Ap[:, :, r + dy : r + dy + H, r + dx : r + dx + W] for dy, dx in offsets], 1)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round to 8-bit levels (what a served frame is)."""
    return torch.round(x * 255.0) / 255.0


# --------------------------------------------------------------------------------------------------
# The served model


def save_net(path: str | Path, config: CanvasConfig, net: CanvasNet) -> None:
    """Write a model folder (config.json + model.safetensors, float32) from a network as it is --
    on any device, in training or not: it is neither moved nor changed."""
    write_folder(path, config.to_dict(), {k: v.float() for k, v in net.state_dict().items()})


class CanvasWorldModel:
    """Implements :class:`~worldserve.dynamics.interface.DynamicsModelProtocol` around a :class:`CanvasNet`."""

    def __init__(
        self,
        config: CanvasConfig | None = None,
        net: CanvasNet | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.config = config or CanvasConfig()
        # parameters and the frame arithmetic stay float32 (8-bit frames are copied exactly); a
        # lower dtype runs the U-Net under autocast on CUDA
        self.net = (net or CanvasNet(self.config)).to(device=device, dtype=torch.float32).eval()
        self.device = torch.device(device)
        self.dtype = dtype if self.device.type == "cuda" else torch.float32
        self.net.amp_dtype = None if self.dtype == torch.float32 else self.dtype
        self._event_cache: dict[str, torch.Tensor] = {}

    # --- loading ----------------------------------------------------------------------------------

    @classmethod
    def random(cls, config: CanvasConfig | None = None, seed: int = 0, **kw) -> CanvasWorldModel:
        torch.manual_seed(seed)
        return cls(config, **kw)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> CanvasWorldModel:
        data, state = read_folder(path)
        cfg = CanvasConfig.from_dict(data)
        net = CanvasNet(cfg)
        net.load_state_dict(state, strict=True)
        return cls(cfg, net, device=device, dtype=dtype)

    def save_pretrained(self, path: str | Path) -> None:
        save_net(path, self.config, self.net)

    # --- the interface: info, runtime, actions, events ---------------------------------------------

    @property
    def info(self) -> ModelInfo:
        c = self.config
        return ModelInfo(
            frame_width=c.frame_width,
            frame_height=c.frame_height,
            action_space=self.action_space,
            context_frames=c.context_frames,
            sample_steps=1,
            default_guidance=0.0,
            events_supported=True,
            event_max_bytes=c.event_max_bytes,
            parameters=sum(p.numel() for p in self.net.parameters()),
            extra={"latent_shape": (c.latent_size,), "canvas_width": c.canvas_width, "kind": c.kind},
        )

    @property
    def runtime(self) -> Runtime:
        backend = resolve_backend(device=self.device, dtype=self.dtype, head_dim=self.config.head_dim)
        return Runtime(
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            attention_backend=backend,
            decode_kernel="flash_attention" if backend == "triton" else "sdpa",
        )

    @property
    def events_supported(self) -> bool:
        return True

    @property
    def action_space(self) -> ActionSpace:
        c = self.config
        return ActionSpace(keys=c.keys, mouse_axes=c.mouse_axes, discrete_actions=2 ** len(c.keys))

    def action_vector(self, keys: Sequence[str], mouse: Mapping[str, float] | None = None) -> torch.Tensor:
        return self.action_space.vector(keys, mouse)

    def null_action(self) -> torch.Tensor:
        return torch.zeros(self.config.action_dim, dtype=torch.float32)

    def _check_actions(self, actions: torch.Tensor, n: int) -> torch.Tensor:
        return check_actions(actions, n, len(self.config.keys), self.config.action_dim)

    def _check_events(self, events: Sequence[str] | None, n: int) -> list[str]:
        return check_events(events, n, self.config.event_max_bytes) or [""] * n

    def _event_embed(self, texts: list[str]) -> torch.Tensor:
        """(n, cond_dim); each distinct text embedded once per process (the weights never change)."""
        missing = sorted({t for t in texts if t and t not in self._event_cache})
        if missing:
            emb = self.net.events(missing)
            for t, e in zip(missing, emb):
                self._event_cache[t] = e
        zero = torch.zeros(self.config.cond_dim, device=self.device, dtype=torch.float32)
        return torch.stack([self._event_cache[t] if t else zero for t in texts])

    # --- latents ----------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> (N, latent_size) float32: the frame in [0, 1] (k/255), then camera x 0
        (a frame handed in from outside is a first frame: world x 0 is its left edge); with
        ``background_canvas`` then no sprite (anchor row -1: above the frame) -- the frame is kept
        whole, player included, and the first step paints the player out of the canvas."""
        H, W = self.config.frame_height, self.config.frame_width
        if frames.dim() != 4 or tuple(frames.shape[1:]) != (H, W, 3):
            raise ValueError(f"frames must be (N, {H}, {W}, 3) uint8, got {tuple(frames.shape)}")
        x = frames.permute(0, 3, 1, 2).reshape(frames.shape[0], -1).float() / 255.0
        tail = [0.0, -1.0, 0.0, 0.0, 0.0] if self.config.background_canvas else [0.0]
        return torch.cat([x, torch.tensor(tail).expand(frames.shape[0], -1)], 1)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, latent_size) -> (N, H, W, 3) uint8 (with ``background_canvas`` the sprite pasted)."""
        frames, _, sprite = self._unpack(latents)
        return self._shown(frames, sprite).permute(0, 2, 3, 1).cpu().contiguous()

    def _unpack(self, latents: torch.Tensor) -> tuple[torch.Tensor, list[int], torch.Tensor | None]:
        """(N, latent_size) -> the canvas's frames (N, 3, H, W) uint8 (player-free with
        ``background_canvas``), the camera x of each, and with ``background_canvas`` the sprites
        (N, 4) long: anchor row, anchor column, pose, lighting."""
        c = self.config
        H, W = c.frame_height, c.frame_width
        if latents.dim() != 2 or latents.shape[-1] != c.latent_size:
            raise ValueError(f"latents must be (N, {c.latent_size}), got {tuple(latents.shape)}")
        latents = latents.detach().float().cpu()
        bg = torch.round(latents[:, : 3 * H * W].reshape(-1, 3, H, W) * 255.0).clamp(0, 255).to(torch.uint8)
        cams = [int(round(float(v))) for v in latents[:, 3 * H * W]]
        if not c.background_canvas:
            return bg, cams, None
        sprite = torch.round(latents[:, 3 * H * W + 1 :]).long()  # (N, 4)
        sprite[:, 0].clamp_(-1, H - 1)  # an anchor the model can give (row -1: no sprite)
        sprite[:, 1].clamp_(0, W - 1)
        sprite[:, 2].clamp_(0, c.poses - 1)
        sprite[:, 3].clamp_(0, c.lightings - 1)
        return bg, cams, sprite

    @torch.no_grad()
    def _shown(self, frames: torch.Tensor, sprite: torch.Tensor | None) -> torch.Tensor:
        """The served frames (N, 3, H, W) uint8: the canvas's frames with their sprites pasted (if any)."""
        if sprite is None:
            return frames
        shown = self.net.paste(frames.to(self.device, torch.float32) / 255.0, sprite.to(self.device))
        return torch.round(shown * 255.0).clamp(0, 255).to(torch.uint8).cpu()

    # --- state ------------------------------------------------------------------------------------

    def _clamp_cam(self, cam: int) -> int:
        c = self.config
        return max(-c.canvas_origin, min(c.canvas_width - c.canvas_origin - c.frame_width, cam))

    def prefill(
        self, latents: torch.Tensor, actions: torch.Tensor, first_step: int, events: Sequence[str] | None = None
    ) -> CanvasState:
        """Rebuild a session from its last T frames: each is pasted into the canvas where it was seen."""
        c = self.config
        if latents.dim() != 2 or latents.shape[0] < 1:
            raise ValueError(f"latents must be (T, {c.latent_size}) with T >= 1, got {tuple(latents.shape)}")
        self._check_actions(actions, latents.shape[0])
        self._check_events(events, latents.shape[0])
        canvas = torch.zeros(3, c.frame_height, c.canvas_width, dtype=torch.uint8)
        valid = torch.zeros(c.canvas_width, dtype=torch.bool)
        kept, cams, sprite = self._unpack(latents)
        cams = [self._clamp_cam(x) for x in cams]
        for f, cam in zip(kept, cams):
            x0 = cam + c.canvas_origin
            canvas[:, :, x0 : x0 + c.frame_width] = f
            valid[x0 : x0 + c.frame_width] = True
        i2 = max(len(cams) - 2, 0)
        shown = self._shown(kept[i2:], None if sprite is None else sprite[i2:])  # the last two frames as served
        return CanvasState(
            canvas,
            valid,
            cams[-1],
            shown[-1].clone(),
            shown[0].clone(),
            cams[i2],
            int(first_step) + latents.shape[0] - 1,
        )

    def state_nbytes(self, state: CanvasState) -> int:
        return state.nbytes

    def release_state(self, state: CanvasState) -> None:
        if not state.released:
            state.released = True
            state.canvas = state.canvas.new_empty(0)
            state.valid = state.valid.new_empty(0)
            state.prev = state.prev.new_empty(0)
            state.prev2 = state.prev2.new_empty(0)

    def state_step(self, state: CanvasState) -> int:
        return state.step

    # --- the step ---------------------------------------------------------------------------------

    @torch.no_grad()
    def step(
        self,
        states: list[CanvasState],
        actions: torch.Tensor,
        seeds: Sequence[int],
        steps: Sequence[int],
        guidance: float | None = None,
        events: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """One new frame per session (deterministic: ``seeds`` and ``guidance`` do not matter)."""
        c = self.config
        n = len(states)
        if n == 0:
            return torch.zeros(0, c.latent_size)
        a = self._check_actions(actions, n)
        texts = self._check_events(events, n)
        if len(seeds) != n or len(steps) != n:
            raise ValueError(f"seeds and steps must hold {n} values each, got {len(seeds)} and {len(steps)}")
        for i, s in enumerate(states):
            if s.released:
                raise ValueError(f"states[{i}] was released")
            if int(steps[i]) != s.step + 1:
                raise ValueError(f"steps[{i}] = {steps[i]} but the session's newest frame is step {s.step}")
        m, W = c.max_scroll, c.frame_width
        dev = self.device
        wins, wvalid, prev, prev2, cams, off2 = [], [], [], [], [], []
        for s in states:
            x0 = s.cam + c.canvas_origin
            lo, hi = x0 - m, x0 + W + m
            win = torch.zeros(3, c.frame_height, W + 2 * m, dtype=torch.uint8)
            wv = torch.zeros(W + 2 * m, dtype=torch.bool)
            a0, b0 = max(lo, 0), min(hi, c.canvas_width)
            win[:, :, a0 - lo : b0 - lo] = s.canvas[:, :, a0:b0]
            wv[a0 - lo : b0 - lo] = s.valid[a0:b0]
            wins.append(win)
            wvalid.append(wv)
            prev.append(s.prev)
            prev2.append(s.prev2)
            cams.append(s.cam)
            off2.append(s.cam - s.prev_cam)
        f = lambda xs: torch.stack(xs).to(dev, torch.float32) / 255.0
        cam_t = torch.tensor(cams, device=dev)
        pred = self.net.predict(
            f(prev),
            f(prev2),
            torch.tensor(off2, device=dev),
            f(wins),
            torch.stack(wvalid).to(dev, torch.float32),
            cam_t,
            a.to(dev, torch.float32),
            self._event_embed(texts),
            torch.tensor([int(x) for x in steps], device=dev),
        )
        u8 = lambda x: torch.round(x * 255.0).clamp(0, 255).to(torch.uint8).cpu()
        frames = u8(pred.frame)  # (n, 3, H, W) as served
        bgs = u8(pred.background) if c.background_canvas else frames  # what the canvas keeps
        dxs = pred.dx.cpu().tolist()
        for s, fr, bg, d in zip(states, frames, bgs, dxs):
            new_cam = self._clamp_cam(s.cam + int(d))
            s.prev2, s.prev = s.prev, fr
            s.prev_cam = s.cam
            s.cam = new_cam
            x1 = new_cam + c.canvas_origin
            s.canvas[:, :, x1 : x1 + W] = bg
            s.valid[x1 : x1 + W] = True
            s.step += 1
        tail = torch.tensor([[float(s.cam)] for s in states])
        if c.background_canvas:
            tail = torch.cat([tail, pred.sprite.cpu().float()], 1)
        return torch.cat([bgs.reshape(n, -1).float() / 255.0, tail], 1)
