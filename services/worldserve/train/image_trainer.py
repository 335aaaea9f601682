"""Training of ``CaptionDecoder`` (kind ``caption_decoder``): caption -> the platformer's first frame.

Pixel regression (weighted MSE, object slots upweighted) on the rendered first frames of random
specs, generated on the fly (fresh captions every batch; frames cached per spec, there are only
13 x 13 x 3 x 2 x 2 = 2028 distinct first frames). A share of each batch uses caption variants the
grammar accepts (clauses shuffled, "and" joins, optional article / ground / day clause, synonyms,
odd case and spacing) so that other phrasings of a world draw the same frame.

Resumable: the model (``out/model/``) and ``out/train_state.pt`` (iteration, optimizer state, loss
history; loaded with ``weights_only=True``) are written every ``ckpt_every`` iterations and at the
end; iteration ``i``'s batch is a pure function of (seed, i), so a resumed run draws exactly what an
uninterrupted one would (unless the wall-clock budget shapes the learning rate). Stops at
``iters`` or when this invocation's ``budget_s`` is spent.

    python -m worldserve.train.image_trainer --out runs/caption_decoder --iters 4000 --batch 32 --budget-s 2100
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from worldserve.image.decoder import CaptionDecoder, CaptionDecoderConfig
from worldserve.worlds import Game, WorldSpec, caption_of
from worldserve.worlds.platformer import _SIZE, _SLOT_X, GROUND_Y, VIEW
from worldserve.worlds.splits import random_spec_in

from .data import step_generator

STATE_FILE = "train_state.pt"
MODEL_DIR = "model"

DECODER_CONFIG = CaptionDecoderConfig(
    name="caption-decoder-platformer", grid=8, text_dim=96, head_hidden=512, fine_channels=0
)
"""The shipped model's shape."""

_FRAMES: dict[WorldSpec, np.ndarray] = {}


def first_frame(spec: WorldSpec) -> np.ndarray:
    """The game's first frame for ``spec`` (64, 64, 3) uint8, cached (it does not depend on the seed)."""
    f = _FRAMES.get(spec)
    if f is None:
        f = _FRAMES[spec] = Game(spec, 0).reset()
    return f


def caption_variant(spec: WorldSpec, rng: np.random.Generator) -> str:
    """Another caption ``parse_caption`` reads as ``spec``: clauses shuffled, joined by commas or
    "and", optional article / grass / day clauses, synonyms, random case and spacing."""
    clauses = []
    for o in spec.objects:
        art = ("a ", "", "an ")[int(rng.choice(3, p=[0.8, 0.15, 0.05]))]
        clauses.append(f"{art}{o.color} {o.kind} on the {o.side}")
    if spec.ground != "grass" or rng.random() < 0.7:
        clauses.append(spec.ground)
    if spec.night:
        clauses.append("night" if rng.random() < 0.7 else "at night")
    elif rng.random() < 0.7:
        clauses.append("day" if rng.random() < 0.7 else "daytime")
    if spec.rain:
        clauses.append(str(rng.choice(["rain", "raining", "rainy"])))
    if not clauses:  # every clause optional was dropped: an empty caption is not valid
        clauses.append("day")
    rng.shuffle(clauses)
    text = clauses[0]
    for c in clauses[1:]:
        text += str(rng.choice([", ", " and ", ", and ", ","], p=[0.5, 0.3, 0.1, 0.1])) + c
    if rng.random() < 0.1:
        text += "."
    if rng.random() < 0.2:  # case and spacing (the model normalizes both away)
        text = "".join(ch.upper() if rng.random() < 0.3 else ch for ch in text)
        text = text.replace(" ", "  ") if rng.random() < 0.5 else " " + text + " "
    return text


def training_batch(seed: int, step: int, batch: int, variant_p: float) -> tuple[list[str], np.ndarray]:
    """Iteration ``step``'s captions and target frames (B, 64, 64, 3) uint8: a pure function of (seed, step)."""
    rng, _ = step_generator(seed, step)
    specs = [random_spec_in(rng, "train") for _ in range(batch)]  # never a held-out caption
    caps = [caption_variant(s, rng) if rng.random() < variant_p else caption_of(s) for s in specs]
    return caps, np.stack([first_frame(s) for s in specs])


def pixel_weights(object_weight: float) -> torch.Tensor:
    """(1, 1, 64, 64): 1 everywhere, ``object_weight`` over the object slots (where captions differ most)."""
    w = torch.ones(1, 1, VIEW, VIEW)
    hmax = max(h for _, h in _SIZE.values())
    wmax = max(wd for wd, _ in _SIZE.values())
    for x in _SLOT_X.values():
        w[..., max(0, GROUND_Y - hmax - 1) : GROUND_Y, max(0, x - 1) : x + wmax + 1] = object_weight
    return w / w.mean()


def _lr_at(step: int, iters: int, lr: float, warmup: int, time_frac: float) -> float:
    """Linear warmup, then cosine to lr / 20 over the iterations or the time budget, whichever ends first."""
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = min(1.0, max(time_frac, (step - warmup) / max(1, iters - warmup)))
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))


def train_caption_decoder(
    out: Path,
    *,
    iters: int,
    batch: int,
    budget_s: float,
    device: str = "cpu",
    log: Callable[[str], None] = print,
    config: CaptionDecoderConfig | None = None,
    lr: float = 2e-3,
    warmup: int = 100,
    seed: int = 0,
    ckpt_every: int = 250,
    stop_at: int = 0,
    variant_p: float = 0.5,
    object_weight: float = 4.0,
    log_every: int = 100,
    show_progress: bool = True,
) -> Path:
    """Train (or resume) a CaptionDecoder in ``out``; returns the model folder ``out/model``.

    ``stop_at`` > 0 ends this invocation (with a checkpoint) at that iteration while the schedule
    still spans ``iters`` (staged runs, tests). ``config`` is used for a fresh run only."""
    out = Path(out)
    mdir, state_path = out / MODEL_DIR, out / STATE_FILE
    dev = torch.device(device)
    if state_path.is_file():
        model = CaptionDecoder.from_pretrained(mdir)
    else:
        model = CaptionDecoder.random(config if config is not None else DECODER_CONFIG, seed=seed)
    model = model.to(dev).train()
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    start, losses = 0, []
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        opt.load_state_dict(state["opt"])
        start, losses = int(state["step"]), list(state["losses"])
        log(f"resuming {out} at iteration {start}")
    else:
        log(f"new CaptionDecoder: {model.num_parameters():,} parameters, config {model.config}")
    weights = pixel_weights(object_weight).to(dev)

    def checkpoint(step: int) -> None:
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(mdir)
        tmp = state_path.with_suffix(".tmp")
        torch.save({"step": step, "opt": opt.state_dict(), "losses": losses}, tmp)
        os.replace(tmp, state_path)

    t0 = time.monotonic()
    step = start
    progress = Progress(
        TextColumn("[bold]caption decoder"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.5f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not show_progress,
    )
    with progress as bar:
        task = bar.add_task("train", total=iters, completed=start, loss=losses[-1] if losses else float("nan"))
        while step < iters:
            elapsed = time.monotonic() - t0
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, iters, lr, warmup, elapsed / budget_s)
            caps, frames = training_batch(seed, step, batch, variant_p)
            target = torch.from_numpy(frames).to(dev).permute(0, 3, 1, 2).float() / 255.0  # (B, 3, H, W)
            ids, mask = model.encode_prompts(caps)
            pred = model(ids, mask)
            loss = ((pred - target) ** 2 * weights).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            recent = losses[-50:]
            bar.update(task, completed=step, loss=sum(recent) / len(recent))
            if log_every and step % log_every == 0:
                el = time.monotonic() - t0
                log(
                    f"iter {step}/{iters} loss {sum(recent) / len(recent):.5f} lr {opt.param_groups[0]['lr']:.2e} "
                    f"{(step - start) / el:.2f} it/s elapsed {el:.0f}s"
                )
            if step % ckpt_every == 0 or step == iters:
                checkpoint(step)
            if time.monotonic() - t0 > budget_s or step == stop_at:
                break
    if step % ckpt_every and step != iters:
        checkpoint(step)
    model.eval()
    log(f"stopped at iteration {step}/{iters} after {time.monotonic() - t0:.0f}s; model in {mdir}")
    return mdir


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/caption_decoder"))
    ap.add_argument("--iters", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--budget-s", type=float, default=2100.0)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    train_caption_decoder(
        a.out,
        iters=a.iters,
        batch=a.batch,
        budget_s=a.budget_s,
        lr=a.lr,
        device=a.device,
        show_progress=not a.no_progress,
        log=lambda s: print(s, flush=True),
    )


if __name__ == "__main__":
    main()
