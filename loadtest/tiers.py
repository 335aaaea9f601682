"""Time per frame of every served tier, as its replica serves it, in one run (issue 27: the fast
tier at most half the quality tier's time per frame, batch of 16, this CPU).

    python -m loadtest.tiers                    # batch 16, 6 interleaved rounds of 3 steps
    python -m loadtest.tiers --batch 16 --rounds 8 --threads 1 --json /tmp/tiers.json

Each model is loaded with the registry from the serve config (``deploy/serve/worldserve.yaml``:
the weights, the sampler steps and the batch invariance a replica uses), then steps ``batch``
sessions of a held-out level walking right, ``step`` and ``decode`` timed together, as the
engine's runner calls them. The tiers take turns round after round, so a noisy neighbour slows
both alike; the figure is the median, and each tier's ratio is against the first (quality) tier.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer

from loadtest.capacity.models import SERVE_YAML, served_config

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def step_seconds(model: Any, first: np.ndarray, batch: int, steps: int) -> list[float]:
    """Seconds of each of ``steps`` batched steps (step + decode) of ``batch`` fresh sessions."""
    z = model.encode(torch.from_numpy(np.stack([first] * batch)))
    states = [model.prefill(z[i : i + 1], model.null_action()[None], 0) for i in range(batch)]
    acts = torch.stack([model.action_vector(["right"])] * batch)
    decode_step = getattr(model, "decode_step", None)
    out = []
    try:
        for s in range(1, steps + 1):
            t0 = time.perf_counter()
            zs = model.step(states, acts, seeds=list(range(batch)), steps=[s] * batch)
            decode_step(states, zs) if decode_step is not None else model.decode(zs)
            out.append(time.perf_counter() - t0)
    finally:
        for st in states:
            model.release_state(st)
    return out


@app.command()
def main(
    batch: int = typer.Option(16, min=1, max=256, help="Sessions stepped together."),
    rounds: int = typer.Option(6, min=1, max=100, help="Rounds; the tiers take turns in each."),
    steps: int = typer.Option(3, min=1, max=64, help="Steps per round and tier."),
    threads: int = typer.Option(1, min=1, max=256, help="torch CPU threads."),
    config: Path = typer.Option(SERVE_YAML, help="Serve config whose dynamics models are timed."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the figures as JSON."),
) -> None:
    """Median time per frame of every served model, and its ratio to the first one's."""
    from worldserve.dynamics.registry import load_model
    from worldserve.worlds import Game
    from worldserve.worlds.splits import split_specs

    torch.set_num_threads(threads)
    try:
        cfg = served_config(config)
    except (OSError, KeyError, StopIteration, ValueError) as e:
        raise typer.BadParameter(f"{config}: {e}") from None
    models = {spec.name: load_model(spec, cfg, "cpu") for spec in cfg.models}
    first = Game(split_specs("test")[0], 1).reset()  # a held-out level
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            times[name] += step_seconds(model, first, batch, steps)
    ref_name = cfg.models[0].name
    ref = statistics.median(times[ref_name])
    rows = []
    for spec in cfg.models:
        med = statistics.median(times[spec.name])
        rows.append(
            {
                "model": spec.name,
                "tier": spec.tier,
                "ms_per_frame": 1000 * med / batch,
                "ratio": med / ref,
                "samples": len(times[spec.name]),
            }
        )
        print(
            f"{spec.name:24s} tier {spec.tier or '-':8s} {1000 * med / batch:7.1f} ms/frame  {med / ref:.2f}x {ref_name}"
        )
    if json_out is not None:
        json_out.write_text(json.dumps({"batch": batch, "threads": threads, "rows": rows}, indent=2))


if __name__ == "__main__":
    app()
