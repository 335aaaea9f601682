"""The canvas model's building blocks: the one-gather copy pick is bit for bit the tap gather."""

from __future__ import annotations

import torch

from worldserve.dynamics.models.canvas.blocks import argmax_channels, copy_pick, copy_taps
from worldserve.dynamics.models.canvas.config import CanvasConfig


def test_copy_pick_is_the_gather_over_every_tap_bit_for_bit() -> None:
    g = torch.Generator().manual_seed(0)
    offsets = CanvasConfig().copy_offsets
    K = len(offsets)
    A = torch.rand(3, 3, 16, 20, generator=g)
    draw = torch.rand(3, 3, 16, 20, generator=g)
    pick = torch.randint(0, K + 1, (3, 16, 20), generator=g)
    pick[0] = K  # a frame drawn everywhere
    pick[1, :, :4] = 0  # unchanged
    options = torch.cat([copy_taps(A, offsets), draw[:, None]], 1)  # (B, K + 1, C, H, W)
    want = options.gather(1, pick[:, None, None].expand(-1, 1, 3, -1, -1))[:, 0]
    got = copy_pick(A, offsets, pick, draw)
    assert torch.equal(got, want)
    assert torch.equal(got[0], draw[0]) and torch.equal(got[1, :, :, :4], A[1, :, :, :4])


def test_argmax_channels_is_argmax_with_its_ties():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4, (3, 68, 16, 16), generator=g).float()  # many ties: the first maximum wins
    assert torch.equal(argmax_channels(x), x.argmax(1))
    y = torch.randn(2, 5, 8, 8, generator=g)
    assert torch.equal(argmax_channels(y), y.argmax(1))
    y[0, 2, 3, 3] = float("nan")  # never a crash: an index in range
    assert 0 <= int(argmax_channels(y)[0, 3, 3]) < 5
