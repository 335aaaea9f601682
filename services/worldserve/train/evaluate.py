"""Fidelity of the trained models, measured against the game itself.

    python -m worldserve.train.evaluate [--dynamics DIR] [--image DIR] [--sessions 16] [--json out.json]

Every rollout goes through the serving API (``encode`` -> ``prefill`` of the first frame ->
batched ``step`` with KV caches -> ``decode``), on held-out worlds (seeds >= ``HELDOUT_SEED``):

- autoencoder PSNR: decode(encode(frame)) vs the frame, held-out frames;
- rollout PSNR at steps 1, 8 and 32 (and the mean over 1..32) vs the true game from the same first
  frame and actions; "hold the first frame" is printed beside it as a naive baseline;
- controllability (Genie's delta-PSNR): mean PSNR over steps 1..16 with the true actions minus
  the same with shuffled actions (each session given another session's actions; and, harsher,
  its own actions permuted in time);
- prompt adherence: the fraction of described objects (colour, side) the palette check finds in
  generated first frames, and the fraction of frames with all of them;
- event response: mean brightness after "night falls" (and "it starts to rain") relative to the
  same rollout without it, beside the game's own ratio;
- determinism: the same seeds and actions give bitwise-identical frames (dynamics and image).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from worldserve.dynamics.model import WorldModel
from worldserve.image.model import TinyTextToImage
from worldserve.worlds import Game, WorldSpec, caption_of, check_palette, random_spec
from worldserve.worlds.platformer import random_actions

from .data import HELDOUT_SEED, action_matrix, make_trajectories

WEIGHTS = Path(__file__).resolve().parent.parent / "weights"


# --------------------------------------------------------------------------------------------------
# metric functions


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame PSNR in dB of uint8 frames (..., H, W, 3); identical frames give 100 (capped)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mse = ((a - b) ** 2).mean(axis=(-3, -2, -1))
    return np.minimum(100.0, 10 * np.log10(255.0**2 / np.maximum(mse, 1e-10)))


def delta_psnr(true_psnr: np.ndarray, shuffled_psnr: np.ndarray) -> float:
    """Controllability: mean PSNR under the true actions minus mean PSNR under shuffled ones."""
    return float(np.mean(true_psnr) - np.mean(shuffled_psnr))


def brightness_ratio(frames: np.ndarray, reference: np.ndarray) -> float:
    """Mean intensity of ``frames`` over that of ``reference`` (< 1: darker)."""
    return float(np.asarray(frames, np.float64).mean() / max(np.asarray(reference, np.float64).mean(), 1e-9))


def adherence(frames: Sequence[np.ndarray], specs: Sequence[WorldSpec]) -> tuple[float, float]:
    """(fraction of described objects found, fraction of frames with all of them found)."""
    found = [check_palette(f, s) for f, s in zip(frames, specs)]
    objects = [x for row in found for x in row]
    return float(np.mean(objects)) if objects else 1.0, float(np.mean([all(r) for r in found]))


# --------------------------------------------------------------------------------------------------
# episodes and rollouts


def episode(seed: int, steps: int, *, event: str | None = None, event_step: int = 1,
            spec: WorldSpec | None = None) -> tuple[np.ndarray, list[tuple[str, ...]], list[str]]:
    """A held-out world played with a random policy: frames (steps + 1, H, W, 3), the keys of
    steps 1..steps, and the event text in force for each of those frames."""
    rng = np.random.default_rng([HELDOUT_SEED + seed, 2])
    spec = spec if spec is not None else random_spec(rng)
    game = Game(spec, HELDOUT_SEED + seed)
    frames = [game.reset()]
    keys = random_actions(rng, steps)
    events = []
    for s, k in enumerate(keys, start=1):
        frames.append(game.step(k, event if s == event_step and event else None))
        events.append(game.event)
    return np.stack(frames), keys, events


@torch.no_grad()
def rollout(model: WorldModel, first: np.ndarray, actions: np.ndarray, events: list[list[str]] | None,
            seeds: Sequence[int]) -> np.ndarray:
    """Serve N sessions the way the engine does: encode + prefill the first frames, then one batched
    ``step`` per action. first (N, H, W, 3) uint8, actions (N, S, A) -> frames (N, S, H, W, 3)."""
    n, steps = actions.shape[:2]
    z0 = model.encode(torch.from_numpy(first))
    caches = [model.prefill(z0[i : i + 1], model.null_action()[None], 0, events=[""]) for i in range(n)]
    out = []
    for s in range(steps):
        ev = [events[i][s] for i in range(n)] if events is not None else None
        lat = model.step(caches, torch.from_numpy(actions[:, s]), seeds=list(seeds), steps=[s + 1] * n, events=ev)
        out.append(model.decode(lat).numpy())
    return np.stack(out, axis=1)


# --------------------------------------------------------------------------------------------------


def evaluate(dynamics: WorldModel, image: TinyTextToImage | None, *, sessions: int = 16, prompts: int = 64,
             horizon: int = 32) -> dict[str, float]:
    """All figures as a flat dict."""
    r: dict[str, float] = {}
    a_dim = dynamics.config.action_dim
    n_mouse = len(dynamics.config.mouse_axes)

    # autoencoder on held-out frames
    held = make_trajectories(range(HELDOUT_SEED, HELDOUT_SEED + sessions), 16, event_p=0.1)
    frames = held.frames.reshape(-1, *held.frames.shape[2:])
    recon = np.concatenate([dynamics.decode(dynamics.encode(torch.from_numpy(frames[i : i + 128]))).numpy()
                            for i in range(0, len(frames), 128)])
    r["ae_psnr"] = float(psnr(recon, frames).mean())

    # rollouts vs the game
    eps = [episode(i, horizon) for i in range(sessions)]
    first = np.stack([e[0][0] for e in eps])
    truth = np.stack([e[0][1:] for e in eps])  # (N, S, H, W, 3)
    acts = np.stack([action_matrix(e[1], dynamics.config.keys, n_mouse) for e in eps])
    assert acts.shape[-1] == a_dim
    seeds = list(range(sessions))
    pred = rollout(dynamics, first, acts, None, seeds)
    p = psnr(pred, truth)  # (N, S)
    hold = psnr(np.broadcast_to(first[:, None], truth.shape), truth)
    for k in (1, 8, 32):
        if k <= horizon:
            r[f"rollout_psnr_{k}"] = float(p[:, k - 1].mean())
            r[f"hold_first_psnr_{k}"] = float(hold[:, k - 1].mean())
    r["rollout_psnr_mean"] = float(p.mean())
    r["hold_first_psnr_mean"] = float(hold.mean())

    # controllability: the same 16 steps with shuffled actions. Headline (Genie's random-action
    # baseline): every session gets another session's action sequence (a derangement), i.e. real
    # actions from the same policy, unrelated to this world. Also reported: each session's own
    # actions permuted in time, a harsher baseline -- it keeps the same net walk, so by the end of
    # the horizon the view has scrolled to the same place.
    c = min(16, horizon)
    r["control_psnr_true"] = float(p[:, :c].mean())
    across = np.roll(acts[:, :c], 1, axis=0)
    p_across = psnr(rollout(dynamics, first, across, None, seeds), truth[:, :c])
    r["control_psnr_shuffled"] = float(p_across.mean())
    r["control_delta_psnr"] = delta_psnr(p[:, :c], p_across)
    rng = np.random.default_rng(0)
    in_time = np.stack([a[rng.permutation(c)] for a in acts[:, :c]])
    p_time = psnr(rollout(dynamics, first, in_time, None, seeds), truth[:, :c])
    r["control_psnr_time_shuffled"] = float(p_time.mean())
    r["control_delta_psnr_time_shuffled"] = delta_psnr(p[:, :c], p_time)

    # determinism: the first 8 steps again, same seeds and actions
    again = rollout(dynamics, first, acts[:, :8], None, seeds)
    r["deterministic_dynamics"] = float(np.array_equal(again, pred[:, :8]))

    # event response: day, dry worlds; the event from step 1 on, vs no event
    if dynamics.events_supported:
        for name, text in (("night", "night falls"), ("rain", "it starts to rain")):
            e_steps = 8
            base, with_ev, model_ratio_rows = [], [], []
            game_plain, game_ev, a_rows, ev_rows, firsts = [], [], [], [], []
            for i in range(sessions):
                spec = random_spec(np.random.default_rng([HELDOUT_SEED + i, 3]))
                spec = WorldSpec(spec.objects, spec.ground, night=False, rain=False)
                f0, keys, _ = episode(i, e_steps, spec=spec)
                f1, _, evs = episode(i, e_steps, spec=spec, event=text)
                game_plain.append(f0[1:]), game_ev.append(f1[1:])
                a_rows.append(action_matrix(keys, dynamics.config.keys, n_mouse)), ev_rows.append(evs)
                firsts.append(f0[0])
            firsts_a, acts_e = np.stack(firsts), np.stack(a_rows)
            plain = rollout(dynamics, firsts_a, acts_e, None, seeds)
            evented = rollout(dynamics, firsts_a, acts_e, ev_rows, seeds)
            r[f"event_{name}_brightness_model"] = brightness_ratio(evented, plain)
            r[f"event_{name}_brightness_game"] = brightness_ratio(np.stack(game_ev), np.stack(game_plain))

    # prompt adherence
    if image is not None:
        rng = np.random.default_rng([HELDOUT_SEED, 4])
        specs = []
        while len(specs) < prompts:
            s = random_spec(rng)
            if s.objects:
                specs.append(s)
        caps = [caption_of(s) for s in specs]
        w, h = image.supported_sizes[0]
        gen = np.concatenate([
            image.generate_batch(caps[i : i + 16], seeds=list(range(i, min(i + 16, len(caps)))), width=w, height=h,
                                 steps=image.default_steps, guidance=image.default_guidance)
            for i in range(0, len(caps), 16)])
        r["prompt_objects_found"], r["prompt_frames_all_found"] = adherence(list(gen), specs)
        r["prompt_objects_found_game"] = adherence([Game(s, 0).reset() for s in specs], specs)[0]
        again_img = image.generate(caps[0], seed=0, width=w, height=h, steps=image.default_steps,
                                   guidance=image.default_guidance)
        r["deterministic_image"] = float(np.array_equal(again_img, gen[0]))
    return r


def table(r: dict[str, float]):
    from rich.table import Table

    t = Table(title="worldserve default models: fidelity vs the platformer (held-out worlds)")
    t.add_column("metric")
    t.add_column("model", justify="right")
    t.add_column("reference", justify="right")

    def row(name: str, key: str, ref: str = "", fmt: str = "{:.2f}") -> None:
        if key in r:
            t.add_row(name, fmt.format(r[key]), ref)

    row("autoencoder PSNR, held-out frames (dB)", "ae_psnr")
    for k in (1, 8, 32):
        row(f"rollout PSNR at step {k} (dB)", f"rollout_psnr_{k}", f"hold first frame {r.get(f'hold_first_psnr_{k}', float('nan')):.2f}")
    row("rollout PSNR, mean of steps 1-32 (dB)", "rollout_psnr_mean", f"hold first frame {r.get('hold_first_psnr_mean', float('nan')):.2f}")
    row("controllability delta-PSNR, steps 1-16 (dB), actions shuffled across sessions", "control_delta_psnr",
        f"true {r.get('control_psnr_true', float('nan')):.2f} / shuffled {r.get('control_psnr_shuffled', float('nan')):.2f}")
    row("controllability delta-PSNR, steps 1-16 (dB), actions shuffled in time", "control_delta_psnr_time_shuffled",
        f"true {r.get('control_psnr_true', float('nan')):.2f} / shuffled {r.get('control_psnr_time_shuffled', float('nan')):.2f}")
    row("prompt adherence: objects found", "prompt_objects_found", f"game frames {r.get('prompt_objects_found_game', float('nan')):.2f}")
    row("prompt adherence: frames with all objects", "prompt_frames_all_found")
    row("event 'night falls': brightness vs none", "event_night_brightness_model", f"game {r.get('event_night_brightness_game', float('nan')):.2f}")
    row("event 'it starts to rain': brightness vs none", "event_rain_brightness_model", f"game {r.get('event_rain_brightness_game', float('nan')):.2f}")
    for key, name in (("deterministic_dynamics", "determinism: rollout replay identical"),
                      ("deterministic_image", "determinism: image regenerated identical")):
        if key in r:
            t.add_row(name, "yes" if r[key] == 1.0 else "NO", "")
    return t


def run(dynamics: Path = WEIGHTS / "dynamics", image: Path | None = WEIGHTS / "image", *, sessions: int = 16,
        prompts: int = 64, threads: int = 1, json_out: Path | None = None,
        sample_steps: int = 0) -> dict[str, float]:
    import dataclasses

    from rich.console import Console

    torch.set_num_threads(threads)
    t0 = time.monotonic()
    dyn = WorldModel.from_pretrained(dynamics)
    if sample_steps:  # a serving tier: the same weights with another number of sampler steps
        dyn.config = dataclasses.replace(dyn.config, sample_steps=sample_steps)
    img = TinyTextToImage.from_pretrained(image) if image is not None else None
    r = evaluate(dyn, img, sessions=sessions, prompts=prompts)
    r["eval_seconds"] = time.monotonic() - t0
    console = Console()
    console.print(table(r))
    console.print(f"{sessions} sessions, {prompts} prompts, {dyn.config.sample_steps} sampler steps, "
                  f"{r['eval_seconds']:.0f}s")
    if json_out is not None:
        Path(json_out).write_text(json.dumps(r, indent=2) + "\n")
    return r


def main() -> None:
    """``python -m worldserve.train.evaluate``: the ``evaluate`` command of ``python -m worldserve.train``."""
    import sys

    from worldserve.train.__main__ import app

    app(["evaluate", *sys.argv[1:]], prog_name="python -m worldserve.train.evaluate")


if __name__ == "__main__":
    main()
