"""`python -m loadtest.fleet measure | validate | run`.

- ``measure``: batch size -> model seconds of the served model, in process on this CPU (JSON);
- ``validate --measured out/.../live/report.json``: simulate the `live` scenario that run played,
  print measured and simulated figures and the relative errors (``--out`` keeps them as JSON);
- ``run``: the fleet day (10,000 live sessions at 24 fps + 100,000 evaluation environments on N
  GPU replicas, a day-shaped curve), the GPUs that hold a 1% miss SLO, docs/fleet.md with plots.

Bad inputs (an unknown model, an impossible frame size, a malformed curve, a report that is not a
live report) end in one line naming the value, exit 2, nothing written.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from loadtest.fleet.service import FleetError, ServiceModel, capacity_ratio, load_service, write_atomic

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])
console = Console()
DEFAULT_CAPACITY = Path("docs/capacity.json")


def _fail(e: Exception) -> None:
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(2)


def parse_frame(text: str | None) -> tuple[int, int] | None:
    """ "HxW" -> (H, W); None passes through."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise FleetError(f"--frame {text!r}: expected HEIGHTxWIDTH, e.g. 64x64")
    h, w = int(m.group(1)), int(m.group(2))
    if not (8 <= h <= 4096 and 8 <= w <= 4096):
        raise FleetError(f"--frame {text!r}: each side must be in [8, 4096] pixels")
    return h, w


def _known_models() -> list[str]:
    from worldserve.common.config import Config

    return [m.name for m in Config.load({"device": "cpu"}).models]


def _check_model(model: str) -> None:
    names = _known_models()
    if model not in names:
        raise FleetError(f"--model {model!r}: not a served model (served: {', '.join(names)})")


@app.command()
def measure(
    model: str = typer.Option("platformer", help="served model name"),
    sizes: str = typer.Option("1,2,4,8,16", help="batch sizes"),
    budget_s: float = typer.Option(3.0, help="seconds of steady batches per size"),
    frame: str | None = typer.Option(None, help="HxW the model must make (checked)"),
    out: Path = typer.Option(Path("out/fleet/service.json")),
) -> None:
    """Batch size -> model seconds on this CPU, the served model driven as a replica drives it."""
    try:
        _check_model(model)
        fr = parse_frame(frame)
        try:
            bs = sorted({int(x) for x in sizes.split(",") if x.strip()})
        except ValueError:
            raise FleetError(f"--sizes {sizes!r}: expected comma-separated batch sizes") from None
        if not bs or bs[0] < 1 or bs[-1] > 1024:
            raise FleetError(f"--sizes {sizes!r}: batch sizes must be in [1, 1024]")
        from loadtest.fleet.service import measure as do_measure

        sm = do_measure(model, bs, budget_s, fr)
    except FleetError as e:
        _fail(e)
    write_atomic(out, json.dumps(sm.to_json(), indent=1))
    console.print({b: round(s * 1000, 2) for b, s in sm.batch_s.items()}, "ms per batch ->", str(out))


@app.command()
def validate(
    measured: Path = typer.Option(..., help="report.json of `python -m loadtest.run live`"),
    hop_ms: float = typer.Option(5.0, help="one hop gateway <-> model replica (estimate), each way"),
    deliver_ms: float = typer.Option(5.0, help="gateway -> player, JPEG and WebSocket (estimate)"),
    startup_s: float = typer.Option(8.0, help="seconds from a scale-up decision to a running replica"),
    seeds: int = typer.Option(20, help="simulations pooled"),
    follow_replicas: bool = typer.Option(
        False, help="model replicas follow the run's own samples (else the simulated policy decides)"
    ),
    out: Path | None = typer.Option(None, help="also write the comparison here (JSON)"),
    label: str | None = typer.Option(None, help="the run's name in the report"),
) -> None:
    """Simulate the live scenario a real run played and compare (relative errors)."""
    from loadtest.fleet.validate import compare, load_measured, simulate

    try:
        if seeds < 1 or seeds > 100:
            raise FleetError(f"--seeds {seeds}: expected 1..100")
        m = load_measured(measured)
        t0 = time.perf_counter()
        sim, facts = simulate(
            m,
            hop_s=hop_ms / 1000,
            deliver_s=deliver_ms / 1000,
            startup_s=startup_s,
            seeds=seeds,
            follow_replicas=follow_replicas,
        )
        took = time.perf_counter() - t0
    except FleetError as e:
        _fail(e)
    rows = compare(m, sim)
    table = Table(
        title=f"live: {m.players} players at {m.fps:g} fps, {m.duration_s:.0f} s ({measured}); replicas: {sim['replicas']}"
    )
    for col in ("figure", "measured", "simulated", "difference", "relative error"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["figure"],
            f"{r['measured']:.4g}",
            f"{r['simulated']:.4g}",
            f"{r['abs_diff']:+.3g}",
            f"{100 * r['rel_error']:.1f}%",
        )
    console.print(table)
    console.print(
        "service times from the run's replicas: "
        + ", ".join(f"{k} {v:.4g}" for k, v in facts.items())
        + f"; simulated in {took:.1f} s"
    )
    if out is not None:
        doc = {
            "label": label or measured.parent.parent.name,
            "measured_report": str(measured),
            "players": m.players,
            "fps": m.fps,
            "duration_s": m.duration_s,
            "rows": rows,
            "service": facts,
            "simulated": sim,
            "args": {
                "hop_ms": hop_ms,
                "deliver_ms": deliver_ms,
                "startup_s": startup_s,
                "seeds": seeds,
                "follow_replicas": follow_replicas,
            },
        }
        write_atomic(out, json.dumps(doc, indent=1, default=float))
        console.print(f"wrote {out}")


@app.command()
def run(
    model: str = typer.Option("platformer", help="served model name"),
    service: Path | None = typer.Option(None, help="`measure` output (else measured now)"),
    capacity: Path | None = typer.Option(None, help="capacity table (default docs/capacity.json if present)"),
    gpu_speedup: float | None = typer.Option(None, help="H200 steps/s over this CPU's (overrides --capacity)"),
    frame: str | None = typer.Option(None, help="HxW of the model's frames (checked)"),
    curve: Path | None = typer.Option(None, help="JSON/YAML (hour, fraction) points; default: a built-in day"),
    sessions: int = typer.Option(10_000, help="live sessions at the peak"),
    fps: float = typer.Option(24.0, help="live fps"),
    eval_envs: int = typer.Option(100_000, help="evaluation environments (StepBatch, no deadline)"),
    eval_batch: int = typer.Option(256, help="environments per StepBatch call"),
    slo: float = typer.Option(0.01, help="day deadline-miss ratio to hold"),
    gpus_max: int = typer.Option(4096, help="upper end of the GPU search"),
    gpus: int | None = typer.Option(None, help="simulate this many GPUs only (no search)"),
    startup_s: float = typer.Option(60.0, help="seconds for a new GPU replica to serve (estimate)"),
    interactive_batch_s: float = typer.Option(0.1, help="the engine's batch cut while players wait (config)"),
    max_batch_size: int = typer.Option(32, help="the engine's max_batch_size (config)"),
    policy_miss_ratio: float = typer.Option(0.1, help="DeadlineAwarePolicy miss_ratio (policy_kwargs)"),
    autoscale: bool = typer.Option(True, help="--no-autoscale: every GPU serves all day"),
    eval_think_ms: float = typer.Option(50.0, help="an evaluation client's time between StepBatch calls"),
    baseline: list[Path] = typer.Option([], help="earlier runs' --out JSON to show beside this one"),
    validation: list[Path] = typer.Option([], help="`validate --out` files to put in the report"),
    report: Path = typer.Option(Path("docs/fleet.md"), help="the markdown report (plots beside it)"),
    out: Path = typer.Option(Path("out/fleet/fleet.json"), help="the figures as JSON"),
) -> None:
    """The fleet day and the GPUs that hold the SLO; writes the report and its plots."""
    from loadtest.fleet.curve import load_curve
    from loadtest.fleet.day import Fleet, FleetParams

    try:
        _check_model(model)
        fr = parse_frame(frame)
        lc = load_curve(curve)
        for name, v, lo in (
            ("--sessions", sessions, 0),
            ("--eval-envs", eval_envs, 0),
            ("--eval-batch", eval_batch, 1),
        ):
            if v < lo:
                raise FleetError(f"{name} {v}: expected at least {lo}")
        if not (0 < fps <= 120):
            raise FleetError(f"--fps {fps}: expected (0, 120]")
        if not (0 < slo < 1):
            raise FleetError(f"--slo {slo}: expected a share in (0, 1)")
        vals = [json.loads(p.read_text()) for p in validation] if validation else []
        base = [json.loads(p.read_text()) for p in baseline]
        if not (0.005 <= interactive_batch_s <= 10):
            raise FleetError(f"--interactive-batch-s {interactive_batch_s}: expected 0.005 .. 10 (the config's bounds)")
        if not (1 <= max_batch_size <= 1024):
            raise FleetError(f"--max-batch-size {max_batch_size}: expected 1 .. 1024")
        if not (0 < policy_miss_ratio < 1):
            raise FleetError(f"--policy-miss-ratio {policy_miss_ratio}: expected a share in (0, 1)")
        if eval_think_ms < 0:
            raise FleetError(f"--eval-think-ms {eval_think_ms}: expected >= 0")
        cap_path = capacity if capacity is not None else (DEFAULT_CAPACITY if DEFAULT_CAPACITY.exists() else None)
        if gpu_speedup is None and cap_path is None:
            raise FleetError("no GPU scaling: pass --capacity FILE (loadtest.capacity's table) or --gpu-speedup X")
        if gpu_speedup is None and cap_path is not None:  # a bad table or size fails before any measuring
            capacity_ratio(cap_path, model, fr)
        if service is not None:
            sm = load_service(service)
            if sm.model != model:
                raise FleetError(f"--service {service}: measured model {sm.model!r}, not --model {model!r}")
        else:
            from loadtest.fleet.service import measure as do_measure

            sm = do_measure(model, [1, 2, 4, 8, 16], 3.0, fr)
        if gpu_speedup is not None and fr is not None and sm.frame != (0, 0) and fr != sm.frame:
            raise FleetError(f"--frame {frame}: model {model!r} makes {sm.frame[0]}x{sm.frame[1]} frames here")
        cap_entry: dict = {}
        estimated = True
        if gpu_speedup is not None:
            if not gpu_speedup > 0:
                raise FleetError(f"--gpu-speedup {gpu_speedup}: expected a positive ratio")
            ratio, how = gpu_speedup, f"--gpu-speedup {gpu_speedup:g} (given)"
        elif cap_path is not None:
            table_ratio, cap_entry, estimated = capacity_ratio(cap_path, model, fr or sm.frame)
            # the table's H200 steps/s is a throughput: a batch of b takes b / steps_per_s_h200 (no
            # batching gain assumed beyond it; this CPU's curve is batch-invariant, one call a session)
            h200 = float(cap_entry["steps_per_s_h200"])
            ratio = h200 * sm.batch_time(1)
            how = (
                f"{cap_path} row {cap_entry['key']} ({h200:,.0f} steps/s on an H200, "
                f"{float(cap_entry['steps_per_s_cpu']):.3g} on its CPU: x{table_ratio:,.0f})"
            )
        else:
            raise FleetError("no GPU scaling: pass --capacity FILE (loadtest.capacity's table) or --gpu-speedup X")
        if cap_entry:
            gpu = ServiceModel(model, {1: 1 / h200, 1024: 1024 / h200}, sm.frame, 1.0, how)
        else:
            gpu = sm.scaled(ratio, how)
        params = FleetParams(
            sessions=sessions,
            fps=fps,
            eval_envs=eval_envs,
            eval_batch=eval_batch,
            startup_s=startup_s,
            interactive_batch_s=interactive_batch_s,
            max_batch_size=max_batch_size,
            miss_ratio_policy=policy_miss_ratio,
            autoscale=autoscale,
            eval_think_s=eval_think_ms / 1000,
            redis_ops_per_step=float(cap_entry.get("redis_ops_per_step", 2.0)),
            archive_bytes_per_step=float(
                cap_entry.get("archive_bytes_per_step", sm.extra.get("archive_bytes_per_step_estimate", 0.0))
            ),
        )
    except (FleetError, OSError, json.JSONDecodeError) as e:
        _fail(e if isinstance(e, FleetError) else FleetError(str(e)))
    fleet = Fleet(gpu, lc, params)
    t0 = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console) as prog:
        task = prog.add_task("simulating days", total=None)

        def tick(i: int, n: int) -> None:
            prog.update(task, completed=i, total=n)

        if gpus is not None:
            best, runs = None, {gpus: fleet.day(gpus, tick)}
        else:
            best, runs = fleet.search(slo, 1, gpus_max, tick)
    took = time.perf_counter() - t0
    shown = runs[best] if best is not None else runs[max(runs)]
    figures = {
        "model": model,
        "frame": "x".join(
            str(x) for x in ((cap_entry.get("height"), cap_entry.get("width")) if cap_entry else sm.frame)
        ),
        "gpu_scaling": {"ratio": ratio, "source": how, "estimated": estimated},
        "service_cpu_batch_s": {str(b): s for b, s in sm.batch_s.items()},
        "params": params.__dict__,
        "slo": slo,
        "gpus_for_slo": best,
        "searched": {
            str(n): {
                "day_miss_ratio": r.day_miss_ratio,
                "worst_5min_miss_ratio": r.peak_hour_miss_ratio,
                "k2f_p99_ms": 1000 * r.k2f_percentile(99),
                "replicas_peak": max(r.replicas),
                "replicas_min": min(r.replicas),
            }
            for n, r in sorted(runs.items())
        },
        "shown_gpus": shown.gpus,
        "k2f_p50_ms": 1000 * shown.k2f_percentile(50),
        "k2f_p99_ms": 1000 * shown.k2f_percentile(99),
        "redis_ops_s_peak": max(shown.redis_ops_s),
        "archive_bytes_s_peak": max(shown.archive_bytes_s),
        "eval_steps_s_mean": sum(shown.eval_steps_s) / len(shown.eval_steps_s),
        "micro_runs": fleet.micro_runs,
        "seconds": took,
        "command": " ".join(["python -m loadtest.fleet"] + sys.argv[1:]),
        "days": len(runs),
        "curve": [list(pt) for pt in lc.points],
        "day": dataclasses.asdict(shown),
    }
    write_atomic(out, json.dumps(figures, indent=1, default=float))
    _render(figures, vals, base, report)
    console.print(
        f"GPUs for a {100 * slo:g}% miss SLO: {best if best is not None else f'more than {gpus_max}'}; "
        f"day miss ratio {shown.day_miss_ratio:.4f} on {shown.gpus}; key-to-frame p99 {figures['k2f_p99_ms']:.0f} ms; "
        f"{took:.0f} s"
    )


def _render(figures: dict, vals: list[dict], base: list[dict], report: Path) -> None:
    from loadtest.fleet.curve import parse_curve
    from loadtest.fleet.day import DayResult
    from loadtest.fleet.report import plots, write_report
    from loadtest.fleet.text import report_text

    images = plots(DayResult(**figures["day"]))
    text = report_text(figures, vals, parse_curve(figures["curve"]), report.stem, base)
    for p in write_report(report, text, images):
        console.print(f"wrote {p}")


@app.command("report")
def report_cmd(
    fleet: Path = typer.Option(Path("out/fleet/fleet.json"), help="a `run --out` file"),
    validation: list[Path] = typer.Option([], help="`validate --out` files to put in the report"),
    baseline: list[Path] = typer.Option([], help="earlier runs' --out JSON to show beside it"),
    report: Path = typer.Option(Path("docs/fleet.md"), help="the markdown report (plots beside it)"),
) -> None:
    """Write the report and plots again from a run's figures (no simulation)."""
    try:
        figures = json.loads(fleet.read_text())
        if not isinstance(figures, dict) or "day" not in figures:
            raise FleetError(f"--fleet {fleet}: not a `run --out` file of this version (no day series)")
        vals = [json.loads(p.read_text()) for p in validation]
        base = [json.loads(p.read_text()) for p in baseline]
    except (OSError, json.JSONDecodeError) as e:
        _fail(FleetError(f"{type(e).__name__}: {e}"))
    except FleetError as e:
        _fail(e)
    _render(figures, vals, base, report)


def main() -> None:
    app()
