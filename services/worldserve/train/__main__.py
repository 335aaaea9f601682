"""``python -m worldserve.train``: train the default models on the platformer, export, evaluate."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import typer
from rich.console import Console

from .evaluate import command as evaluate_command
from .trainer import TrainConfig, train_all
from .trainer import export as export_weights

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()
WEIGHTS = Path(__file__).resolve().parent.parent / "weights"


def _config(out: Path, scale: float, threads: int, device: str, n_traj: int) -> TrainConfig:
    torch.set_num_threads(threads)  # 1 by default: leave the other cores of a shared machine alone
    tc = TrainConfig(out=out, device=device, n_traj=n_traj)
    for name in ("ae", "dynamics", "image"):
        pc = getattr(tc, name)
        setattr(
            tc,
            name,
            dataclasses.replace(pc, iters=max(1, round(pc.iters * scale)), budget_s=pc.budget_s * max(scale, 1.0)),
        )
    return tc


def _device(device: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def _train_canvas(out: Path, scale: float, budget_min: float, device: str, stop_at: int, **over) -> Path:
    from .canvas_trainer import CanvasTrainConfig, train_canvas

    base = CanvasTrainConfig()
    over = {k: v for k, v in over.items() if v is not None}
    tc = dataclasses.replace(
        base,
        out=out,
        iters=max(1, round(base.iters * scale)),
        budget_s=budget_min * 60,
        unroll_from=round(base.unroll_from * scale),
        device=_device(device),
        stop_at=stop_at,
    )
    tc = dataclasses.replace(tc, **over)
    return train_canvas(tc, log=console.print)


def _train_caption(out: Path, scale: float, budget_min: float, device: str) -> Path:
    from .image_trainer import train_caption_decoder

    return train_caption_decoder(
        out,
        iters=max(1, round(4000 * scale)),
        batch=32,
        budget_s=budget_min * 60,
        device=_device(device),
        log=console.print,
    )


@app.command()
def all(
    out: Path = typer.Option(Path("runs/platformer"), help="Working folder: checkpoints, resumable."),
    scale: float = typer.Option(
        1.0, min=0.001, max=100.0, help="Multiply every phase's iterations (0.01 = a smoke run)."
    ),
    threads: int = typer.Option(1, min=1, max=256, help="torch CPU threads."),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu or cuda."),
    n_traj: int = typer.Option(320, min=2, max=100000, help="Training trajectories."),
    phases: str = typer.Option(
        "autoencoder,dynamics,caption,canvas",
        help="Comma-separated phases to run (in "
        "order): autoencoder, dynamics (the latent transformer, the fast tier), caption "
        "(prompt -> first frame; the shipped image model), canvas (the default dynamics "
        "model), image (the earlier flow prompt-to-image model).",
    ),
    caption_min: float = typer.Option(35.0, min=0.1, help="Wall-clock budget of the caption phase, minutes."),
    canvas_min: float = typer.Option(105.0, min=0.1, help="Wall-clock budget of the canvas phase, minutes."),
) -> None:
    """The shipped models' recipe: autoencoder + latent-transformer dynamics (OUT/ae, OUT/dynamics),
    the caption decoder (OUT/caption) and the scroll-canvas dynamics (OUT/canvas). Each phase
    resumes from its checkpoint in OUT."""
    names = [p.strip() for p in phases.split(",") if p.strip()]
    tc = _config(out, scale, threads, device, n_traj)
    console.print(f"training on {tc.resolved_device()} with {torch.get_num_threads()} thread(s) into {out}")
    old = [p for p in names if p not in ("caption", "canvas")]
    if old:
        times = train_all(tc, log=console.print, phases=old)
        console.print(f"{', '.join(old)}: {sum(times.values()) / 60:.1f} min")
    if "caption" in names:
        _train_caption(out / "caption", scale, caption_min, device)
    if "canvas" in names:
        _train_canvas(out / "canvas", scale, canvas_min, device, 0)


@app.command()
def canvas(
    out: Path = typer.Option(Path("runs/canvas"), help="Working folder: checkpoints, resumable."),
    scale: float = typer.Option(1.0, min=0.001, max=100.0, help="Multiply the iterations (0.01 = a smoke run)."),
    threads: int = typer.Option(1, min=1, max=256, help="torch CPU threads."),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu or cuda."),
    budget_min: float = typer.Option(105.0, min=0.1, help="Wall-clock budget, minutes (the LR schedule follows it)."),
    stop_at: int = typer.Option(0, min=0, help="Stop after this iteration with a checkpoint (0: run to the end)."),
    batch: int | None = typer.Option(None, min=1, help="Sequences per iteration (default 8)."),
    lr: float | None = typer.Option(None, min=0.0, help="Peak learning rate (default 1e-3)."),
    episodes: int | None = typer.Option(None, min=2, help="Training episodes played (default 800)."),
    unroll_from: int | None = typer.Option(None, min=0, help="First iteration that unrolls its own frames."),
    choice_loss: str | None = typer.Option(None, help="canonical (default) or marginal."),
    draw_loss: str | None = typer.Option(None, help="mse (default) or l1 (never-seen columns as plain background)."),
    init_from: Path | None = typer.Option(None, help="Warm start: a ckpt.pt or a model folder."),
    workers: int = typer.Option(1, min=1, max=256, help="Processes that play the training episodes."),
    export_every: int = typer.Option(0, min=0, help="Also write OUT/model every N iterations."),
    player_layer: bool = typer.Option(True, help="Draw the player as a learned sprite layer (the default model's)."),
    background_canvas: bool = typer.Option(
        True, help="Remember the world without the player (needs the player layer; the default model's)."
    ),
    channels: str = typer.Option(
        "32,64,96", help="U-Net widths at full, 1/2 and 1/4 resolution (the fast tier: 16,32,64)."
    ),
    head_dim: int = typer.Option(32, min=8, help="Attention head size at 1/4 resolution."),
) -> None:
    """Train the scroll-canvas dynamics model (kind scroll_canvas). The model folder lands in OUT/model."""
    from worldserve.dynamics.models.canvas.model import CanvasConfig

    try:
        widths = tuple(int(c) for c in channels.split(","))
        model = CanvasConfig(
            player_layer=player_layer,
            background_canvas=background_canvas and player_layer,
            channels=widths,  # type: ignore[arg-type]  # checked: three widths
            head_dim=head_dim,
        )
    except ValueError as e:
        raise typer.BadParameter(f"--channels {channels!r} / --head-dim {head_dim}: {e}") from None
    torch.set_num_threads(threads)
    _train_canvas(
        out,
        scale,
        budget_min,
        device,
        stop_at,
        batch=batch,
        lr=lr,
        n_episodes=episodes,
        unroll_from=unroll_from,
        choice_loss=choice_loss,
        draw_loss=draw_loss,
        init_from=init_from,
        workers=workers,
        export_every=export_every,
        model=model,
    )


@app.command()
def caption(
    out: Path = typer.Option(Path("runs/platformer/caption"), help="Working folder: checkpoints, resumable."),
    scale: float = typer.Option(1.0, min=0.001, max=100.0, help="Multiply the iterations (0.01 = a smoke run)."),
    threads: int = typer.Option(1, min=1, max=256, help="torch CPU threads."),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu or cuda."),
    budget_min: float = typer.Option(35.0, min=0.1, help="Wall-clock budget, minutes."),
) -> None:
    """Train only the caption decoder (prompt -> first frame)."""
    torch.set_num_threads(threads)
    _train_caption(out, scale, budget_min, device)


@app.command()
def export(
    out: Path = typer.Option(Path("runs/platformer"), help="The training folder of `all`."),
    weights: Path = typer.Option(WEIGHTS, help="Destination (default: the package's shipped weights)."),
) -> None:
    """Copy the trained models into WEIGHTS: OUT/canvas/model -> dynamics (the default model, when
    trained), OUT/dynamics -> transformer, and OUT/caption/model (else the flow model of OUT/image)
    -> image."""
    import shutil

    tc = TrainConfig(out=out)
    for name, path in export_weights(tc, weights, names=("dynamics",)).items():
        console.print(f"{name}: {path}")
    canvas = out / "canvas" / "model"
    if (canvas / "model.safetensors").is_file():
        (weights / "dynamics").mkdir(parents=True, exist_ok=True)
        for f in ("config.json", "model.safetensors"):
            shutil.copyfile(canvas / f, weights / "dynamics" / f)
        console.print(f"dynamics: {weights / 'dynamics'} (from {canvas})")
    src = out / "caption" / "model"
    if not (src / "model.safetensors").is_file():
        src = out / "image"
    dst = weights / "image"
    dst.mkdir(parents=True, exist_ok=True)
    for f in ("config.json", "model.safetensors"):
        shutil.copyfile(src / f, dst / f)
    console.print(f"image: {dst} (from {src})")


app.command("evaluate")(evaluate_command)


@app.command()
def text(
    out: Path = typer.Option(Path("out/text"), help="Working folder: ckpt.pt, tokenizer/, model/ (resumable)."),
    steps: int = typer.Option(4000, min=1, help="Optimizer steps (the LR schedule's length)."),
    budget_min: float = typer.Option(0.0, min=0.0, help="Also stop after this many minutes (0: no limit)."),
    batch: int = typer.Option(64, min=1, help="Pairs per step."),
    lr: float = typer.Option(2e-3, min=0.0, help="Peak learning rate."),
    hidden: int = typer.Option(256, min=8, help="Hidden size."),
    layers: int = typer.Option(4, min=1, help="Transformer layers."),
    heads: int = typer.Option(4, min=1, help="Attention heads."),
    intermediate: int = typer.Option(768, min=8, help="MLP size."),
    vocab_size: int = typer.Option(1024, min=300, help="Tokenizer vocabulary (byte-level BPE)."),
    seed: int = typer.Option(0, help="Seed of the data and the initial weights."),
    threads: int = typer.Option(2, min=1, max=256, help="torch CPU threads."),
    dtype: str = typer.Option("bfloat16", help="Saved weights: float32 or bfloat16."),
    ckpt_every: int = typer.Option(250, min=1, help="Checkpoint every N steps."),
    eval_every: int = typer.Option(500, min=1, help="Quick validation (and OUT/model export) every N steps."),
    resume: bool = typer.Option(False, help="Continue from OUT/ckpt.pt."),
    init_from: Path | None = typer.Option(
        None, help="Warm start: another run's folder (tokenizer/, ckpt.pt) or a model folder (weights/text)."
    ),
    warmup: int = typer.Option(200, min=1, help="Warm-up steps."),
) -> None:
    """Train the text app's language model (free text -> world spec / event JSON)."""
    from .text_trainer import TextModelConfig, TextTrainConfig, train_text

    if dtype not in ("float32", "bfloat16"):
        raise typer.BadParameter(f"dtype must be float32 or bfloat16, got {dtype!r}")
    tc = TextTrainConfig(
        out=out,
        steps=steps,
        budget_min=budget_min,
        batch=batch,
        lr=lr,
        seed=seed,
        threads=threads,
        dtype=dtype,
        ckpt_every=ckpt_every,
        eval_every=eval_every,
        init_from=init_from,
        warmup=warmup,
        model=TextModelConfig(
            hidden=hidden, layers=layers, heads=heads, intermediate=intermediate, vocab_size=vocab_size
        ),
    )
    folder = train_text(tc, resume=resume, log=lambda m: console.print(m, highlight=False))
    console.print(f"model: {folder}")


@app.command("text-average")
def text_average(
    runs: list[Path] = typer.Argument(..., help="Training folders (ckpt.pt, tokenizer/, model/), one lineage."),
    out: Path = typer.Option(Path("out/text-avg"), help="Where ckpt.pt, tokenizer/ and model/ go."),
    dtype: str = typer.Option("bfloat16", help="Saved weights: float32 or bfloat16."),
) -> None:
    """Average the weights of text training runs warm-started from one another (a model soup)."""
    from .text_trainer import average_runs

    if dtype not in ("float32", "bfloat16"):
        raise typer.BadParameter(f"dtype must be float32 or bfloat16, got {dtype!r}")
    try:
        folder = average_runs(list(runs), out, dtype=dtype)
    except (ValueError, FileNotFoundError) as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    console.print(f"model: {folder}")


TEXT_SETS = (
    "heldout",
    "fresh",
    "blind",
    "blind2",
    "blind3",
    "blind4",
    "blind5",
    "blind6",
    "blind7",
    "blind8",
    "blind9",
    "blind10",
    "blind11",
    "blind12",
)
"""``text-eval --set``: each held-out set NAME is the function ``NAME()`` of the module ``text_NAME``."""


def text_sets(names: list[str]) -> list[str]:
    """The held-out sets ``text-eval --set`` names, in order, each once ('all': every set); ValueError
    naming an unknown one."""
    out: list[str] = []
    for n in names:
        if n != "all" and n not in TEXT_SETS:
            known = [repr(k) for k in (*TEXT_SETS, "all")]
            raise ValueError(f"unknown set {n!r}: {', '.join(known[:-1])} or {known[-1]}")
        out += [k for k in (TEXT_SETS if n == "all" else (n,)) if k not in out]
    return out


@app.command("text-eval")
def text_eval(
    model: Path = typer.Option(WEIGHTS / "text", help="The model folder (default: the shipped one)."),
    dtype: str = typer.Option("float32", help="vLLM compute dtype: float32 or bfloat16."),
    report: Path = typer.Option(Path("out/text-eval.json"), help="Where the JSON report goes (every miss)."),
    heldout_sets: list[str] = typer.Option(
        ["heldout"],
        "--set",
        help="'heldout' (text_heldout, seed 2025), 'fresh' (text_fresh, seed 77: the second set), or 'blind', "
        "'blind2' ... 'blind12' (text_blind*, the third to fourteenth sets, each written blind), or 'all'. "
        "Repeat it for several sets: the model loads once, and the report adds their means.",
    ),
    show_misses: int = typer.Option(
        40,
        help="Misses printed per set (all are in the report). 0 prints figures only: use it on a set kept "
        "clean, so that reading its figures does not show its texts.",
    ),
) -> None:
    """The text model on held-out sets, decoded by vLLM under the served JSON schemas."""
    import importlib
    import json

    from rich.table import Table

    from .text_eval import evaluate_folder

    try:
        names = text_sets(heldout_sets)
    except ValueError as e:
        console.print(f"[red]error:[/] {e}", soft_wrap=True)
        raise typer.Exit(2) from None
    # only the sets asked for are loaded
    sets = {n: getattr(importlib.import_module(f".text_{n}", __package__), n)() for n in names}
    r = evaluate_folder(model, dtype=dtype, sets=sets)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(r, indent=1) + "\n")
    table = Table("set", "prompts", "events", "spec %", "answer %", "event %", "field errors")
    for name, f in r["sets"].items():
        errors = ", ".join(f"{k} {v}" for k, v in sorted(f["field_errors"].items()))
        table.add_row(
            name,
            str(f["prompts"]),
            str(f["events"]),
            str(f["exact_spec_pct"]),
            str(f["exact_answer_pct"]),
            str(f["exact_event_pct"]),
            errors,
        )
    console.print(table)
    for k, v in r.items():
        if k != "sets":
            console.print(f"{k}: {v}", highlight=False)
    for name, f in r["sets"].items():
        for m in f["misses"][: max(0, show_misses)]:
            console.print(
                f"miss {name} [{m['task']}] {m['text']!r}: expected {json.dumps(m['expected'])}, got {m['got']}",
                highlight=False,
                markup=False,
            )
    misses = sum(len(f["misses"]) for f in r["sets"].values())
    console.print(f"report: {report} ({misses} misses)")


if __name__ == "__main__":
    app()
