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
8-bit frames, so it learns to continue from its own outputs. Losses: see :func:`.canvas_losses.unroll_loss`.
Resumable: a checkpoint every ``ckpt_every`` iterations holds the model, the optimizer and the
iteration; batches are a pure function of (seed, iteration).

The parts: the settings in :mod:`.canvas_config`, the episodes and batches in :mod:`.canvas_data`,
the losses in :mod:`.canvas_losses`; this module runs the training.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from worldserve.dynamics.models.canvas.model import CanvasNet, save_net

from .canvas_config import CanvasTrainConfig
from .canvas_data import _Prefetch, make_episodes, to_device
from .canvas_losses import unroll_loss

__all__ = ["CanvasTrainConfig", "train_canvas"]


def _lr(step: int, tc: CanvasTrainConfig, frac_time: float) -> float:
    if step < tc.warmup:
        return float(tc.lr * (step + 1) / tc.warmup)
    p = max(step / max(tc.iters, 1), frac_time)
    return float(tc.lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(p, 1.0)))))


def _load_init(path: Path, device: str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.is_dir():
        from safetensors.torch import load_file

        return load_file(str(path / "model.safetensors"), device=str(device))
    return torch.load(path, map_location=device, weights_only=True)["model"]


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
