"""Training the scroll-canvas world model (:mod:`worldserve.dynamics.models.canvas`) on the platformer.

    python -m worldserve.train canvas --out runs/canvas [--scale S] [--budget-min M] [--threads 2] [--init-from DIR]

Data: trajectories played in fresh worlds with two policies -- the sticky random policy the
evaluation uses, and an explorer that runs long stretches left or right (so the whole level, its
far end and the walk back are covered) -- with jumps, crouches, shots and events mixed in. The
game records where its camera is (the scroll head's label), per frame the player's place, pose
and lighting (the player layer's labels), and renders each frame again without the player (the
labels of a player-free canvas, ``background_canvas``).

Each iteration takes a batch of (trajectory, start step) pairs, builds each one's canvas from the
true frames up to the start (as a served session's canvas holds what it saw), then unrolls
``unroll`` steps of :meth:`CanvasNet.predict` -- the served step's code -- feeding the model its own
8-bit frames, so it learns to continue from its own outputs. Losses: see :func:`unroll_loss`.
Resumable: a checkpoint every ``ckpt_every`` iterations holds the model, the optimizer and the
iteration; batches are a pure function of (seed, iteration).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from worldserve.dynamics.models.canvas.model import (
    CanvasConfig,
    CanvasNet,
    paste_sprites,
    quantize,
    save_net,
    sprite_cells,
    window_cols,
)
from worldserve.worlds import Game, random_spec
from worldserve.worlds.platformer import KEYS, random_actions, random_events

from .data import action_matrix

PAD = 64
"""Training canvases cover world x in [-PAD, 256 + PAD)."""


@dataclass
class Episodes:
    frames: np.ndarray  # (N, T+1, H, W, 3) uint8
    actions: np.ndarray  # (N, T+1, A) float32; row t made frame t (row 0: no-op)
    events: list[list[str]]  # N x (T+1) event text in force for frame t
    cams: np.ndarray  # (N, T+1) int: camera x of frame t
    player: np.ndarray | None = None  # (N, T+1, 5) int: screen x, feet y, crouch, facing right, flash
    light: np.ndarray | None = None  # (N, T+1) int: night * 2 + rain
    background: np.ndarray | None = None  # (N, T+1, H, W, 3) uint8: frame t without the player


def explore_actions(rng: np.random.Generator, n: int) -> list[tuple[str, ...]]:
    """Runs of ``right`` or ``left`` (mean ~10 steps, right more often) with jumps, shots and
    crouches sprinkled in, and the odd pause."""
    out: list[tuple[str, ...]] = []
    direction = 1 if rng.random() < 0.65 else -1
    while len(out) < n:
        run = int(rng.geometric(1 / 10))
        pause = rng.random() < 0.15
        for _ in range(run):
            keys: set[str] = set()
            if not pause:
                keys.add("right" if direction > 0 else "left")
            r = rng.random()
            if r < 0.14:
                keys.add("jump" if rng.random() < 0.5 else "up")
            elif r < 0.22:
                keys.add("fire")
            elif r < 0.27:
                keys.add("down")
            out.append(tuple(sorted(keys)))
        if rng.random() < 0.45:
            direction = -direction
    return out[:n]


def _player_state(game: Game) -> tuple[int, int, int, int, int]:
    """What the player layer learns to draw: screen x (centre column), feet y, crouch, facing right, flash."""
    return (int(game.x - game.camera), int(game.y), int(game.crouch), int(game.facing > 0), int(game.flash))


def play(seed: int, steps: int, policy: str, event_p: float = 0.05) -> tuple:
    rng = np.random.default_rng([seed, 11])
    spec = random_spec(rng)
    game = Game(spec, seed)
    frames, acts, evs, cams = [game.reset()], [()], [""], [game.camera]
    player, light, bgs = [_player_state(game)], [2 * game.night + game.rain], [game.render(player=False)]
    keys = random_actions(rng, steps) if policy == "random" else explore_actions(rng, steps)
    for k, ev in zip(keys, random_events(rng, spec, steps, event_p)):
        frames.append(game.step(k, ev))
        acts.append(k)
        evs.append(game.event)
        cams.append(game.camera)
        player.append(_player_state(game))
        light.append(2 * game.night + game.rain)
        bgs.append(game.render(player=False))
    return np.stack(frames), acts, evs, cams, player, light, np.stack(bgs)


def _play_seed(args: tuple[int, int]) -> tuple:
    seed, steps = args
    return play(seed, steps, "random" if seed % 2 else "explore")


def make_episodes(seeds: range, steps: int, log: Callable[[str], None] = print, workers: int = 1) -> Episodes:
    """Play one episode per seed (odd seeds: the random policy; even: the explorer), in ``workers``
    processes when more than one."""
    t0 = time.monotonic()
    jobs = [(s, steps) for s in seeds]
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            rows = pool.map(_play_seed, jobs, chunksize=max(1, len(jobs) // (4 * workers)))
    else:
        rows = [_play_seed(j) for j in jobs]
    ep = Episodes(
        np.stack([r[0] for r in rows]),
        np.stack([action_matrix(r[1], KEYS, 2) for r in rows]),
        [r[2] for r in rows],
        np.asarray([r[3] for r in rows], np.int64),
        np.asarray([r[4] for r in rows], np.int64),
        np.asarray([r[5] for r in rows], np.int64),
        np.stack([r[6] for r in rows]),
    )
    log(f"data: {len(rows)} episodes x {steps} steps in {time.monotonic() - t0:.0f}s")
    return ep


@dataclass
class CanvasTrainConfig:
    out: Path = Path("runs/canvas")
    n_episodes: int = 800
    steps: int = 80
    iters: int = 6000
    batch: int = 8
    unroll: int = 3
    unroll_from: int = 1200
    """Iterations before this one predict a single step from the true history (cheaper); later ones unroll."""
    lr: float = 1e-3
    warmup: int = 100
    change_weight: float = 10.0
    choice_loss: str = "canonical"
    """"canonical": cross-entropy against the first right choice (nearest offset first);
    "marginal": minus the log of the probability summed over every right choice."""
    draw_loss: str = "mse"
    """Loss of the drawn colour where no copy is exact: "mse" (x100; the mean of what could be
    there) or "l1" (x10; the median: a never-seen column comes out as plain background rather
    than a blur of the objects it might hold)."""
    budget_s: float = 100 * 60.0
    ckpt_every: int = 200
    stop_at: int = 0
    """Stop (with a checkpoint) after this iteration, 0 = at ``iters``: splits a run across sessions."""
    seed: int = 0
    device: str = "cpu"
    init_from: Path | None = None
    """A fresh run starts from these weights where the shapes match (warm start): a checkpoint
    (ckpt.pt) or a model folder (model.safetensors)."""
    workers: int = 1
    """Processes that play the training episodes."""
    sprite_lr_scale: float = 20.0
    """The player layer's templates and lighting head learn this much faster than the network."""
    export_every: int = 0
    """Also write the model folder every this many iterations (0: only at the end)."""
    model: CanvasConfig = field(default_factory=lambda: CanvasConfig(player_layer=True, background_canvas=True))


def _lr(step: int, tc: CanvasTrainConfig, frac_time: float) -> float:
    if step < tc.warmup:
        return float(tc.lr * (step + 1) / tc.warmup)
    p = max(step / max(tc.iters, 1), frac_time)
    return float(tc.lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(p, 1.0)))))


def canvas_at(ep: Episodes, n: int, s: int, background: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Episode ``n``'s canvas after step ``s``: (3, H, 256 + 2 PAD) uint8 and (256 + 2 PAD,) seen.
    Each column holds its newest sight (what pasting frames 0..s in order leaves); ``background``:
    the player-free frames from step 1 on (a served session's first frame comes whole)."""
    H, W = ep.frames.shape[2:4]
    width = 256 + 2 * PAD
    cams = ep.cams[n, : s + 1]  # (s+1,)
    xs = np.arange(width) - PAD  # world x of each canvas column
    cov = (cams[:, None] <= xs[None]) & (xs[None] < cams[:, None] + W)  # (s+1, width)
    seen = cov.any(0)
    last = s - np.argmax(cov[::-1], 0)  # newest frame covering each column
    canvas = np.zeros((3, H, width), np.uint8)
    cols = np.nonzero(seen)[0]
    t = last[cols]
    src = ep.frames[n]  # (T+1, H, W, 3)
    if background:
        assert ep.background is not None
        src = np.concatenate([ep.frames[n, :1], ep.background[n, 1 : s + 1]])
    canvas[:, :, cols] = src[t, :, xs[cols] - cams[t]].transpose(2, 1, 0)  # (count, H, 3) -> (3, H, count)
    return canvas, seen.astype(np.float32)


def build_batch(ep: Episodes, rng: np.random.Generator, tc: CanvasTrainConfig, K: int):
    """Start states (true canvas up to step s) and the next ``K`` targets for a batch (CPU tensors)."""
    N, T1 = ep.frames.shape[:2]
    B = tc.batch
    n = rng.integers(0, N, B)
    s = rng.integers(0, T1 - K, B)
    bgc = tc.model.background_canvas
    if bgc:  # a session's first step paints the player out of its first frame: seen more often
        s = np.where(rng.random(B) < 1 / 16, 0, s)
    cv = [canvas_at(ep, int(n[b]), int(s[b]), bgc) for b in range(B)]
    canvas = np.stack([c for c, _ in cv])
    valid = np.stack([v for _, v in cv])
    idx = s[:, None] + np.arange(K + 1)[None]  # (B, K+1) frames s .. s+K
    frames = ep.frames[n[:, None], idx].transpose(0, 1, 4, 2, 3)  # (B, K+1, 3, H, W)
    prev2 = ep.frames[n, np.maximum(s - 1, 0)].transpose(0, 3, 1, 2)
    cams = ep.cams[n[:, None], idx]  # (B, K+1)
    cam2 = ep.cams[n, np.maximum(s - 1, 0)]
    acts = ep.actions[n[:, None], idx[:, 1:]]  # (B, K, A)
    evs = [[ep.events[n[b]][int(idx[b, k + 1])] for b in range(B)] for k in range(K)]
    u8 = lambda a: torch.from_numpy(np.ascontiguousarray(a))
    out = dict(
        canvas=u8(canvas),
        valid=torch.from_numpy(valid),
        frames=u8(frames),
        prev2=u8(prev2),
        cams=torch.from_numpy(cams),
        cam2=torch.from_numpy(cam2),
        actions=torch.from_numpy(acts),
        events=evs,
        steps=torch.from_numpy(idx),
    )
    if ep.player is not None and ep.light is not None:
        out["player"] = torch.from_numpy(ep.player[n[:, None], idx])  # (B, K+1, 5)
        out["light"] = torch.from_numpy(ep.light[n[:, None], idx])  # (B, K+1)
    if bgc:
        assert ep.background is not None, "background_canvas needs episodes with player-free frames"
        out["background"] = u8(ep.background[n[:, None], idx].transpose(0, 1, 4, 2, 3))  # (B, K+1, 3, H, W)
    return out


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


def to_device(batch: dict, device: str | torch.device) -> dict:
    """Move a batch to ``device``; uint8 images become floats in [0, 1] there."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=True)
            out[k] = v.float() / 255.0 if v.dtype == torch.uint8 else v
        else:
            out[k] = v
    return out


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


def _load_init(path: Path, device: str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.is_dir():
        from safetensors.torch import load_file

        return load_file(str(path / "model.safetensors"), device=str(device))
    return torch.load(path, map_location=device, weights_only=True)["model"]


class _Prefetch:
    """Builds the batches of iterations ``start``, ``start + 1``, ... on a background thread (numpy
    work overlaps the device's), each a pure function of (seed, iteration)."""

    def __init__(self, ep: Episodes, tc: CanvasTrainConfig, start: int, depth: int = 3):
        import queue
        import threading

        self.q: queue.Queue[tuple[int, dict]] = queue.Queue(depth)
        self.stop = threading.Event()

        def work() -> None:
            step = start
            while not self.stop.is_set():
                K = tc.unroll if step >= tc.unroll_from else 1
                item = (K, build_batch(ep, np.random.default_rng([tc.seed, step]), tc, K))
                while not self.stop.is_set():
                    try:
                        self.q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                step += 1

        self.thread = threading.Thread(target=work, name="canvas-batches", daemon=True)
        self.thread.start()

    def next(self) -> tuple[int, dict]:
        return self.q.get()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def train_canvas(tc: CanvasTrainConfig, log: Callable[[str], None] = print, progress: bool = True) -> Path:
    """Train (resuming from ``tc.out/ckpt.pt``); writes the model folder ``tc.out/model``.

    On CUDA the U-Net runs under bf16 autocast (parameters and the frame arithmetic stay float32)
    and attention uses SDPA (the Triton kernels are inference-only)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from worldserve.dynamics.attention.backend import use_backend

    if tc.choice_loss not in ("canonical", "marginal"):
        raise ValueError(f"choice_loss must be 'canonical' or 'marginal', got {tc.choice_loss!r}")
    if tc.draw_loss not in ("mse", "l1"):
        raise ValueError(f"draw_loss must be 'mse' or 'l1', got {tc.draw_loss!r}")
    out = Path(tc.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(tc.seed)
    net = CanvasNet(tc.model).to(tc.device)
    cuda = torch.device(tc.device).type == "cuda"
    net.amp_dtype = torch.bfloat16 if cuda else None
    if cuda:
        torch.backends.cudnn.benchmark = True
    fast = [p for n, p in net.named_parameters() if n.startswith(("sprite_", "light."))]
    rest = [p for n, p in net.named_parameters() if not n.startswith(("sprite_", "light."))]
    groups = [{"params": rest, "lr_scale": 1.0}]
    if fast:  # the templates (plain colours to fit) and the small lighting head: a faster rate
        groups.append({"params": fast, "lr_scale": tc.sprite_lr_scale})
    opt = torch.optim.AdamW(groups, lr=tc.lr, weight_decay=0.0, betas=(0.9, 0.99))
    ckpt = out / "ckpt.pt"
    step, elapsed = 0, 0.0
    if ckpt.exists():
        state = torch.load(ckpt, map_location=tc.device, weights_only=True)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, elapsed = int(state["step"]), float(state["elapsed"])
        log(f"resumed at iteration {step} ({elapsed / 60:.1f} min done)")
    elif tc.init_from is not None:
        old = _load_init(tc.init_from, tc.device)
        own = net.state_dict()
        keep = {k: v for k, v in old.items() if k in own and own[k].shape == v.shape}
        grown = []
        for k, v in old.items():
            if k not in own or k in keep or v.dim() != own[k].dim():
                continue
            o = own[k]
            if v.shape[1:] == o.shape[1:] and v.shape[0] < o.shape[0]:  # a head that gained outputs: its old rows
                keep[k] = torch.cat([v.to(o), o[v.shape[0] :]])
                grown.append(k)
            elif v.dim() > 1 and v.shape[0] == o.shape[0] and v.shape[2:] == o.shape[2:] and v.shape[1] < o.shape[1]:
                # a layer that gained inputs (appended last): they start switched off
                keep[k] = torch.cat([v.to(o), torch.zeros_like(o[:, v.shape[1] :])], 1)
                grown.append(k)
        net.load_state_dict(keep, strict=False)
        log(
            f"warm start from {tc.init_from}: {len(keep)} of {len(own)} tensors"
            + (f" ({', '.join(grown)} grown)" if grown else "")
        )
    ep = make_episodes(range(tc.n_episodes), tc.steps, log, workers=tc.workers)

    def save() -> None:
        tmp = ckpt.with_suffix(".tmp")
        torch.save(
            {
                "model": net.state_dict(),
                "opt": opt.state_dict(),
                "step": step,
                "elapsed": elapsed + time.monotonic() - t0,
            },
            tmp,
        )
        tmp.replace(ckpt)

    def export() -> Path:
        folder = out / "model"
        save_net(folder, tc.model, net)
        return folder

    t0 = time.monotonic()
    stats: dict[str, float] = {}
    batches = _Prefetch(ep, tc, step)
    try:
        with (
            use_backend("sdpa"),
            Progress(
                TextColumn("canvas"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                disable=not progress,
            ) as bar,
        ):
            task = bar.add_task("train", total=tc.iters, completed=step, info="")
            while step < (tc.stop_at or tc.iters):
                spent = elapsed + time.monotonic() - t0
                if spent > tc.budget_s:
                    log(f"stopped by the time budget at iteration {step}")
                    break
                for g in opt.param_groups:
                    g["lr"] = _lr(step, tc, spent / tc.budget_s) * g.get("lr_scale", 1.0)
                K, cpu_batch = batches.next()
                batch = to_device(cpu_batch, tc.device)
                net.train()
                loss, st = unroll_loss(net, batch, tc, K)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                opt.step()
                for k, v in st.items():
                    stats[k] = 0.95 * stats.get(k, v) + 0.05 * v
                step += 1
                bar.update(task, completed=step, info=" ".join(f"{k} {v:.4g}" for k, v in stats.items()))
                if step % tc.ckpt_every == 0:
                    save()
                    if not progress or not sys.stdout.isatty():
                        log(
                            f"iter {step} "
                            + " ".join(f"{k} {v:.4g}" for k, v in stats.items())
                            + f" {(elapsed + time.monotonic() - t0) / 60:.1f} min"
                        )
                if tc.export_every and step % tc.export_every == 0:
                    export()
    finally:
        batches.close()
    save()
    folder = export()
    log(f"model: {folder} ({step} iterations, {(elapsed + time.monotonic() - t0) / 60:.1f} min)")
    return folder
