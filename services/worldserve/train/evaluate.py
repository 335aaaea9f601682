"""Fidelity of a dynamics model and an image model, measured against the game itself.

    python -m worldserve.train.evaluate [--dynamics DIR] [--image DIR] [--sessions 32] [--prompts 64]
                                        [--horizon 32] [--sample-steps N] [--threads 1] [--json out.json]

Held-out worlds only: world ``i`` is seed ``HELDOUT_SEED + i`` with a new caption from
``random_spec`` (the same worlds as :func:`episode`). Every rollout is served the way the engine
serves it, through the :class:`~worldserve.dynamics.interface.DynamicsModelProtocol` interface alone:
``encode`` the first frame, ``prefill`` it (one state per session), then one batched ``step`` per
step for all sessions (guidance 2.0; the session seed is the world's seed), ``decode`` each new
latent, ``release_state`` at the end. Frames are read with :mod:`worldserve.worlds.checks`.

Figures (targets in ``TARGETS``; the table marks each target line pass/fail):

1. player within 4 px (Chebyshev distance of the detected to the true (centre x, feet y); no
   player found = a miss) at steps 1 / 8 / 24 of the random-policy rollouts;
2. the same over every frame where the true player is in the air, in the random-policy rollouts
   and in as many jump-heavy ones;
3. 24 no-ops on the worlds without rain (the game's frame never changes): PSNR of frame 24;
4. caption objects still drawn in place at step 16 (those the true frame shows whole);
5. rollout PSNR at every step 1..horizon beside "hold the first frame";
6. controllability: PSNR at step 8 with the true actions minus with another world's actions;
7. memory: 8 steps right then 8 left, frame 16 vs the true frame 0;
8. prompt -> image: described objects in colour, kind and side (and frames with all of them);
9. events on day, dry worlds: brightness ratio after "night falls" / "it starts to rain" vs the
   game's, rain drawn as streaks, stars at night;
10. determinism of replayed rollouts and regenerated images.

The code lives in modules by job: ``eval_figures`` (constants, targets, metric functions),
``eval_worlds`` (held-out worlds, episodes, the game's truth), ``eval_rollouts`` (serving through
the interface), ``eval_report`` (the table) and this one (the evaluation, loading, the command).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer

from worldserve.worlds import Game, WorldSpec, caption_of, checks
from worldserve.worlds.platformer import VIEW

from .baselines import BASELINES
from .eval_figures import (
    CONTROL_STEP,
    EVENT_STEPS,
    GUIDANCE,
    JUMP_STEPS,
    MEMORY_MOVE_PX,
    MEMORY_STEPS,
    NOOP_STEPS,
    OBJECT_STEP,
    PSNR_STEPS,
    RESUME_STEPS,
    RESUME_WORLDS,
    TARGETS,
    TRACK_PX,
    TRACK_STEPS,
    adherence,
    brightness_ratio,
    delta_psnr,
    passed,
    pooled_psnr,
    psnr,
)
from .eval_report import table
from .eval_rollouts import Job, ServeStats, resume_matches, rollout, serve
from .eval_worlds import Played, check_eval_split, episode, heldout_prompts, heldout_world, jump_actions, play

__all__ = [
    "CONTROL_STEP",
    "EVENT_STEPS",
    "GUIDANCE",
    "JUMP_STEPS",
    "MEMORY_STEPS",
    "NOOP_STEPS",
    "OBJECT_STEP",
    "PSNR_STEPS",
    "TARGETS",
    "TRACK_PX",
    "TRACK_STEPS",
    "WEIGHTS",
    "Job",
    "Played",
    "ServeStats",
    "adherence",
    "brightness_ratio",
    "command",
    "delta_psnr",
    "episode",
    "evaluate",
    "evaluate_image",
    "heldout_prompts",
    "heldout_world",
    "jump_actions",
    "load_dynamics",
    "load_image",
    "main",
    "passed",
    "play",
    "psnr",
    "rollout",
    "run",
    "serve",
    "table",
]

WEIGHTS = Path(__file__).resolve().parent.parent / "weights"


# --------------------------------------------------------------------------------------------------
# the evaluation


def _mean(xs: Sequence[float]) -> float:
    return float(np.mean(xs)) if len(xs) else float("nan")


def _found(frame: np.ndarray, true: tuple[int, int]) -> bool:
    return checks.player_distance(checks.find_player(frame), true) <= TRACK_PX


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    if img.shape[:2] == (h, w):
        return img
    ys = (np.arange(h) * img.shape[0] // h).clip(0, img.shape[0] - 1)
    xs = (np.arange(w) * img.shape[1] // w).clip(0, img.shape[1] - 1)
    return img[ys][:, xs]


def evaluate(
    dynamics: Any,
    image: Any = None,
    *,
    sessions: int = 32,
    prompts: int = 64,
    horizon: int = 32,
    guidance: float = GUIDANCE,
    batch: int = 64,
    split: str = "test",
) -> dict[str, Any]:
    """Every figure as a dict (floats, and per-step lists). ``dynamics`` is any
    :class:`~worldserve.dynamics.interface.DynamicsModelProtocol`; ``image`` any object with
    ``generate_batch`` (None: no prompt figures); ``split`` the held-out worlds and captions:
    "test" (report) or "val" (choose checkpoints)."""
    if sessions < 2:
        raise ValueError(f"sessions must be >= 2 (controllability swaps actions between sessions), got {sessions}")
    check_eval_split(split)
    t0 = time.monotonic()
    r: dict[str, Any] = {"sessions": sessions, "horizon": horizon, "split": split}
    info = dynamics.info
    events_on = bool(info.events_supported)
    r["sample_steps"] = int(info.sample_steps)
    L = max(horizon, max(TRACK_STEPS), OBJECT_STEP, CONTROL_STEP)

    # --- the worlds, their jobs and the game's truth ---------------------------------------------
    worlds = [heldout_world(i, L, split) for i in range(sessions)]
    groups: dict[str, list[tuple[Job, Played]]] = {
        k: [] for k in ("main", "shuffled", "jump", "noop", "memory", "plain", "night", "rain")
    }

    def add(
        group: str, spec: WorldSpec, seed: int, keys: list, events: list[str] | None = None, truth: Played | None = None
    ) -> None:
        p = truth if truth is not None else play(spec, seed, keys, events)
        groups[group].append((Job(p.frames[0], list(keys), events, seed), p))

    for i, (spec, seed, keys) in enumerate(worlds):
        add("main", spec, seed, keys)
        add("jump", spec, seed, jump_actions(np.random.default_rng([seed, 5]), JUMP_STEPS))
        # no-ops: every other world rains (the game animates its streaks; the rest stays still)
        add("noop", WorldSpec(spec.objects, spec.ground, spec.night, rain=bool(i % 2)), seed, [()] * NOOP_STEPS)
        add("memory", spec, seed, [("right",)] * MEMORY_STEPS + [("left",)] * MEMORY_STEPS)
        if events_on:
            day = WorldSpec(spec.objects, spec.ground, night=False, rain=False)
            ek = keys[:EVENT_STEPS]
            add("plain", day, seed, ek, [""] * EVENT_STEPS)
            add("night", day, seed, ek, ["night falls"] * EVENT_STEPS)
            add("rain", day, seed, ek, ["it starts to rain"] * EVENT_STEPS)
    for i, (spec, seed, _) in enumerate(worlds):  # another world's actions, the same world
        other = worlds[(i - 1) % sessions][2][:CONTROL_STEP]  # np.roll by 1 over sessions
        add("shuffled", spec, seed, other, truth=groups["main"][i][1])

    names = list(groups)
    all_jobs = [j for g in names for j, _ in groups[g]]
    stats = ServeStats()
    served = serve(dynamics, all_jobs, guidance=guidance, batch=batch, stats=stats)
    pred: dict[str, list[np.ndarray]] = {}
    k = 0
    for g in names:
        pred[g] = served[k : k + len(groups[g])]
        k += len(groups[g])
    truth = {g: [p for _, p in groups[g]] for g in names}

    # --- autoencoder (informational) --------------------------------------------------------------
    sample = np.stack([p.frames[t] for p in truth["main"] for t in (0, 8, 16, 24) if t < len(p.frames)])
    recon = np.concatenate(
        [
            dynamics.decode(dynamics.encode(torch.from_numpy(sample[i : i + 64]))).numpy()
            for i in range(0, len(sample), 64)
        ]
    )
    r["ae_psnr"] = float(psnr(recon, sample).mean())

    # --- 1, 2: the player --------------------------------------------------------------------------
    main_t, main_p = truth["main"], pred["main"]
    per_step = []
    for s in range(1, L + 1):
        per_step.append(_mean([_found(main_p[i][s - 1], main_t[i].position[s]) for i in range(sessions)]))
    r["player_within4_per_step"] = per_step
    for s in TRACK_STEPS:
        r[f"player_within4_step{s}"] = per_step[s - 1]
    air, air_game, exact_game = [], [], []
    for g in ("main", "jump"):
        for p, f in zip(truth[g], pred[g]):
            for s in range(1, len(p.frames)):
                exact_game.append(checks.find_player(p.frames[s]) == p.position[s])
                if p.airborne(s):
                    air.append(_found(f[s - 1], p.position[s]))
                    air_game.append(_found(p.frames[s], p.position[s]))
    r["player_airborne_within4"] = _mean(air)
    r["player_airborne_frames"] = len(air)
    r["player_airborne_within4_game"] = _mean(air_game)
    r["player_exact_game"] = _mean(exact_game)

    # --- 3: no-ops, against the game's frames (its rain animation included) -------------------------
    noop_true = np.stack([p.frames[1 : NOOP_STEPS + 1] for p in truth["noop"]])
    noop_hold = np.broadcast_to(np.stack([p.frames[0] for p in truth["noop"]])[:, None], noop_true.shape)
    r["noop_psnr"] = pooled_psnr(np.stack(pred["noop"]), noop_true)
    r["noop_hold_psnr"] = pooled_psnr(noop_hold, noop_true)
    r["noop_above_hold_db"] = r["noop_psnr"] - r["noop_hold_psnr"]
    r["noop24_psnr"] = float(
        np.mean([psnr(f[NOOP_STEPS - 1], p.frames[NOOP_STEPS]) for p, f in zip(truth["noop"], pred["noop"])])
    )

    # --- 4: first-view objects at step 16 ----------------------------------------------------------
    hits, hits_game = [], []
    for p, f in zip(main_t, main_p):
        s = OBJECT_STEP
        light = dict(night=p.night[s], rain=p.rain[s])
        model_in = checks.objects_in_place(f[s - 1], p.spec, p.camera[s], **light)
        game_in = checks.objects_in_place(p.frames[s], p.spec, p.camera[s], **light)
        for shown, in_model, in_game in zip(p.shown[s], model_in, game_in):
            if shown:
                hits.append(in_model)
                hits_game.append(in_game)
    r["objects_in_place_step16"] = _mean(hits)
    r["objects_in_place_step16_game"] = _mean(hits_game)
    r["objects_in_place_count"] = len(hits)

    # --- 5: rollout PSNR vs holding the first frame -------------------------------------------------
    true_frames = np.stack([p.frames[1 : horizon + 1] for p in main_t])
    model_frames = np.stack([f[:horizon] for f in main_p])
    pp = psnr(model_frames, true_frames)  # (N, horizon)
    hold = psnr(np.broadcast_to(np.stack([p.frames[0] for p in main_t])[:, None], true_frames.shape), true_frames)
    r["rollout_psnr"] = pp.mean(0).tolist()
    r["hold_first_psnr"] = hold.mean(0).tolist()
    for s in PSNR_STEPS:
        if s <= horizon:
            r[f"rollout_psnr_{s}"] = float(pp[:, s - 1].mean())
            r[f"hold_first_psnr_{s}"] = float(hold[:, s - 1].mean())
    r["rollout_psnr_mean"] = float(pp.mean())
    r["hold_first_psnr_mean"] = float(hold.mean())
    r["rollout_above_hold_all_steps"] = float(bool(np.all(pp.mean(0) > hold.mean(0))))

    # --- 6: controllability -------------------------------------------------------------------------
    c = CONTROL_STEP
    truth_c = np.stack([p.frames[1 : c + 1] for p in main_t])
    shuffled = psnr(np.stack([f[:c] for f in pred["shuffled"]]), truth_c)
    true_c = psnr(np.stack([f[:c] for f in main_p]), truth_c)
    r["control_psnr_true_8"] = float(true_c[:, c - 1].mean())
    r["control_psnr_shuffled_8"] = float(shuffled[:, c - 1].mean())
    r["control_delta_psnr_8"] = delta_psnr(true_c[:, c - 1], shuffled[:, c - 1])
    r["control_delta_psnr_mean_1_8"] = delta_psnr(true_c, shuffled)

    # --- 7: memory: where the game's view moved and came back, against the game's frame ------------
    back, half = 2 * MEMORY_STEPS, MEMORY_STEPS
    away = [
        (p, f)
        for p, f in zip(truth["memory"], pred["memory"])
        if p.camera[half] - p.camera[0] >= MEMORY_MOVE_PX and p.camera[back] == p.camera[0]
    ]
    r["memory_worlds"] = len(away)
    # the model's view moved too: its frame 8 is nearer the game's frame 8 than the first frame
    r["memory_view_moved"] = _mean(
        [float(psnr(f[half - 1], p.frames[half]) > psnr(f[half - 1], p.frames[0])) for p, f in away]
    )
    r["memory_psnr"] = _mean([float(psnr(f[back - 1], p.frames[back])) for p, f in away])
    r["memory_psnr_game"] = _mean([float(psnr(p.frames[back], p.frames[0])) for p, _ in away])

    # --- 9: events ----------------------------------------------------------------------------------
    if events_on:
        plain_m = np.stack(pred["plain"])
        plain_g = np.stack([p.frames[1:] for p in truth["plain"]])
        for name in ("night", "rain"):
            ev_m = np.stack(pred[name])
            ev_g = np.stack([p.frames[1:] for p in truth[name]])
            r[f"event_{name}_brightness_model"] = brightness_ratio(ev_m, plain_m)
            r[f"event_{name}_brightness_game"] = brightness_ratio(ev_g, plain_g)
            r[f"event_{name}_brightness_error"] = abs(
                r[f"event_{name}_brightness_model"] - r[f"event_{name}_brightness_game"]
            )
        # what the game draws: rain streaks in rainy frames (none in dry ones), stars in the night sky
        rain_m = np.stack(pred["rain"]).reshape(-1, VIEW, VIEW, 3)
        rain_g = np.stack([p.frames[1:] for p in truth["rain"]]).reshape(-1, VIEW, VIEW, 3)
        r["event_rain_streaks"] = _mean([checks.rain_streaks(f) for f in rain_m])
        r["event_dry_streaks"] = _mean([checks.rain_streaks(f) for f in plain_m.reshape(-1, VIEW, VIEW, 3)])
        r["rain_streaks_game_rain"] = _mean([checks.rain_streaks(f) for f in rain_g])
        r["rain_streaks_game_dry"] = _mean([checks.rain_streaks(f) for f in plain_g.reshape(-1, VIEW, VIEW, 3)])
        r["stars_night_model"] = _mean([checks.stars(f) for f in np.stack(pred["night"]).reshape(-1, VIEW, VIEW, 3)])
        r["stars_night_game"] = _mean(
            [checks.stars(p.frames[s]) for p in truth["night"] for s in range(1, len(p.frames))]
        )
        r["event_night_stars_ratio"] = r["stars_night_model"] / max(r["stars_night_game"], 1e-9)
        r["stars_day_model"] = _mean([checks.stars(f) for f in plain_m.reshape(-1, VIEW, VIEW, 3)])

    # --- 10: resumed after a cache miss (on another replica, alone): bitwise the warm path ----------
    n = min([RESUME_STEPS] + [len(j.keys) for j, _ in groups["main"][:RESUME_WORLDS]])
    # night from step 3, rain from step 7 (in force, as the engine keeps an event)
    evs = ["it starts to rain" if s >= 7 else "night falls" if s >= 3 else "" for s in range(1, n + 1)]
    resume_jobs = [
        Job(j.first, j.keys[:n], evs if events_on else None, j.seed)
        for j, _ in groups["main"][: min(sessions, RESUME_WORLDS)]
    ]
    match = resume_matches(dynamics, resume_jobs, range(0, n, 4), guidance=guidance)  # a miss every 4 steps
    r["resume_frames"] = match.compared
    r["resume_bitwise"] = match.identical / max(match.compared, 1)
    r["model_step_calls"] = stats.step_calls
    r["model_frames"] = stats.frames
    r["dynamics_seconds"] = time.monotonic() - t0

    # --- 8: prompt -> image -------------------------------------------------------------------------
    if image is not None:
        t1 = time.monotonic()
        r.update(evaluate_image(image, prompts=prompts, split=split))
        r["image_seconds"] = time.monotonic() - t1
    r["pass"] = passed(r)
    return r


def evaluate_image(image: Any, *, prompts: int = 64, batch: int = 8, split: str = "test") -> dict[str, Any]:
    """Prompt figures of an image model (anything with ``generate_batch``; its ``default_steps``
    and ``default_guidance`` are used when present) on ``prompts`` captions of ``split``."""
    r: dict[str, Any] = {"prompts": prompts}
    specs = heldout_prompts(prompts, split)
    caps = [caption_of(s) for s in specs]
    sizes = [tuple(s) for s in getattr(image, "supported_sizes", ((VIEW, VIEW),))]
    w, h = (VIEW, VIEW) if (VIEW, VIEW) in sizes else sizes[0]
    opts = dict(
        width=w,
        height=h,
        steps=int(getattr(image, "default_steps", 4)),
        guidance=float(getattr(image, "default_guidance", 3.0)),
    )

    def gen(i: int) -> np.ndarray:
        imgs = image.generate_batch(caps[i : i + batch], seeds=list(range(i, min(i + batch, len(caps)))), **opts)
        return np.stack([_resize(np.asarray(x, np.uint8), VIEW, VIEW) for x in imgs])

    out = np.concatenate([gen(i) for i in range(0, len(caps), batch)])
    r["prompt_objects_found"], r["prompt_frames_all_found"] = adherence(list(out), specs)
    game = [Game(s, 0).reset() for s in specs]
    r["prompt_objects_found_game"], r["prompt_frames_all_found_game"] = adherence(game, specs)
    r["image_regenerated_identical"] = float(np.array_equal(gen(0), out[:batch]))  # info
    return r


# --------------------------------------------------------------------------------------------------
# loading and the command


def load_dynamics(folder: Path, sample_steps: int = 0, device: str = "cpu") -> Any:
    """Any registered dynamics model: kind = config.json's "kind", else "world_model". On CUDA in
    bf16 (the serving dtype there), else float32."""
    from worldserve.common.config import ModelSpec, folder_kind
    from worldserve.dynamics.registry import REGISTRY

    kind = folder_kind(folder, "world_model")
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return REGISTRY.get(kind)(
        str(folder), device=device, dtype=dtype, spec=ModelSpec(name="eval", kind=kind, sample_steps=sample_steps)
    )


def load_image(folder: Path, device: str = "cpu") -> Any:
    """Any registered image model: kind = config.json's "kind", else "tiny_text_to_image"."""
    from worldserve.common.config import folder_kind
    from worldserve.image.core import REGISTRY

    return REGISTRY.get(folder_kind(folder, "tiny_text_to_image"))(str(folder), device=device)


def served_models(config: Path | None = None) -> dict[str, Any]:
    """The dynamics models the serve config (default: the repository's) serves: name -> ModelSpec."""
    from worldserve.common.config import ModelSpec
    from worldserve.deploy import load_config

    cfg = load_config(config, text=False)
    app = next(a for a in cfg["applications"] if a["name"] == "dynamics")
    return {m.name: m for m in (ModelSpec.parse(x) for x in app["args"].get("models") or [])}


def load_served(name: str, device: str = "cpu", config: Path | None = None) -> Any:
    """Served model ``name`` loaded as its replica loads it (``registry.load_model``: its folder,
    kind and sampler steps from the serve config); an unknown name is a ValueError naming it."""
    from worldserve.common.config import Config
    from worldserve.dynamics.registry import load_model

    models = served_models(config)
    if name not in models:
        raise ValueError(f"unknown model {name!r}; the serve config serves {', '.join(models)}")
    return load_model(models[name], Config(), device)


def run(
    dynamics: Path = WEIGHTS / "dynamics",
    image: Path | None = WEIGHTS / "image",
    *,
    sessions: int = 32,
    prompts: int = 64,
    horizon: int = 32,
    threads: int = 1,
    json_out: Path | None = None,
    sample_steps: int = 0,
    device: str = "cpu",
    split: str = "test",
    model: str = "",
    baseline: str = "",
) -> dict[str, Any]:
    """Evaluate and print the table: the served model ``model`` (by name, as the serve config
    serves it), a ``baseline`` (:mod:`worldserve.train.baselines`) or else the folder ``dynamics``
    at ``sample_steps``; on ``split``'s worlds."""
    from rich.console import Console

    torch.set_num_threads(threads)
    check_eval_split(split)  # before anything loads
    t0 = time.monotonic()
    if baseline and baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; expected one of {', '.join(BASELINES)}")
    if baseline:
        dyn: Any = BASELINES[baseline]()
    elif model:
        dyn = load_served(model, device)
    else:
        dyn = load_dynamics(Path(dynamics), sample_steps, device)
    img = load_image(Path(image), device) if image is not None else None
    r = evaluate(dyn, img, sessions=sessions, prompts=prompts, horizon=horizon, split=split)
    if model or baseline:
        r["model"] = model or f"baseline: {baseline}"
    r["eval_seconds"] = time.monotonic() - t0
    import sys

    console = Console() if sys.stdout.isatty() else Console(width=150)
    console.print(table(r))
    ok = r["pass"]
    console.print(
        f"{sessions} sessions, {prompts if img is not None else 0} prompts, horizon {horizon}, "
        f"{r['sample_steps']} sampler steps; {r['model_step_calls']} step calls, {r['model_frames']} "
        f"session-frames; targets met {sum(ok.values())}/{len(ok)}; {r['eval_seconds']:.0f}s"
    )
    if json_out is not None:
        Path(json_out).write_text(json.dumps(r, indent=2) + "\n")
    return r


def command(
    dynamics: Path = typer.Option(
        WEIGHTS / "dynamics", help="Dynamics model folder (kind: config.json's kind, else world_model)."
    ),
    image: Path = typer.Option(
        WEIGHTS / "image", help="Image model folder (kind: config.json's kind, else tiny_text_to_image)."
    ),
    sessions: int = typer.Option(32, min=2, max=1024, help="Held-out worlds (sessions per rollout set)."),
    prompts: int = typer.Option(64, min=1, max=10000, help="Held-out captions for prompt -> image."),
    horizon: int = typer.Option(32, min=1, max=1024, help="Steps of the rollout PSNR curve (vs hold-the-first-frame)."),
    threads: int = typer.Option(1, min=1, max=256, help="torch CPU threads."),
    json_out: Path = typer.Option(None, "--json", help="Also write the figures as JSON here."),
    sample_steps: int = typer.Option(
        0, min=0, max=64, help="Sampler steps per frame (a serving tier); 0 = the model's."
    ),
    device: str = typer.Option("cpu", help="cpu, cuda or auto (models in their serving dtype: bf16 on CUDA)."),
    split: str = typer.Option(
        "test", help="Held-out worlds and captions: test (the reported figures) or val (for choosing checkpoints)."
    ),
    model: str = typer.Option(
        "", help="A served model by name (platformer, platformer-fast), loaded as the serve config serves it."
    ),
    baseline: str = typer.Option(
        "", help="Evaluate a baseline instead: still (the first frame forever) or dimming (plus a dimming per event)."
    ),
) -> None:
    """Print the fidelity table with its targets (same as python -m worldserve.train.evaluate)."""
    import sys

    from worldserve.common.registry import ModelLoadError

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        run(
            dynamics,
            image,
            sessions=sessions,
            prompts=prompts,
            horizon=horizon,
            threads=threads,
            json_out=json_out,
            sample_steps=sample_steps,
            device=device,
            split=split,
            model=model,
            baseline=baseline,
        )
    except (ValueError, FileNotFoundError, ModelLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(1) from None


def main() -> None:
    """``python -m worldserve.train.evaluate``: the ``evaluate`` command of ``python -m worldserve.train``."""
    app = typer.Typer(add_completion=False)
    app.command()(command)
    app(prog_name="python -m worldserve.train.evaluate")


if __name__ == "__main__":
    main()
