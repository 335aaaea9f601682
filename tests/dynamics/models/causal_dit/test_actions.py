"""The per-frame action module: Matrix-Game 2.0's windows, zero start, per-frame locality."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from worldserve.dynamics.models.causal_dit.actions import (
    ActionModule,
    FrameActions,
    action_windows,
    window_indices,
)
from worldserve.dynamics.models.causal_dit.network import CausalWanTransformer
from worldserve.dynamics.models.causal_dit.testing import tiny_action_config, tiny_config

ACTIONS = tiny_action_config(windows_size=3)
BASE = tiny_config(actions=False, text_dim=32)


def _actions(B: int, n_px: int, seed: int, first: int = 0) -> FrameActions:
    g = torch.Generator().manual_seed(seed)
    return FrameActions(
        keyboard=(torch.rand(B, n_px, 4, generator=g) > 0.5).float(),  # (B, F_px, K)
        mouse=torch.randn(B, n_px, 2, generator=g),  # (B, F_px, M)
        first_pixel_frame=first,
    )


def test_windows_are_matrix_games() -> None:
    # latent frame i reads pixel frames 4i-12 .. 4i-1, frames before 0 repeating frame 0
    idx = window_indices(ACTIONS, 0, 3)
    assert idx.shape == (3, 12)
    assert idx[0].tolist() == [0] * 12
    assert idx[1].tolist() == [0] * 9 + [1, 2, 3]
    assert idx[2].tolist() == [0] * 5 + [1, 2, 3, 4, 5, 6, 7]
    assert window_indices(ACTIONS, 5, 1)[0].tolist() == list(range(8, 20))
    assert ACTIONS.pixel_range(0, 1) == (0, 1)
    assert ACTIONS.pixel_range(0, 3) == (0, 8)
    assert ACTIONS.pixel_range(5, 2) == (8, 24)
    # gathering: a clip from pixel frame 0 and a slice covering just the needed frames agree
    full = _actions(2, 29, 0)
    start, stop = ACTIONS.pixel_range(5, 2)
    part = FrameActions(full.keyboard[:, start:stop], full.mouse[:, start:stop], first_pixel_frame=start)
    a, b = action_windows(full, ACTIONS, 5, 2), action_windows(part, ACTIONS, 5, 2)
    assert a.keyboard is not None and b.keyboard is not None and a.mouse is not None and b.mouse is not None
    assert a.keyboard.shape == (2, 2, 12, 4) and a.mouse.shape == (2, 2, 12, 2)
    assert torch.equal(a.keyboard, b.keyboard) and torch.equal(a.mouse, b.mouse)
    assert torch.equal(a.keyboard[:, 1], full.keyboard[:, 12:24])
    short = FrameActions(full.keyboard[:, start + 1 : stop], full.mouse[:, start + 1 : stop], start + 1)
    with pytest.raises(ValueError, match=r"cover pixel frames \[9, 24\).*read pixel frames \[8, 24\)"):
        action_windows(short, ACTIONS, 5, 2)
    with pytest.raises(ValueError, match=r"keyboard actions must be \(B, F_px, 4\)"):
        action_windows(FrameActions(torch.zeros(1, 9, 3), None), ACTIONS, 0, 2)


def test_zero_initialised_modules_equal_the_base_model() -> None:
    torch.manual_seed(0)
    base = CausalWanTransformer(BASE).eval()
    acted = CausalWanTransformer(dataclasses.replace(BASE, action_config=ACTIONS)).eval()
    missing, unexpected = acted.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and missing and all(".action_model." in k for k in missing)
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, 3, 4, 4, generator=g)
    text = torch.randn(2, 5, 32, generator=g)
    t = torch.tensor([700.0, 20.0])
    with torch.no_grad():
        want = base(latents, t, text)
        assert torch.equal(acted(latents, t, text, _actions(2, 9, 2)), want)
        assert torch.equal(acted(latents, t, text, None), want)
        # once the output projections move, the actions change the prediction
        for blk in acted.blocks:
            torch.nn.init.normal_(blk.action_model.proj_keyboard.weight, std=0.2)
            torch.nn.init.normal_(blk.action_model.proj_mouse.weight, std=0.2)
        a = acted(latents, t, text, _actions(2, 9, 2))
        b = acted(latents, t, text, _actions(2, 9, 3))
        assert (a - want).abs().max().item() > 1e-3 and (a - b).abs().max().item() > 1e-3


def test_a_frame_sees_only_its_own_window_and_tokens() -> None:
    torch.manual_seed(0)
    module = ActionModule(ACTIONS, 64).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    g = torch.Generator().manual_seed(4)
    B, f, S = 1, 4, 6
    x = torch.randn(B, f * S, 64, generator=g)  # (B, N, D)
    acts = _actions(B, 4 * (f - 1) + 1, 5)
    with torch.no_grad():
        want = module(x, f, action_windows(acts, ACTIONS, 0, f))
        assert (want - x).abs().max().item() > 1e-3
        # frame 3 reads pixel frames 0..11 and its own tokens: change everything else
        x2 = x.clone()
        x2[:, : 3 * S] += 1.0
        kb, ms = acts.keyboard.clone(), acts.mouse.clone()
        kb[:, 12:] = 1 - kb[:, 12:]
        ms[:, 12:] += 3.0
        got = module(x2, f, action_windows(FrameActions(kb, ms), ACTIONS, 0, f))
        assert torch.equal(got[:, 3 * S :], want[:, 3 * S :])
        assert (got[:, : 3 * S] - want[:, : 3 * S]).abs().max().item() > 1e-3
        # and its window does matter
        kb[:, 11] = 1 - kb[:, 11]
        got = module(x, f, action_windows(FrameActions(kb, acts.mouse), ACTIONS, 0, f))
        assert (got[:, 3 * S :] - want[:, 3 * S :]).abs().max().item() > 1e-4


def test_disabled_branches_have_no_parameters_and_ignore_their_input() -> None:
    keys_only = dataclasses.replace(ACTIONS, enable_mouse=False)
    module = ActionModule(keys_only, 64)
    names = {n.split(".")[0] for n, _ in module.named_parameters()}
    assert names == {
        "keyboard_embed",
        "mouse_attn_q",
        "keyboard_attn_kv",
        "key_attn_q_norm",
        "key_attn_k_norm",
        "proj_keyboard",
    }
    windows = action_windows(_actions(1, 5, 0), keys_only, 0, 2)
    assert windows.mouse is None and windows.keyboard is not None
    mouse_only = ActionModule(dataclasses.replace(ACTIONS, enable_keyboard=False), 64)
    assert {n.split(".")[0] for n, _ in mouse_only.named_parameters()} == {"mouse_mlp", "proj_mouse"}
