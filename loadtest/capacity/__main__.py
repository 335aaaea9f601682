"""``python -m loadtest.capacity``: measure and write docs/capacity.md + docs/capacity.json.

Run from the repository root (``PYTHONPATH=services:.`` where worldserve is not pip-installed)::

    python -m loadtest.capacity                       # every served model x 64x64, 360x640, 480x832, 720x1280
    python -m loadtest.capacity --quick               # tiny step counts (tests; not for planning)
    python -m loadtest.capacity --model platformer-fast --size 360x640 --out /tmp/cap.md
    python -m loadtest.capacity --gpu-figures engine_default.json   # the GPU check's measured efficiency

A bad value (unknown model, a size a model cannot run, an unreadable --gpu-figures) is one line
on stderr naming it, exit status 2, and nothing written. The two files are written to temporary
names and renamed at the end.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import typer
from redis.exceptions import RedisError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from loadtest.capacity import estimate as E
from loadtest.capacity.models import REPO, SIZES, CannotRun, CapacityError, parse_size

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0] if __doc__ else None)
err = Console(stderr=True)


def _fail(msg: str) -> typer.Exit:
    typer.echo(f"error: {msg}", err=True)
    return typer.Exit(2)


def _write_atomically(files: dict[Path, str]) -> None:
    """Every file to a temporary name in its folder first, then the renames."""
    tmps: list[tuple[str, Path]] = []
    try:
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            tmps.append((tmp, path))
        for tmp, path in tmps:
            os.replace(tmp, path)
        tmps = []
    finally:
        for tmp, _ in tmps:
            Path(tmp).unlink(missing_ok=True)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def plan(
    models: list[str], sizes: list[str], dit: bool = True
) -> tuple[Any, list[Any], list[tuple[str, tuple[int, int]]]]:
    """(the served Config, the chosen served models, the chosen (label, (H, W)) sizes); CapacityError
    naming the bad value: an unknown model, a malformed size, a model and size named together that
    cannot run (in a full table such a pair is a "cannot run: <why>" cell instead)."""
    from loadtest.capacity.models import DIT_NAME, config_at, dit_model, served_config, served_models

    config = served_config()
    served = {m.name: m for m in served_models(config)}
    if dit or DIT_NAME in models:
        served[DIT_NAME] = dit_model()
    for name in models:
        if name not in served:
            raise CapacityError(f"--model {name!r}: unknown model; served: {', '.join(served)}")
    chosen = [served[n] for n in dict.fromkeys(models or list(served))]
    size_list = list({label: (label, hw) for label, hw in (parse_size(s) for s in (sizes or list(SIZES)))}.values())
    if models and sizes:
        for m in chosen:
            for label, hw in size_list:
                try:
                    config_at(m, hw)
                except CannotRun as e:
                    raise CapacityError(f"--size {label}: model {m.name!r} cannot run at {label}: {e}") from None
    return config, chosen, size_list


def run(
    models: list[str],
    sizes: list[str],
    *,
    quick: bool,
    dit: bool = True,
    redis_url: str,
    gpu: E.GpuFigures,
    efficiency: float,
    usd_per_h: float,
    cpu_budget_s: float,
    cpu_sessions: int,
    cpu_limit_s: float,
    progress: Progress,
) -> dict[str, Any]:
    """Every model x size row (progress on ``progress``). Raises CapacityError on a bad value
    before anything runs."""
    import torch

    from loadtest.capacity.cpu import measure_cpu
    from loadtest.capacity.flops import step_flops, transformer_prefill_flops
    from loadtest.capacity.models import build, config_at, game_frames, step_payload
    from loadtest.capacity.redis_bytes import measure as measure_redis

    load0 = list(os.getloadavg())
    config, chosen, size_list = plan(models, sizes, dit)
    chunk, window_steps = (4, 4) if quick else (config.archive_chunk_steps, config.hot_window_steps)
    rows: list[dict[str, Any]] = []
    cpu_rate: dict[str, float] = {}  # FLOP/s the CPU reached on each model at its smallest size
    task = progress.add_task("capacity", total=len(chosen) * len(size_list))
    for m in chosen:
        for label, hw in sorted(size_list, key=lambda s: s[1][0] * s[1][1]):
            progress.update(task, description=f"{m.name} {label}")
            row: dict[str, Any] = dict(model=m.name, kind=m.kind, tier=m.tier, size=label, height=hw[0], width=hw[1])
            rows.append(row)
            try:
                cfg = config_at(m, hw)
            except CannotRun as e:
                row["cannot_run"] = str(e)
                progress.advance(task)
                continue
            if m.kind == "causal_dit":
                row.update(dit_row(cfg, hw))
                E.derive(row, efficiency=efficiency, gpu=gpu, usd_per_h=usd_per_h)
                progress.advance(task)
                continue
            model, trained = build(m, hw)
            info = model.info
            row.update(trained_weights=trained, context_frames=info.context_frames, sample_steps=info.sample_steps)
            fl = step_flops(m.kind, cfg, **({"sample_steps": info.sample_steps} if m.kind == "world_model" else {}))
            row["flops"], row["flops_per_step"] = fl.as_dict(), fl.total
            frames = game_frames(info.context_frames + 1, hw)
            # first round of a CPU measurement: the prefill, then a few rounds of steps
            prefill = transformer_prefill_flops(cfg, info.context_frames - 1) if m.kind == "world_model" else fl.total
            rate = cpu_rate.get(m.name)
            predicted = None if rate is None else (prefill + 4 * cpu_sessions * fl.total) / rate
            if predicted is None or predicted <= cpu_limit_s:
                row.update(
                    measure_cpu(
                        model,
                        frames,
                        spec=m.spec,
                        sessions=cpu_sessions,
                        budget_s=cpu_budget_s,
                        max_batch=config.max_batch_size,
                    )
                )
                row["steps_per_s_cpu_estimate"] = False
                cpu_rate.setdefault(m.name, row["steps_per_s_cpu"] * fl.total)
                run_step = True
            else:
                assert rate is not None
                from loadtest.capacity.models import state_bytes

                row.update(
                    steps_per_s_cpu=rate / fl.total,
                    steps_per_s_cpu_estimate=True,
                    cpu_sessions=0,
                    cpu_note=f"~{predicted:.0f} s to measure; {rate / 1e9:.1f} GFLOP/s as at its smallest size",
                    state_bytes_per_session=state_bytes(model, frames)
                    if m.kind != "world_model"
                    else int(info.extra["page_bytes"]) * info.context_frames,
                )
                run_step = False
            payload = step_payload(model, trained, frames, run_step)
            row["payload"] = payload.as_dict()
            row.update(
                measure_redis(
                    redis_url,
                    payload,
                    model=m.name,
                    hw=hw,
                    context_frames=info.context_frames,
                    chunk_steps=chunk,
                    hot_window=window_steps,
                    rid_keep=config.archive_rid_keep_steps,
                )
            )
            E.derive(row, efficiency=efficiency, gpu=gpu, usd_per_h=usd_per_h)
            del model
            progress.advance(task)
    order = {lbl: i for i, (lbl, _) in enumerate(size_list)}
    rows.sort(key=lambda r: ([m.name for m in chosen].index(r["model"]), order[r["size"]]))
    return dict(
        rows=rows,
        meta=dict(
            quick=quick,
            chunk_steps=chunk,
            hot_window=window_steps,
            rid_keep=config.archive_rid_keep_steps,
            efficiency=efficiency,
            efficiency_source=gpu.source if gpu.efficiency is not None else "ASSUMED, not measured",
            usd_per_gpu_hour=usd_per_h,
            h200_peak_bf16_flops=E.H200_PEAK_BF16,
            decart_usd_per_simulated_s=E.DECART_USD_PER_SIM_S,
            cpu=_cpu_name(),
            torch_threads=torch.get_num_threads(),
            load_average_at_start=load0,
            load_average_at_end=list(os.getloadavg()),
        ),
    )


def dit_row(cfg: Any, hw: tuple[int, int]) -> dict[str, Any]:
    """The causal DiT's figures at ``hw``: FLOPs per pixel frame (transformer counted from its
    config, VAE by FlopCounterMode on meta tensors) and its session state from declared shapes."""
    from loadtest.capacity.flops import causal_dit_frame_flops
    from loadtest.dit_bench_common import pixel_frames_per_chunk, session_bytes, vae_facts, wan21_vae_config

    config, options = cfg
    tokens = (hw[0] // 8 // config.patch_size[1]) * (hw[1] // 8 // config.patch_size[2])
    vae = vae_facts(wan21_vae_config(), options)
    fl = causal_dit_frame_flops(config, options, tokens, text=True, vae_flops=vae["flops"])
    state = session_bytes(config, options, tokens, 2, vae["cache_bytes"])
    frames = pixel_frames_per_chunk(options, 4)
    kv_step = options.chunk_frames * state["page_bytes"]
    latent_step = 16 * options.chunk_frames * options.latent_height * options.latent_width * 4
    from loadtest.capacity.doc import _b

    why = (
        f"not measured (not served by default, never ran here); declared shapes: one step, a chunk of {frames} "
        f"frames, carries {_b(latent_step)} of latents and resume data of {_b(kv_step)} of KV (bf16) + "
        f"{_b(vae['cache_bytes'])} of VAE decode cache"
    )
    return dict(
        flops=fl.as_dict(),
        flops_per_step=fl.total,
        frames_per_step=1,
        chunk_pixel_frames=frames,
        steps_per_s_cpu=None,
        steps_per_s_cpu_estimate=True,
        cpu_sessions=0,
        cpu_note="not measured: 1.4e9 parameters; the GPU check's part 5 (loadtest/dit_bench.py) measures it",
        state_bytes_per_session=state["total"],
        state_bytes=state,
        declared_bytes_per_step=dict(latent=latent_step, resume_kv=kv_step, resume_vae_cache=vae["cache_bytes"]),
        redis_not_measured=why,
    )


@app.command()
def main(
    model: list[str] = typer.Option([], "--model", help="a served model (repeatable; default: every served model)"),
    size: list[str] = typer.Option(
        [], "--size", help="HEIGHTxWIDTH, e.g. 360x640 or 720p (repeatable; default: 4 sizes)"
    ),
    quick: bool = typer.Option(False, "--quick", help="tiny step counts (tests); not for planning"),
    out: Path = typer.Option(REPO / "docs" / "capacity.md", "--out", help="the table (markdown)"),
    json_out: Path | None = typer.Option(None, "--json", help="the raw figures (default: --out with .json)"),
    redis_url: str = typer.Option("", "--redis-url", help="a Redis to measure on (default: a private redis-server)"),
    gpu_figures: Path | None = typer.Option(None, "--gpu-figures", help="a GPU check's JSON (measured efficiency)"),
    efficiency: float = typer.Option(E.DEFAULT_EFFICIENCY, "--efficiency", help="assumed fraction of H200 peak"),
    gpu_price: float = typer.Option(E.DEFAULT_GPU_USD_PER_H, "--gpu-price", help="USD per H200-hour"),
    threads: int = typer.Option(0, "--threads", help="torch CPU threads (default: torch's)"),
    dit: bool = typer.Option(
        True, "--dit/--no-dit", help="also the causal DiT at Wan2.1-T2V-1.3B size (FLOPs, declared state)"
    ),
) -> None:
    """Measure and write the capacity table."""
    t0 = time.perf_counter()
    if not 0 < efficiency <= 1:
        raise _fail(f"--efficiency {efficiency!r}: expected a fraction in (0, 1]")
    if not gpu_price > 0:
        raise _fail(f"--gpu-price {gpu_price!r}: expected a positive price")
    gpu = E.GpuFigures()
    if gpu_figures is not None:
        try:
            gpu = E.read_gpu_figures(gpu_figures)
        except ValueError as e:
            raise _fail(str(e)) from None
        if gpu.efficiency is not None:
            efficiency = gpu.efficiency
    try:
        plan(model, size, dit)
    except CapacityError as e:
        raise _fail(str(e)) from None
    import torch

    if threads:
        torch.set_num_threads(threads)
    srv = None
    try:
        if not redis_url:
            from worldserve.common.redis_server import EmbeddedRedis

            srv = EmbeddedRedis(tempfile.mkdtemp(prefix="capacity-redis-"), extra_args=("--appendonly", "no")).start()
            redis_url = srv.url
        import redis

        with redis.Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=5) as r:
            r.ping()  # before any measurement: an unreachable Redis is one line, at once
        with Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=err,
        ) as progress:
            result = run(
                model,
                size,
                quick=quick,
                dit=dit,
                redis_url=redis_url,
                gpu=gpu,
                efficiency=efficiency,
                usd_per_h=gpu_price,
                cpu_budget_s=0.3 if quick else 8.0,
                cpu_sessions=1 if quick else 4,
                cpu_limit_s=5.0 if quick else 60.0,
                progress=progress,
            )
    except CapacityError as e:
        raise _fail(str(e)) from None
    except (RedisError, OSError) as e:  # the Redis to measure on (or its server) is not there
        raise _fail(f"--redis-url {redis_url!r}: {type(e).__name__}: {e}") from None
    finally:
        if srv is not None:
            srv.stop()
    from loadtest.capacity.doc import render

    result["meta"].update(
        redis="a private redis-server, AOF off" if srv is not None else "--redis-url",
        generated_at=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        run_s=time.perf_counter() - t0,
    )
    json_path = json_out or out.with_suffix(".json")
    _write_atomically({out: render(result), json_path: json.dumps(result, indent=1, default=str) + "\n"})
    typer.echo(f"wrote {out} and {json_path} ({result['meta']['run_s']:.0f} s)")


if __name__ == "__main__":
    app()
