"""The scroll-canvas network (:class:`CanvasNet`): one step for a batch of canvas windows, shared by
the served step and training; its :class:`Prediction`; ``save_net`` writes a model folder from it.

See :mod:`worldserve.dynamics.models.canvas.model` for the step it computes.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from worldserve.common.pretrained import write_folder
from worldserve.dynamics.layers.events import EventEncoder

from .blocks import (
    LightHead,
    ScrollHead,
    UNet,
    argmax_channels,
    copy_pick,
    copy_taps,
    paste_sprites,
    shift_view,
    window_cols,
)
from .config import CanvasConfig


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
        pick = argmax_channels(choice)  # (B, H, W)
        frame = copy_pick(base, cfg.copy_offsets, pick, draw)  # (B, 3, H, W)
        # every tap, for the training losses only (serving picks without building them)
        taps = copy_taps(base, cfg.copy_offsets) if torch.is_grad_enabled() else None  # (B, K, 3, H, W)
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
    taps: torch.Tensor | None  # (B, K, 3, H, W) the base shifted by each copy offset (None under no_grad)
    heat: torch.Tensor | None = None  # (B, H, W) player anchor logits (player layer)
    pose_logits: torch.Tensor | None = None  # (B, P, H, W)
    light_logits: torch.Tensor | None = None  # (B, L)
    background: torch.Tensor | None = None  # (B, 3, H, W) the frame before the sprite is pasted
    sprite: torch.Tensor | None = None  # (B, 4) long: anchor row, anchor column, pose, lighting


def save_net(path: str | Path, config: CanvasConfig, net: CanvasNet) -> None:
    """Write a model folder (config.json + model.safetensors, float32) from a network as it is --
    on any device, in training or not: it is neither moved nor changed."""
    write_folder(path, config.to_dict(), {k: v.float() for k, v in net.state_dict().items()})
