"""The canvas trainer's losses: the unrolled steps (:func:`unroll_loss`) and the player layer's
(:func:`sprite_loss`, with the game's sprite as labels).

Split from :mod:`worldserve.train.canvas_trainer`, which runs the training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from worldserve.dynamics.models.canvas.model import (
    CanvasNet,
    paste_sprites,
    quantize,
    sprite_cells,
    window_cols,
)

from .canvas_config import CanvasTrainConfig
from .canvas_data import PAD


def sprite_truth(player: torch.Tensor, sprite_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """player (B, 5) [screen x, feet y, crouch, facing right, flash] -> (pose (B,), mask (B, sh, sw)
    bool): which template cells the game draws (the body, 10 rows or 6 crouching, and the muzzle
    flash, 3 x 5, 1 px beyond the body on the side it faces), in template coordinates (bottom row
    = the feet row - 1, centre column = screen x)."""
    sh, sw = sprite_size
    B = player.shape[0]
    crouch, right, flash = player[:, 2], player[:, 3], player[:, 4]
    pose = crouch * 4 + right * 2 + flash
    rows = torch.arange(sh, device=player.device)[None, :, None]  # (1, sh, 1)
    cols = torch.arange(sw, device=player.device)[None, None, :]  # (1, 1, sw)
    h = torch.where(crouch > 0, 6, 10)[:, None, None]
    head = torch.where(crouch > 0, 3, 4)[:, None, None]
    c0 = sw // 2 - 3
    body = (rows >= sh - h) & (cols >= c0) & (cols < c0 + 6)
    fx = torch.where(right > 0, c0 + 7, c0 - 6)[:, None, None]
    ftop = sh - h + head
    fl = (flash > 0)[:, None, None] & (rows >= ftop) & (rows < ftop + 3) & (cols >= fx) & (cols < fx + 5)
    return pose, (body | fl).expand(B, sh, sw)


def sprite_pixels(player: torch.Tensor, sprite_size: tuple[int, int], frame_size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) float: 1 where the game draws the player or its muzzle flash (see :func:`sprite_truth`)."""
    _, mask = sprite_truth(player, sprite_size)
    B = player.shape[0]
    H, W = frame_size
    ones = torch.ones(B, 1, *mask.shape[1:], device=player.device)
    zero = torch.zeros(B, 1, H, W, device=player.device)
    return paste_sprites(zero, ones, mask, player[:, 1] - 1, player[:, 0])[:, 0]


def sprite_loss(
    net: CanvasNet, p, target: torch.Tensor, player: torch.Tensor, light: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """The player layer's losses for one step: anchor (cross-entropy over the heat map), pose (at the
    true anchor), lighting, and the true pose's template (its colours where the game draws the
    sprite, x100; its mask, binary cross-entropy)."""
    cfg = net.cfg
    B, _, H, W = target.shape
    sh, sw = cfg.sprite_size
    x, fy = player[:, 0], player[:, 1]
    at = (fy - 1) * W + x  # (B,) the anchor pixel: the bottom row, the centre column
    heat = F.cross_entropy(p.heat.float().flatten(1), at)
    pl = p.pose_logits.float().flatten(2).gather(2, at[:, None, None].expand(-1, cfg.poses, 1))[:, :, 0]
    pose, mask = sprite_truth(player, cfg.sprite_size)
    pose_ce = F.cross_entropy(pl, pose)
    light_ce = F.cross_entropy(p.light_logits.float(), light)
    # the true frame around the true anchor
    tp, (bi, rr, cc) = sprite_cells(target, fy - 1, x, cfg.sprite_size)
    patch = tp[bi, :, rr, cc].permute(0, 3, 1, 2)  # (B, 3, sh, sw)
    inside = ((rr >= sh) & (cc >= sw // 2) & (cc < sw // 2 + W)).expand(B, sh, sw)
    m = (mask & inside).float()[:, None]
    rgb = net.sprite_rgb[light, pose]  # (B, 3, sh, sw)
    colour = ((rgb - patch) ** 2 * m).sum() / (m.sum() * 3 + 1.0)
    mask_bce = F.binary_cross_entropy_with_logits(net.sprite_mask[pose], mask.float())
    with torch.no_grad():
        got = p.heat.flatten(1).argmax(1)
        ay, ax = got // W, got % W
        hit = ((ay - (fy - 1)).abs().maximum((ax - x).abs()) <= 1).float().mean()
    loss = heat + pose_ce + light_ce + 100.0 * colour + mask_bce
    return loss, {
        "heat": float(heat.detach()),
        "anchor": float(hit),
        "pose": float(pose_ce.detach()),
        "light": float(light_ce.detach()),
        "sprite": float(colour.detach()),
    }


def unroll_loss(net: CanvasNet, batch: dict, tc: CanvasTrainConfig, K: int) -> tuple[torch.Tensor, dict[str, float]]:
    """K steps from the true start state, each fed the model's own served frame of the step before
    (8-bit, every pixel its most likely choice; no gradient through the feedback). Per step:

    - choice: cross-entropy against the first choice that gives the true pixel exactly (offsets are
      ordered nearest first, so "unchanged" wherever it is right; "draw" where no copy is exact),
      weighted up where the pixel changes -- one canonical label, so the served argmax is exact;
    - draw: MSE of the drawn colour where no copy is exact;
    - scroll: cross-entropy of the scroll head against the game's camera;
    - player layer (``cfg.player_layer``): :func:`sprite_loss`; the choice and draw losses skip the
      pixels the game's sprite covers (the pasted sprite decides them) -- or, with
      ``cfg.background_canvas``, are taken against the game's frame without the player, which is
      what the canvas keeps (the served frame, sprite pasted, is fed back as the previous frame).
    """
    cfg = net.cfg
    m, W = cfg.max_scroll, cfg.frame_width
    canvas, valid = batch["canvas"], batch["valid"]
    frames, cams = batch["frames"], batch["cams"]
    prev, prev2 = frames[:, 0], batch["prev2"]
    cam, cam2 = cams[:, 0], batch["cam2"]
    B = prev.shape[0]
    bgc = cfg.background_canvas
    total = 0.0
    st = {"choice": 0.0, "draw": 0.0, "scroll_acc": 0.0, "exact": 0.0}
    for k in range(K):
        start = cam + PAD - m
        win = window_cols(canvas, start, W + 2 * m)
        wv = window_cols(valid, start, W + 2 * m)
        dx = cams[:, k + 1] - cam
        ev = net.events(batch["events"][k])
        p = net.predict(
            prev, prev2, cam - cam2, win, wv, cam, batch["actions"][:, k], ev, batch["steps"][:, k + 1], dx=dx
        )
        target = frames[:, k + 1]
        base_t = batch["background"][:, k + 1] if bgc else target  # what the copies and draws must give
        assert p.taps is not None, "the losses need the taps: predict with gradients on"
        match = (p.taps - base_t[:, None]).abs().amax(2) < 0.5 / 255  # (B, K, H, W)
        none = ~match.any(1, keepdim=True)
        ok = torch.cat([match, none], 1)  # (B, K + 1, H, W) choices that are right
        if tc.choice_loss == "marginal":
            logp = F.log_softmax(p.choice_logits.float(), 1)
            nll = -torch.logsumexp(logp.masked_fill(~ok, float("-inf")), 1)  # (B, H, W)
        else:
            label = ok.to(torch.uint8).argmax(1)  # (B, H, W): the first right choice
            nll = F.cross_entropy(p.choice_logits, label, reduction="none")  # (B, H, W)
        w = 1.0 + tc.change_weight * (~match[:, 0]).float()
        nf = none.float()
        if cfg.player_layer and not bgc and "player" in batch:  # the sprite is drawn over these pixels: the
            # copy/draw head is not asked to draw the player (so it never leaves pieces of one beside the sprite)
            free = 1.0 - sprite_pixels(batch["player"][:, k + 1], cfg.sprite_size, target.shape[-2:])
            w = w * free
            nf = nf * free[:, None]
        choice = (w * nll).sum() / w.sum().clamp_min(1.0)
        if tc.draw_loss == "l1":
            draw = 0.1 * ((p.draw - base_t).abs() * nf).sum() / (nf.sum() * 3 + 1.0)
        else:
            draw = ((p.draw - base_t) ** 2 * nf).sum() / (nf.sum() * 3 + 1.0)
        ce = F.cross_entropy(p.scroll_logits, dx + m)
        total = total + choice + 100.0 * draw + ce
        if cfg.player_layer and "player" in batch:
            sl, sst = sprite_loss(net, p, target, batch["player"][:, k + 1], batch["light"][:, k + 1])
            total = total + sl
            for name, v in sst.items():
                st[name] = st.get(name, 0.0) + v
        st["choice"] += float(choice.detach())
        st["draw"] += float(draw.detach())
        st["scroll_acc"] += float((p.scroll_logits.argmax(-1) - m == dx).float().mean())
        with torch.no_grad():
            q = quantize(p.frame)
            st["exact"] += float((q - target).abs().amax(1).lt(0.5 / 255).float().mean())
            new_cam = cam + dx
            idx = (new_cam + PAD)[:, None] + torch.arange(W, device=q.device)[None]
            qb = quantize(p.background) if bgc else q
            canvas = canvas.scatter(3, idx[:, None, None, :].expand(B, 3, canvas.shape[2], W), qb)
            valid = valid.scatter(1, idx, torch.ones(B, W, device=q.device))
        prev2, cam2 = prev, cam
        prev, cam = q, new_cam
    return total / K, {k: v / K for k, v in st.items()}
