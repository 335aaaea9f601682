"""The canvas trainer's data: episodes played in fresh worlds (frames, actions, events, camera,
player, lighting and the player-free frames), each start's canvas, the batches of (trajectory,
start step) pairs and the thread that builds them ahead of the training loop.

Split from :mod:`worldserve.train.canvas_trainer`, which runs the training.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from worldserve.worlds import Game
from worldserve.worlds.platformer import KEYS, random_actions, random_events
from worldserve.worlds.splits import random_spec_in

from .canvas_config import CanvasTrainConfig
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
    spec = random_spec_in(rng, "train")  # never a held-out caption
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
