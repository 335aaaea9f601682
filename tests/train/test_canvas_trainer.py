"""Training the scroll-canvas model: data, a tiny run that learns, resume = uninterrupted."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from worldserve.dynamics.models.canvas.model import CanvasConfig, CanvasWorldModel
from worldserve.train.canvas_config import CanvasTrainConfig
from worldserve.train.canvas_data import PAD, build_batch, canvas_at, explore_actions, make_episodes, play, to_device
from worldserve.train.canvas_losses import sprite_pixels, sprite_truth, unroll_loss
from worldserve.train.canvas_trainer import train_canvas
from worldserve.worlds import Game, checks, parse_caption
from worldserve.worlds.platformer import SPEED

TINY = CanvasConfig(
    channels=(8, 16, 16),
    head_dim=8,
    world_channels=2,
    time_period=8,
    event_dim=8,
    cond_dim=16,
    canvas_width=512,
    canvas_origin=128,
)


def test_episodes_record_the_camera_and_the_explorer_covers_the_level():
    frames, acts, evs, cams, player, light, background = play(4, 60, "explore")
    assert frames.shape == background.shape == (61, 64, 64, 3)
    assert len(acts) == len(evs) == len(cams) == len(player) == len(light) == 61
    assert all(checks.find_player(f) == (p[0], p[1]) for f, p in zip(frames, player))  # the sprite is where it says
    # the player-free frames differ from the frames exactly where the game draws the player and its flash
    drawn = sprite_pixels(torch.from_numpy(np.asarray(player)), CanvasConfig().sprite_size, (64, 64)).bool().numpy()
    differ = (frames != background).any(-1)
    assert differ.any() and not (differ & ~drawn).any()
    assert all(checks.find_player(b) is None for b in background)
    assert all(abs(b - a) in (0, SPEED) for a, b in zip(cams, cams[1:]))
    rng = np.random.default_rng(0)
    walks = [explore_actions(rng, 80) for _ in range(20)]
    far = [max(np.cumsum([("right" in k) - ("left" in k) for k in w])) * SPEED for w in walks]
    assert np.mean(far) > 64  # the explorer leaves the first view


def test_a_batch_starts_from_the_true_canvas():
    ep = make_episodes(range(3), 12, log=lambda *_: None)
    tc = CanvasTrainConfig(batch=4, model=TINY)
    b = build_batch(ep, np.random.default_rng(1), tc, 2)
    assert b["frames"].shape == (4, 3, 3, 64, 64) and b["actions"].shape == (4, 2, 8)
    # the canvas holds the start frame at the start camera
    for i in range(4):
        x0 = int(b["cams"][i, 0]) + PAD
        assert torch.equal(b["canvas"][i, :, :, x0 : x0 + 64], b["frames"][i, 0])


def test_the_canvas_holds_each_columns_newest_sight():
    ep = make_episodes(range(4), 30, log=lambda *_: None, workers=2)  # processes: same episodes as in order
    serial = make_episodes(range(4), 30, log=lambda *_: None)
    assert np.array_equal(ep.frames, serial.frames) and np.array_equal(ep.cams, serial.cams)
    for n in range(4):
        for s in (0, 7, 29):
            canvas = np.zeros((3, 64, 256 + 2 * PAD), np.uint8)
            seen = np.zeros(256 + 2 * PAD, np.float32)
            for t in range(s + 1):  # paste in order
                x0 = int(ep.cams[n, t]) + PAD
                canvas[:, :, x0 : x0 + 64] = ep.frames[n, t].transpose(2, 0, 1)
                seen[x0 : x0 + 64] = 1
            got, got_seen = canvas_at(ep, n, s)
            assert np.array_equal(got, canvas) and np.array_equal(got_seen, seen), (n, s)


def test_the_player_free_canvas_holds_the_background_from_step_one():
    ep = make_episodes(range(3), 20, log=lambda *_: None)
    for n in range(3):
        for s in (0, 1, 9, 20):
            canvas = np.zeros((3, 64, 256 + 2 * PAD), np.uint8)
            for t in range(s + 1):  # the first frame whole (as a served session starts), then player-free frames
                x0 = int(ep.cams[n, t]) + PAD
                canvas[:, :, x0 : x0 + 64] = (ep.frames if t == 0 else ep.background)[n, t].transpose(2, 0, 1)
            got, _ = canvas_at(ep, n, s, background=True)
            assert np.array_equal(got, canvas), (n, s)


def test_a_warm_start_grows_new_inputs_switched_off(tmp_path):
    """A player-layer model without the player-free canvas starts the one with it: the U-Net's input
    layer gains 3 channels, which start at zero (so it first acts as before)."""
    old_cfg = CanvasConfig(**{**TINY.to_dict(), "player_layer": True})
    old = CanvasWorldModel.random(old_cfg, seed=1)
    old.save_pretrained(tmp_path / "old")
    new_cfg = CanvasConfig(**{**old_cfg.to_dict(), "background_canvas": True})
    tc = CanvasTrainConfig(
        out=tmp_path / "new", n_episodes=2, steps=8, iters=0, model=new_cfg, init_from=tmp_path / "old"
    )
    grown = CanvasWorldModel.from_pretrained(train_canvas(tc, log=lambda *_: None, progress=False))
    w_old, w_new = old.net.unet.inp.weight, grown.net.unet.inp.weight
    assert w_new.shape[1] == w_old.shape[1] + 3
    assert torch.equal(w_new[:, : w_old.shape[1]], w_old) and not w_new[:, w_old.shape[1] :].any()
    assert torch.equal(grown.net.sprite_rgb, old.net.sprite_rgb)


def test_tiny_run_learns_and_resume_equals_an_uninterrupted_run(tmp_path):
    torch.set_num_threads(1)
    base = CanvasTrainConfig(
        n_episodes=6,
        steps=16,
        batch=4,
        unroll=2,
        unroll_from=3,
        iters=6,
        warmup=1,
        ckpt_every=3,
        lr=3e-3,
        budget_s=1e9,
        model=TINY,
    )  # no time-based decay
    ep = make_episodes(range(6), 16, log=lambda *_: None)
    # the loss of a fixed batch goes down over a few iterations of the same recipe
    from worldserve.dynamics.models.canvas.model import CanvasNet

    torch.manual_seed(0)
    net = CanvasNet(TINY)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    batch = to_device(build_batch(ep, np.random.default_rng(0), base, 2), "cpu")
    first = None
    for _ in range(15):
        loss, _ = unroll_loss(net, batch, base, 2)
        first = float(loss) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(unroll_loss(net, batch, base, 2)[0]) < 0.7 * first

    straight = train_canvas(dataclasses.replace(base, out=tmp_path / "a"), log=lambda *_: None, progress=False)
    train_canvas(dataclasses.replace(base, out=tmp_path / "b", stop_at=3), log=lambda *_: None, progress=False)
    resumed = train_canvas(dataclasses.replace(base, out=tmp_path / "b"), log=lambda *_: None, progress=False)
    a, b = CanvasWorldModel.from_pretrained(straight), CanvasWorldModel.from_pretrained(resumed)
    for (k, va), (_, vb) in zip(a.net.state_dict().items(), b.net.state_dict().items()):
        assert torch.equal(va, vb), k


@pytest.mark.parametrize("losses", [("marginal", "mse"), ("canonical", "l1")])
def test_the_other_losses_learn_too(losses):
    torch.set_num_threads(1)
    tc = CanvasTrainConfig(batch=4, unroll=2, model=TINY, choice_loss=losses[0], draw_loss=losses[1])
    ep = make_episodes(range(4), 16, log=lambda *_: None)
    from worldserve.dynamics.models.canvas.model import CanvasNet

    torch.manual_seed(0)
    net = CanvasNet(TINY)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    batch = to_device(build_batch(ep, np.random.default_rng(0), tc, 2), "cpu")
    first = float(unroll_loss(net, batch, tc, 2)[0])
    for _ in range(15):
        loss, _ = unroll_loss(net, batch, tc, 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(unroll_loss(net, batch, tc, 2)[0]) < 0.7 * first


@pytest.mark.parametrize("keys", [(), ("down",), ("left", "fire"), ("right", "fire"), ("down", "fire"), ("left",)])
def test_the_sprite_mask_is_what_the_game_draws(keys):
    """sprite_truth's cells are exactly the player's and the muzzle flash's rectangles (checks)."""
    game = Game(parse_caption("grass, day"), 1)
    game.reset()
    game.step(list(keys))
    x, y = game.x - game.camera, game.y
    player = torch.tensor([[x, y, int(game.crouch), int(game.facing > 0), int(game.flash)]])
    pose, mask = sprite_truth(player, (10, 18))
    want = np.zeros((10, 18), bool)
    for r in (checks.player_rect(game), checks.flash_rect(game)):
        if r is not None:
            rx, ry, rw, rh = r
            want[ry - (y - 10) : ry - (y - 10) + rh, rx - (x - 9) : rx - (x - 9) + rw] = True
    assert np.array_equal(mask[0].numpy(), want)
    assert int(pose[0]) == 4 * int(game.crouch) + 2 * int(game.facing > 0) + int(game.flash)


@pytest.mark.parametrize("background", [False, True])
def test_the_player_layer_learns_where_the_player_goes(background):
    torch.set_num_threads(1)
    tiny = CanvasConfig(**{**TINY.to_dict(), "player_layer": True, "background_canvas": background})
    tc = CanvasTrainConfig(batch=4, unroll=2, model=tiny)
    ep = make_episodes(range(4), 16, log=lambda *_: None)
    from worldserve.dynamics.models.canvas.model import CanvasNet

    torch.manual_seed(0)
    net = CanvasNet(tiny)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    batch = to_device(build_batch(ep, np.random.default_rng(0), tc, 2), "cpu")
    first = unroll_loss(net, batch, tc, 2)[1]
    for _ in range(30):
        loss, _ = unroll_loss(net, batch, tc, 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = unroll_loss(net, batch, tc, 2)[1]
    assert ("background" in batch) == background
    for k in ("heat", "pose", "light", "sprite", *(("choice",) if background else ())):
        assert last[k] < 0.7 * first[k], (k, first[k], last[k])


def test_sprite_pixels_are_where_the_game_draws_the_player():
    from worldserve.train.canvas_losses import sprite_pixels

    game = Game(parse_caption("grass, day"), 1)
    game.reset()
    for keys in [("right", "fire")] * 3 + [("left", "fire"), ("down",)]:
        game.step(list(keys))
        x, y = game.x - game.camera, game.y
        player = torch.tensor([[x, y, int(game.crouch), int(game.facing > 0), int(game.flash)]])
        got = sprite_pixels(player, (10, 18), (64, 64))[0].numpy() > 0
        want = np.zeros((64, 64), bool)
        for r in (checks.player_rect(game), checks.flash_rect(game)):
            if r is not None:
                rx, ry, rw, rh = r
                want[max(ry, 0) : ry + rh, max(rx, 0) : rx + rw] = True
        assert np.array_equal(got, want), keys
