"""``python -m worldserve.train``: train the default models on the platformer, export, evaluate."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import typer
from rich.console import Console

from .trainer import TrainConfig, export as export_weights, train_all

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()
WEIGHTS = Path(__file__).resolve().parent.parent / "weights"


def _config(out: Path, scale: float, threads: int, device: str, n_traj: int) -> TrainConfig:
    torch.set_num_threads(threads)  # 1 by default: leave the other cores of a shared machine alone
    tc = TrainConfig(out=out, device=device, n_traj=n_traj)
    for name in ("ae", "dynamics", "image"):
        pc = getattr(tc, name)
        setattr(tc, name, dataclasses.replace(pc, iters=max(1, round(pc.iters * scale)), budget_s=pc.budget_s * max(scale, 1.0)))
    return tc


@app.command()
def all(
    out: Path = typer.Option(Path("runs/platformer"), help="Working folder: checkpoints, resumable."),
    scale: float = typer.Option(1.0, min=0.001, max=100.0, help="Multiply every phase's iterations (0.01 = a smoke run)."),
    threads: int = typer.Option(1, min=1, max=256, help="torch CPU threads."),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu or cuda."),
    n_traj: int = typer.Option(320, min=2, max=100000, help="Training trajectories."),
    phases: str = typer.Option("autoencoder,dynamics,image", help="Comma-separated phases to run (in order)."),
) -> None:
    """Generate data, then train the autoencoder, the dynamics model and the prompt-to-image model
    (each phase resumes from its checkpoint in OUT)."""
    tc = _config(out, scale, threads, device, n_traj)
    console.print(f"training on {tc.resolved_device()} with {torch.get_num_threads()} thread(s) into {out}")
    times = train_all(tc, log=console.print, phases=[p.strip() for p in phases.split(",") if p.strip()])
    console.print(f"total {sum(times.values()) / 60:.1f} min")


@app.command()
def export(
    out: Path = typer.Option(Path("runs/platformer"), help="The training folder."),
    weights: Path = typer.Option(WEIGHTS, help="Destination (default: the package's shipped weights)."),
) -> None:
    """Copy the trained dynamics and image models into WEIGHTS/{dynamics,image}."""
    for name, path in export_weights(TrainConfig(out=out), weights).items():
        console.print(f"{name}: {path}")


@app.command()
def evaluate(
    dynamics: Path = typer.Option(WEIGHTS / "dynamics", help="Dynamics model folder."),
    image: Path = typer.Option(WEIGHTS / "image", help="Image model folder."),
    sessions: int = typer.Option(16, min=2, max=1024, help="Held-out rollouts."),
    prompts: int = typer.Option(64, min=1, max=10000, help="Held-out captions for prompt adherence."),
    threads: int = typer.Option(1, min=1, max=256, help="torch CPU threads."),
    json_out: Path = typer.Option(None, "--json", help="Also write the figures as JSON here."),
    sample_steps: int = typer.Option(0, min=0, max=64, help="Sampler steps per frame (a serving tier); 0 = the model's."),
) -> None:
    """Print the fidelity table (same as python -m worldserve.train.evaluate)."""
    from .evaluate import run

    run(dynamics, image, sessions=sessions, prompts=prompts, threads=threads, json_out=json_out,
        sample_steps=sample_steps)


if __name__ == "__main__":
    app()
