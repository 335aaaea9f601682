"""Building blocks of the scroll-canvas network: view shifts and window reads, the U-Net and its
parts, the scroll and lighting heads, copy taps and sprite pasting.

See :mod:`worldserve.dynamics.models.canvas.model` for how they make a step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from worldserve.dynamics.attention.backend import attention

from .config import CanvasConfig


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


def copy_pick(
    A: torch.Tensor,  # (B, C, H, W) what copies read
    offsets: Sequence[tuple[int, int]],  # K copy offsets (dy, dx)
    pick: torch.Tensor,  # (B, H, W) long in [0, K]: a copy offset, or K = draw
    draw: torch.Tensor,  # (B, C, H, W) the drawn colour
) -> torch.Tensor:
    """(B, C, H, W): at each pixel the picked choice -- ``A[y + dy_k, x + dx_k]`` (0 outside) for
    a copy, ``draw`` for K -- without building every tap: one gather. The same values, bit for bit,
    as gathering from ``cat([copy_taps(A, offsets), draw[:, None]], 1)``."""
    r = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    B, C, H, W = A.shape
    Ap = F.pad(A, (r, r, r, r)).flatten(2)  # (B, C, (H + 2r) (W + 2r))
    off = torch.tensor([*offsets, (0, 0)], device=A.device)  # (K + 1, 2): the draw slot reads (0, 0), unused
    d = off[pick]  # (B, H, W, 2)
    ys = torch.arange(H, device=A.device)[:, None] + r + d[..., 0]  # (B, H, W)
    xs = torch.arange(W, device=A.device)[None, :] + r + d[..., 1]
    idx = (ys * (W + 2 * r) + xs).flatten(1)  # (B, H W)
    taken = Ap.gather(2, idx[:, None].expand(-1, C, -1)).view(B, C, H, W)
    return torch.where((pick == len(offsets))[:, None], draw, taken)


def argmax_channels(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W) long: ``x.argmax(1)`` of a (B, K, H, W) tensor, the first maximum on ties, without
    the channel-strided reduction that is slow on CPU (three vectorized passes instead: ~3x faster
    at K = 68). A pixel with a NaN picks the last channel (``argmax`` would pick the NaN's)."""
    K = x.shape[1]
    top = x.amax(1, keepdim=True)  # (B, 1, H, W)
    ks = torch.arange(K, device=x.device, dtype=x.dtype).view(1, K, 1, 1)
    first = torch.where(x == top, ks, torch.full_like(top, K - 1)).amin(1)  # (B, H, W)
    return first.long()


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round to 8-bit levels (what a served frame is)."""
    return torch.round(x * 255.0) / 255.0
