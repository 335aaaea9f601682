"""The canvas trainer's settings (:class:`CanvasTrainConfig`): data, schedule, losses, budget, warm start.

Split from :mod:`worldserve.train.canvas_trainer`, which runs the training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from worldserve.dynamics.models.canvas.model import CanvasConfig


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
