"""Spatial RoPE: attention scores depend on (frame, row, column) offsets only."""

from __future__ import annotations

import json

import pytest
import torch

from worldserve.dynamics.models.transformer import WorldModel, WorldModelConfig
from worldserve.dynamics.models.transformer.transformer import apply_rope


def _scores(model: WorldModel, frames: list[int]) -> torch.Tensor:
    cos, sin = model.transformer.rope(torch.tensor([frames]))  # (1, T*F, D/2)
    D = model.config.head_dim
    x = torch.randn(1, 1, 1, D, generator=torch.Generator().manual_seed(0)).expand(1, cos.shape[1], 1, D)
    r = apply_rope(x, cos, sin)[0, :, 0]  # (T*F, D)
    return r @ r.T


def test_scores_depend_only_on_spatial_and_frame_offsets():
    m = WorldModel.random()  # 8x8 grid, spatial_rope on by default
    assert m.config.spatial_rope
    s = _scores(m, [3, 4])
    F_ = m.config.frame_tokens
    # (row 0, col 0) -> (row 0, col 1) equals (row 1, col 1) -> (row 1, col 2), in a frame and across frames
    torch.testing.assert_close(s[0, 1], s[9, 10], atol=1e-4, rtol=0)
    torch.testing.assert_close(s[F_ + 0, 1], s[F_ + 9, 10], atol=1e-4, rtol=0)
    assert (s[0, 1] - s[0, 2]).abs() > 1e-3  # a different offset scores differently
    far = _scores(m, [1003, 1004])
    torch.testing.assert_close(far, s, atol=1e-3, rtol=0)  # only frame offsets matter


def test_off_gives_one_angle_per_frame_and_legacy_configs_load_without_it(tmp_path):
    cfg = WorldModelConfig(spatial_rope=False)
    m = WorldModel.random(cfg)
    cos, _ = m.transformer.rope(torch.tensor([[2]]))
    assert torch.equal(cos[0, 0], cos[0, -1])
    m.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data.pop("spatial_rope")
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert WorldModel.from_pretrained(tmp_path).config.spatial_rope is False
    with pytest.raises(ValueError, match="divisible by 8"):
        WorldModelConfig(dim=36, n_heads=3)  # head_dim 12
