"""The fidelity table of :mod:`worldserve.train.evaluate`: each figure beside the game's (or a
reference) value and its target, marked pass/fail.
"""

from __future__ import annotations

from typing import Any

from .eval_figures import NOOP_STEPS, OBJECT_STEP, PSNR_STEPS, TARGETS, TRACK_PX, TRACK_STEPS, passed


def table(r: dict[str, Any]):
    """A rich table: figure, model, game/reference, target, pass mark."""
    from rich.table import Table

    t = Table(
        title=f"fidelity vs the platformer: {r.get('sessions', '?')} held-out worlds, "
        f"{r.get('prompts', 0)} held-out captions"
    )
    t.add_column("figure", no_wrap=True)
    t.add_column("model", justify="right")
    t.add_column("game / reference", justify="right")
    t.add_column("target", justify="right")
    t.add_column("", justify="center")
    ok = passed(r)

    def num(key: str, fmt: str = "{:.2f}") -> str:
        v = r.get(key)
        if v is None:
            return "n/a"
        return fmt.format(v)

    def row(name: str, key: str, ref: str = "", fmt: str = "{:.2f}") -> None:
        if key not in r:
            return
        target = ""
        if key in TARGETS:
            op, v = TARGETS[key]
            target = {
                "rollout_above_hold_all_steps": "yes",
                "deterministic_dynamics": "yes",
                "deterministic_image": "yes",
            }.get(key, f"{op} {v:g}")
        mark = "" if key not in ok else ("[green]pass[/]" if ok[key] else "[red]FAIL[/]")
        t.add_row(name, fmt.format(r[key]) if fmt != "yes" else ("yes" if r[key] >= 1 else "no"), ref, target, mark)

    for s in TRACK_STEPS:
        row(
            f"1. player within {TRACK_PX} px (Chebyshev) at step {s}",
            f"player_within4_step{s}",
            f"game {num('player_exact_game')} (exact)",
        )
    row(
        f"2. player within {TRACK_PX} px while airborne ({r.get('player_airborne_frames', 0)} frames)",
        "player_airborne_within4",
        f"game {num('player_airborne_within4_game')}",
    )
    row(
        f"3. {NOOP_STEPS} no-ops, dry worlds: PSNR of frame {NOOP_STEPS} (dB)",
        "noop24_psnr",
        f"game {num('noop24_psnr_game', '{:.0f}')}",
    )
    row(
        f"4. first-view objects in place at step {OBJECT_STEP} ({r.get('objects_in_place_count', 0)} shown)",
        "objects_in_place_step16",
        f"game {num('objects_in_place_step16_game')}",
    )
    for s in PSNR_STEPS:
        row(f"5. rollout PSNR at step {s} (dB)", f"rollout_psnr_{s}", f"hold first {num(f'hold_first_psnr_{s}')}")
    row(
        f"5. rollout PSNR above hold-first at every step 1..{r.get('horizon', '?')}",
        "rollout_above_hold_all_steps",
        "",
        fmt="yes",
    )
    row(
        "6. controllability delta-PSNR at step 8 (dB)",
        "control_delta_psnr_8",
        f"true {num('control_psnr_true_8')} / other's {num('control_psnr_shuffled_8')}",
        fmt="{:+.2f}",
    )
    row("6. controllability delta-PSNR, mean steps 1-8 (dB)", "control_delta_psnr_mean_1_8", "", fmt="{:+.2f}")
    row("7. memory: 8 right + 8 left, frame 16 vs frame 0 (dB)", "memory_psnr", f"game {num('memory_psnr_game')}")
    row(
        "8. prompt: described objects (colour, kind, side)",
        "prompt_objects_found",
        f"game {num('prompt_objects_found_game')}",
    )
    row(
        "8. prompt: frames with all objects right",
        "prompt_frames_all_found",
        f"game {num('prompt_frames_all_found_game')}",
    )
    for name, text in (("night", "night falls"), ("rain", "it starts to rain")):
        if f"event_{name}_brightness_model" in r:
            key = f"event_{name}_brightness_error"
            mark = "[green]pass[/]" if ok.get(key) else "[red]FAIL[/]"
            t.add_row(
                f"9. '{text}': brightness vs none (|model - game| <= 0.1)",
                num(f"event_{name}_brightness_model"),
                f"game {num(f'event_{name}_brightness_game')}",
                f"± {TARGETS[key][1]:g}",
                mark,
            )
    if "rain_streaks_model" in r:
        det_ok = r["rain_streaks_game_rain"] == 1.0 and r["rain_streaks_game_dry"] == 0.0
        t.add_row(
            "9. rain drawn as streaks (frames after the event)",
            num("rain_streaks_model"),
            f"game rain {num('rain_streaks_game_rain')} / dry {num('rain_streaks_game_dry')}",
            "",
            "detector ok" if det_ok else "[red]detector![/]",
        )
        t.add_row(
            "9. stars per frame after 'night falls' (info)",
            num("stars_night_model", "{:.1f}"),
            f"game {num('stars_night_game', '{:.1f}')}",
            "",
            "",
        )
    row("10. determinism: rollout replay identical", "deterministic_dynamics", "", fmt="yes")
    row("10. determinism: image regenerated identical", "deterministic_image", "", fmt="yes")
    row("autoencoder PSNR, held-out frames (dB, info)", "ae_psnr")
    return t
