"""The fidelity table of :mod:`worldserve.train.evaluate`: each figure beside the game's (or a
reference) value and its target, marked pass/fail.
"""

from __future__ import annotations

from typing import Any

from .eval_figures import MEMORY_MOVE_PX, NOOP_STEPS, OBJECT_STEP, PSNR_STEPS, TARGETS, TRACK_PX, TRACK_STEPS, passed


def table(r: dict[str, Any]):
    """A rich table: figure, model, game/reference, target, pass mark."""
    from rich.table import Table

    split = r.get("split", "test")
    what = (
        "test split: reported" if split == "test" else "validation split: for choosing checkpoints, not for reporting"
    )
    t = Table(
        title=f"fidelity vs the platformer{' (' + r['model'] + ')' if r.get('model') else ''}: "
        f"{r.get('sessions', '?')} held-out worlds, {r.get('prompts', 0)} held-out captions ({what})"
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
            target = {"rollout_above_hold_all_steps": "yes", "resume_bitwise": "all"}.get(key, f"{op} {v:g}")
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
        f"3. {NOOP_STEPS} no-ops (every other world rains) vs the game's frames (dB)",
        "noop_psnr",
        f"hold first {num('noop_hold_psnr')}",
    )
    row("3. no-ops: above holding the first frame by (dB)", "noop_above_hold_db", "", fmt="{:+.2f}")
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
    row(
        f"7. memory: the model's view moved too ({r.get('memory_worlds', 0)} worlds moved >= {MEMORY_MOVE_PX} px and back)",
        "memory_view_moved",
        "game 1.00",
    )
    row(
        "7. memory: 8 right + 8 left, frame 16 vs the game's (dB)",
        "memory_psnr",
        f"game's 16 vs its 0: {num('memory_psnr_game')}",
    )
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
    row(
        "9. rain streaks drawn in frames after 'it starts to rain'",
        "event_rain_streaks",
        f"game {num('rain_streaks_game_rain')}",
    )
    row("9. rain streaks drawn in frames with no event", "event_dry_streaks", f"game {num('rain_streaks_game_dry')}")
    row(
        f"9. stars after 'night falls' ({num('stars_night_model', '{:.1f}')} per frame), over the game's",
        "event_night_stars_ratio",
        f"game {num('stars_night_game', '{:.1f}')} per frame",
    )
    row(
        f"10. resumed after a cache miss: frames bitwise the warm path's ({r.get('resume_frames', 0)} frames)",
        "resume_bitwise",
        "",
    )
    row("autoencoder PSNR, held-out frames (dB, info)", "ae_psnr")
    return t
