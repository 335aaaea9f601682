"""The three training phases: autoencoder, dynamics transformer (+ event encoder), prompt-to-image.

Each phase writes its model as a ``save_pretrained`` folder (config.json + model.safetensors) plus
``train_state.pt`` (iteration, optimizer state, loss history; loaded with ``weights_only=True``)
every ``ckpt_every`` iterations and at the end, and resumes from them. Batches and noise of
iteration ``i`` are a pure function of (seed, i) (``data.step_generator``), so a resumed run draws
exactly what an uninterrupted one would (unless the time budget shapes the learning rate). A phase stops at ``iters`` or when its wall-clock budget
is spent, whichever comes first.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from worldserve.dynamics.models.transformer import WorldModel, WorldModelConfig
from worldserve.image.model import TinyTextToImage, TinyTextToImageConfig, tokenize

from .data import TrajectoryData, caption_batch, make_trajectories, step_generator

STATE_FILE = "train_state.pt"

# The shipped configs: the default dynamics model with a lighter autoencoder (16 base channels:
# ~3.5x cheaper to train and to decode, ample for flat-shaded 64x64 frames), sampled with 2 Euler
# steps (measured: higher rollout PSNR than 4 at this training budget, and half the cost).
DYNAMICS_CONFIG = WorldModelConfig(ae_channels=16, sample_steps=2)
_SAMPLER_FIELDS = ("sample_steps", "guidance")
IMAGE_CONFIG = TinyTextToImageConfig(name="tiny-t2i-platformer")


@dataclass
class PhaseConfig:
    """One phase's schedule."""

    iters: int
    batch: int
    lr: float
    budget_s: float = 3600.0
    """Stop (and checkpoint) once this much wall-clock time is spent in this invocation."""
    warmup: int = 50
    ckpt_every: int = 200
    seed: int = 0
    stop_at: int = 0
    """Stop this invocation (with a checkpoint) at this iteration; 0 = run to ``iters``. For staged
    runs and tests: the schedule still spans ``iters``, so resuming later continues it exactly."""


@dataclass
class TrainConfig:
    """Defaults: about 35 minutes on one CPU thread (a shared 2-core machine), seconds on a GPU."""

    out: Path = Path("runs/platformer")
    n_traj: int = 320
    """Training trajectories (seeds 0..n_traj-1)."""
    traj_steps: int = 48
    """Actions per trajectory (frames = traj_steps + 1)."""
    clip: int = 16
    """Frames per dynamics training clip (the model's context)."""
    ae: PhaseConfig = dataclasses.field(default_factory=lambda: PhaseConfig(2000, 16, 2e-3, budget_s=540))
    dynamics: PhaseConfig = dataclasses.field(default_factory=lambda: PhaseConfig(1500, 4, 1.5e-3, budget_s=1320))
    image: PhaseConfig = dataclasses.field(default_factory=lambda: PhaseConfig(1000, 8, 1.5e-3, budget_s=480))
    dynamics_config: WorldModelConfig = DYNAMICS_CONFIG
    image_config: TinyTextToImageConfig = IMAGE_CONFIG
    device: str = "auto"
    show_progress: bool = True

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


# --------------------------------------------------------------------------------------------------
# the shared loop


def _lr_at(step: int, pc: PhaseConfig, time_frac: float = 0.0) -> float:
    """Linear warmup, then cosine down to lr / 10 over the iterations or the time budget, whichever
    runs out first (on a loaded machine the budget ends the phase with a decayed learning rate)."""
    if step < pc.warmup:
        return pc.lr * (step + 1) / pc.warmup
    frac = min(1.0, max(time_frac, (step - pc.warmup) / max(1, pc.iters - pc.warmup)))
    return pc.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))  # cosine down to lr / 10


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def _train_loop(
    name: str,
    params: Iterable[torch.nn.Parameter],
    loss_at: Callable[[int], torch.Tensor],
    save: Callable[[], None],
    ckpt_dir: Path,
    pc: PhaseConfig,
    show_progress: bool,
) -> list[float]:
    """Run iterations [start, pc.iters) where start comes from ``ckpt_dir/train_state.pt``."""
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=pc.lr, weight_decay=0.0, betas=(0.9, 0.99))
    start, losses = 0, []
    state_path = ckpt_dir / STATE_FILE
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        opt.load_state_dict(state["opt"])
        start, losses = int(state["step"]), list(state["losses"])

    def checkpoint(step: int) -> None:
        save()
        tmp = state_path.with_suffix(".tmp")
        torch.save({"step": step, "opt": opt.state_dict(), "losses": losses}, tmp)
        os.replace(tmp, state_path)

    t0 = time.monotonic()
    step = start
    with _progress(show_progress) as bar:
        task = bar.add_task(name, total=pc.iters, completed=start, loss=losses[-1] if losses else float("nan"))
        while step < pc.iters:
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, pc, (time.monotonic() - t0) / pc.budget_s)
            loss = loss_at(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            recent = losses[-20:]
            bar.update(task, completed=step, loss=sum(recent) / len(recent))
            if step % pc.ckpt_every == 0 or step == pc.iters:
                checkpoint(step)
            if time.monotonic() - t0 > pc.budget_s or step == pc.stop_at:
                break
    if step % pc.ckpt_every and step != pc.iters:
        checkpoint(step)
    return losses


def _done(ckpt_dir: Path, pc: PhaseConfig) -> bool:
    state_path = ckpt_dir / STATE_FILE
    if not state_path.is_file():
        return False
    return int(torch.load(state_path, map_location="cpu", weights_only=True)["step"]) >= pc.iters


# --------------------------------------------------------------------------------------------------
# phase 1: autoencoder


def train_autoencoder(tc: TrainConfig, data: TrajectoryData) -> list[float]:
    """Pixel MSE reconstruction of game frames; then latents are rescaled to unit variance."""
    pc, d, dev = tc.ae, tc.out / "ae", tc.resolved_device()
    model = (
        WorldModel.from_pretrained(d)
        if (d / "config.json").is_file()
        else WorldModel.random(tc.dynamics_config, seed=pc.seed)
    ).to(dev)
    ae = model.autoencoder
    ae.train()
    frames = data.frames.reshape(-1, *data.frames.shape[2:])  # (N*T, H, W, 3)

    def loss_at(step: int) -> torch.Tensor:
        rng, _ = step_generator(pc.seed, step)
        idx = rng.integers(0, len(frames), pc.batch)
        x = torch.from_numpy(frames[idx]).to(dev).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, H, W)
        z = ae.encoder(x)
        return F.mse_loss(ae.decoder(z), x) + 1e-4 * z.pow(2).mean()

    losses = _train_loop(
        "autoencoder", ae.parameters(), loss_at, lambda: model.save_pretrained(d), d, pc, tc.show_progress
    )
    if not (d / "normalized").is_file():  # once, whether the phase finished or ran out of budget
        normalize_latents(model, frames[:: max(1, len(frames) // 2048)])
        model.save_pretrained(d)
        (d / "normalized").write_text("latents rescaled to unit variance\n")
    return losses


@torch.no_grad()
def normalize_latents(model: WorldModel, frames: np.ndarray) -> float:
    """Fold a scale into the encoder's last conv and the decoder's first conv so that latents have
    unit standard deviation (the sampler's noise scale); decode(encode(x)) is unchanged."""
    z = torch.cat(
        [
            model.autoencoder.encode(torch.from_numpy(frames[i : i + 256]).to(model.device))
            for i in range(0, len(frames), 256)
        ]
    )
    std = float(z.float().std())
    enc_out, dec_in = model.autoencoder.encoder.out, model.autoencoder.decoder.stem
    enc_out.weight.div_(std)
    enc_out.bias.div_(std)
    dec_in.weight.mul_(std)
    return std


# --------------------------------------------------------------------------------------------------
# phase 2: dynamics


@torch.no_grad()
def encode_all(model: WorldModel, frames: np.ndarray, chunk: int = 256) -> np.ndarray:
    """(N, T, H, W, 3) uint8 -> (N, T, C, h, w) float32 latents."""
    flat = frames.reshape(-1, *frames.shape[2:])
    z = [
        model.encode(torch.from_numpy(flat[i : i + chunk]).to(model.device)).numpy() for i in range(0, len(flat), chunk)
    ]
    return np.concatenate(z).reshape(*frames.shape[:2], *z[0].shape[1:])


def train_dynamics(tc: TrainConfig, data: TrajectoryData) -> list[float]:
    """Rectified-flow next-frame training on clips of ``tc.clip`` frames (action CFG dropout from
    the config, event text per frame). A third of the frames are near clean (t < 0.15) so that the
    context the model learns from resembles the clean past it sees when serving."""
    pc, d, dev = tc.dynamics, tc.out / "dynamics", tc.resolved_device()
    if (d / "config.json").is_file():  # resume
        model = WorldModel.from_pretrained(d).to(dev)
    else:  # the configured model, with the trained autoencoder
        model = WorldModel.random(tc.dynamics_config, seed=pc.seed)
        model.autoencoder.load_state_dict(WorldModel.from_pretrained(tc.out / "ae").autoencoder.state_dict())
        model = model.to(dev)
    model.autoencoder.requires_grad_(False)
    lat_path = d / "latents.npy"
    ae_weights = tc.out / "ae" / "model.safetensors"
    fresh = lat_path.is_file() and (not ae_weights.is_file() or lat_path.stat().st_mtime >= ae_weights.stat().st_mtime)
    if fresh:  # encoded by the current autoencoder
        latents = np.load(lat_path, allow_pickle=False)
    else:
        latents = encode_all(model, data.frames)
        d.mkdir(parents=True, exist_ok=True)
        np.save(lat_path, latents, allow_pickle=False)
    model.train()
    T, L = tc.clip, data.length

    def loss_at(step: int) -> torch.Tensor:
        rng, g = step_generator(pc.seed + 1, step)
        traj = rng.integers(0, data.n, pc.batch)
        start = np.where(rng.random(pc.batch) < 0.25, 0, rng.integers(0, L - T + 1, pc.batch))
        z = torch.from_numpy(np.stack([latents[i, s : s + T] for i, s in zip(traj, start)]))
        a = torch.from_numpy(np.stack([data.actions[i, s : s + T] for i, s in zip(traj, start)]))
        ev = [data.events[i][s : s + T] for i, s in zip(traj, start)]
        t = torch.rand(pc.batch, T, generator=g)
        near = torch.rand(pc.batch, T, generator=g) < 0.33
        t = torch.where(near, t * 0.15, t)
        return model(z, a, events=ev, t=t, first_steps=torch.from_numpy(start), generator=g)

    params = [p for n, p in model.named_parameters() if not n.startswith("autoencoder.")]
    return _train_loop("dynamics", params, loss_at, lambda: model.save_pretrained(d), d, pc, tc.show_progress)


# --------------------------------------------------------------------------------------------------
# phase 3: prompt -> first frame


def train_image(tc: TrainConfig) -> list[float]:
    """Caption -> first frame, rectified flow in pixel space; 10% empty captions for CFG."""
    pc, d, dev = tc.image, tc.out / "image", tc.resolved_device()
    model = (
        TinyTextToImage.from_pretrained(d)
        if (d / "config.json").is_file()
        else TinyTextToImage.random(tc.image_config, seed=pc.seed)
    ).to(dev)
    model.train()
    max_bytes = model.config.max_prompt_bytes

    def loss_at(step: int) -> torch.Tensor:
        rng, g = step_generator(pc.seed + 2, step)
        captions, frames = caption_batch(rng, pc.batch)
        captions = ["" if rng.random() < 0.1 else c for c in captions]
        x0 = torch.from_numpy(frames).to(dev).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, H, W)
        t = torch.rand(pc.batch, generator=g).to(dev)
        noise = torch.randn(x0.shape, generator=g).to(dev)
        xt = (1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * noise
        ids, mask = tokenize(captions, max_bytes)
        v = model.denoiser(xt, t, model.text_encoder(ids.to(dev), mask.to(dev)))
        return F.mse_loss(v, noise - x0)

    return _train_loop(
        "prompt-to-image", model.parameters(), loss_at, lambda: model.save_pretrained(d), d, pc, tc.show_progress
    )


# --------------------------------------------------------------------------------------------------


EXPORT_DIRS = {"dynamics": "transformer", "image": "image"}
"""Phase folder -> shipped weights folder: the latent transformer ships as ``weights/transformer``
(the fast tier; ``weights/dynamics`` holds the default scroll-canvas model)."""


def export(tc: TrainConfig, weights: Path, names: Iterable[str] = ("dynamics", "image")) -> dict[str, Path]:
    """Copy the trained transformer dynamics and flow image models (config.json + model.safetensors
    only) to ``weights/transformer`` and ``weights/image``."""
    out = {}
    for name in names:
        dst = weights / EXPORT_DIRS[name]
        dst.mkdir(parents=True, exist_ok=True)
        for f in ("config.json", "model.safetensors"):
            shutil.copyfile(tc.out / name / f, dst / f)
        if name == "dynamics":  # inference-only settings come from the current training config
            cfg = json.loads((dst / "config.json").read_text())
            cfg.update({k: getattr(tc.dynamics_config, k) for k in _SAMPLER_FIELDS})
            (dst / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        out[name] = dst
    return out


PHASES = ("autoencoder", "dynamics", "image")


def train_all(tc: TrainConfig, log: Callable[[str], None] = print, phases: Iterable[str] = PHASES) -> dict[str, float]:
    """The given phases in order (each resumes where it stopped); returns seconds per phase."""
    phases = tuple(phases)
    bad = sorted(set(phases) - set(PHASES))
    if bad:
        raise ValueError(f"unknown phases {bad!r}; expected some of {PHASES}")
    times: dict[str, float] = {}
    t = time.monotonic()
    data = make_trajectories(range(tc.n_traj), tc.traj_steps)
    times["data"] = time.monotonic() - t
    log(f"data: {data.n} trajectories x {data.length} frames in {times['data']:.1f}s")
    fns = {
        "autoencoder": lambda: train_autoencoder(tc, data),
        "dynamics": lambda: train_dynamics(tc, data),
        "image": lambda: train_image(tc),
    }
    for name, fn in ((p, fns[p]) for p in PHASES if p in phases):
        t = time.monotonic()
        losses = fn()
        times[name] = time.monotonic() - t
        log(f"{name}: {len(losses)} iterations, final loss {np.mean(losses[-20:]):.4f}, {times[name]:.0f}s")
    tc.out.mkdir(parents=True, exist_ok=True)
    with open(tc.out / "times.jsonl", "a") as f:
        f.write(json.dumps(times) + "\n")
    return times
