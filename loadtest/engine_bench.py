"""Engine throughput and kernel correctness of one dynamics replica, in process, without Redis or Ray.

Run from the repository root (``PYTHONPATH=services`` where worldserve is not pip-installed)::

    python -m loadtest.engine_bench                          # the served default model, 1/8/32/128 sessions
    python -m loadtest.engine_bench --large                  # a ~460M-parameter random model of the same architecture
    python -m loadtest.engine_bench --device cpu --quick     # tiny sizes, a few seconds (the CPU smoke test)
    python -m loadtest.engine_bench --kernel-check           # Triton decode/prefill kernels vs SDPA only

Engine part: the scheduler (``Scheduler``), the state cache (``StateCache``) and the runner
(``Runner`` + ``Job``) of :mod:`worldserve.dynamics` are driven exactly as ``Engine`` drives them
in a replica (cache lookup -> submit -> ``take_batch`` -> ``Runner.run`` -> ``cache.put``), minus
Redis: every session starts with a full latent window (``context_frames - 1`` frames, the engine's
cache-miss window) and is then stepped round after round. Reported per session count: model
batches per second, frames per second, the p50 latency of one batch, and beside each the FLOP-count
bound: FLOPs of one frame (``step`` + ``decode`` at batch 1, attention forced to SDPA, counted by
``torch.utils.flop_counter.FlopCounterMode``) against the device's peak dense bf16 FLOP/s.

Each session's state bytes are computed before a run; a run whose states do not fit in memory is
reported as "does not fit (needs X GiB)" instead of being attempted.

Only the declared model interface (:class:`worldserve.dynamics.interface.DynamicsModelProtocol`) is used,
plus ``configure_state_pool`` where the model has it. It needs torch, numpy, pillow, grpcio and
safetensors (a GPU image has them; not Ray, Redis or protobuf): a part whose imports fail is
reported SKIPPED with the missing packages named.

The parts: :mod:`loadtest.engine_bench_common` (device facts, configurations, missing packages),
:mod:`loadtest.engine_bench_kernels` (part 1) and :mod:`loadtest.engine_bench_sessions` (one run
of part 3); this module chooses the runs, reports them and is the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

from loadtest.engine_bench_common import GIB, device_memory_available, log, missing_packages, peak_flops
from loadtest.engine_bench_kernels import kernel_check
from loadtest.engine_bench_sessions import (
    _configure_pool,
    _window,
    bench_sessions,
    engine_parts,
    flops_per_frame,
    load_default_model,
    load_large_model,
    session_state_bytes,
)


def _row(r: dict, bound_fps: float) -> str:
    n = r["sessions"]
    mode = "invariant" if r["batch_invariant"] else "batched"
    head = f"  {n:4d} sessions  {mode:9s}"
    if not r.get("fits", True):
        return f"{head}  {r['reason']}"
    if "error" in r:
        return f"{head}  FAILED: {r['error']}"
    bound_bps = bound_fps / r["mean_batch_size"]
    return (
        f"{head}  batches/s {r['batches_per_s']:8.2f} (bound {bound_bps:9.1f}, {100 * r['batches_per_s'] / bound_bps:5.1f}%)"
        f"  frames/s {r['frames_per_s']:9.1f} (bound {bound_fps:9.1f}, {100 * r['frames_per_s'] / bound_fps:5.1f}%)"
        f"  p50 batch {r['p50_batch_ms']:8.2f} ms (bound {1e3 * r['mean_batch_size'] / bound_fps:8.3f} ms)"
        f"  batch {r['mean_batch_size']:.0f}  model calls/s {r['model_calls_per_s']:.1f}"
        + f"  first round (prefill + compile) {r['first_round_s']:.1f} s"
        + (f"  peak mem {r['peak_mem_gib']:.1f} GiB" if "peak_mem_gib" in r else "")
        + (f"  evictions {r['evictions']}" if r.get("evictions") else "")
    )


def engine_bench(args, device: str) -> tuple[bool, dict]:
    """Part 3 (+ part 4: which attention backend / kernel served the steps)."""
    import torch

    parts = engine_parts()
    log(f"driver: {parts.driver}")
    t_load = time.perf_counter()
    if args.large:
        model, config, label = load_large_model(device, args.quick)
    else:
        model, config, label = load_default_model(device)
    load_s = time.perf_counter() - t_load
    from worldserve.common.config import batch_invariant as replica_batch_invariant

    info, rt = model.info, model.runtime
    log(
        f"model: {label}; {info.parameters / 1e6:.1f}M parameters; {info.frame_width}x{info.frame_height} frames; "
        f"context {info.context_frames}; {info.sample_steps} sample steps; guidance {info.default_guidance}; "
        f"loaded in {load_s:.1f} s"
    )
    log(
        f"runtime: device={rt.device} dtype={rt.dtype} attention_backend={rt.attention_backend} "
        f"decode_kernel={rt.decode_kernel or '-'}"
    )
    default_inv = replica_batch_invariant(config, device)
    max_batch = args.max_batch_size or config.max_batch_size
    log(
        f"replica settings: max_batch_size={max_batch} batch_invariant={'on' if default_inv else 'off'} "
        f"(config default for {device})"
    )
    per_session, how = session_state_bytes(model, parts, lambda: _window(model, parts, device))
    log(f"session state: {per_session / 2**20:.1f} MiB per session ({how})")
    _configure_pool(model, per_session)  # probes below need one session, not the default pool
    window = _window(model, parts, device)
    peak, peak_src = peak_flops(device)
    fpf = flops_per_frame(model, parts, window, device)
    bound_fps = peak / fpf if fpf else float("nan")
    log(f"FLOPs per frame (step + decode, batch 1, SDPA, FlopCounterMode): {fpf / 1e9:.3f} GFLOP")
    log(f"peak: {peak_src}; bound = peak / FLOPs per frame = {bound_fps:.1f} frames/s")

    mem_avail0 = device_memory_available(device, args.state_memory_gib)
    reserve = 0.0
    if args.state_memory_gib is None and device.startswith("cuda"):
        total = torch.cuda.get_device_properties(torch.device(device)).total_memory
        reserve = max(4 * GIB, 0.10 * total)  # activations, workspace, allocator slack
    runs: list[tuple[int, bool]] = [(n, default_inv) for n in args.sessions]
    inv_n = None
    if not args.large and not args.no_invariant_check:
        inv_n = 32 if 32 in args.sessions or not args.quick else max(args.sessions)
        if (inv_n, default_inv) not in runs:
            runs.append((inv_n, default_inv))
        runs.append((inv_n, not default_inv))
    results = []
    t_begin = time.perf_counter()
    budget_left = float(args.time_budget_s)
    for i, (n, inv) in enumerate(runs):
        spent = time.perf_counter() - t_begin
        share = max(0.2, (args.time_budget_s - spent) / (len(runs) - i) * 0.6)  # warm-up rounds take the rest
        if args.state_memory_gib is None:
            # the model's current state pool (the previous run's) is freed when the next one is configured
            stats = getattr(model, "state_pool_stats", None)
            pool_bytes = int(stats()["bytes"]) if callable(stats) else 0
            mem_avail = device_memory_available(device, None) + pool_bytes - reserve
        else:
            mem_avail = mem_avail0
        r = bench_sessions(
            model,
            parts,
            n=n,
            batch_invariant=inv,
            max_batch=max_batch,
            budget_s=share,
            window=window,
            per_session=per_session,
            mem_avail=mem_avail,
            device=device,
            max_rounds=args.max_rounds,
        )
        r["bound_frames_per_s"] = bound_fps
        if r.get("frames_per_s"):
            r["frames_achieved_fraction"] = r["frames_per_s"] / bound_fps
        results.append(r)
        log(_row(r, bound_fps))
        budget_left = args.time_budget_s - (time.perf_counter() - t_begin)
    ok = all("error" not in r for r in results)
    summary: dict = dict(
        model=label,
        device=device,
        driver=parts.driver,
        parameters=info.parameters,
        runtime=dataclasses.asdict(rt) if dataclasses.is_dataclass(rt) else str(rt),
        flops_per_frame=fpf,
        peak_flops=peak,
        peak_source=peak_src,
        bound_frames_per_s=bound_fps,
        state_bytes_per_session=per_session,
        runs=results,
        budget_left_s=budget_left,
    )
    if inv_n is not None:
        a = next((r for r in results if r["sessions"] == inv_n and r["batch_invariant"]), None)
        b = next((r for r in results if r["sessions"] == inv_n and not r["batch_invariant"]), None)
        if a and b and a.get("frames_per_s") and b.get("frames_per_s"):
            cost = b["frames_per_s"] / a["frames_per_s"]
            summary["batch_invariant_cost"] = cost
            log(
                f"batch-invariant mode at {inv_n} sessions: {a['frames_per_s']:.1f} frames/s vs {b['frames_per_s']:.1f} "
                f"batched: throughput cost {100 * (1 - 1 / cost):.0f}% (batched / invariant = {cost:.2f}x)"
            )
    # part 4: what served the steps
    calls: dict[str, int] = {}
    for r in results:
        for k, v in (r.get("decode_calls") or {}).items():
            calls[k] = calls.get(k, 0) + v
    rt = model.runtime
    last = getattr(model, "last_step_attention", None)
    summary["decode_calls"] = calls
    triton_calls = sum(v for k, v in calls.items() if k.startswith("triton/"))
    log(
        f"served step: runtime.attention_backend={rt.attention_backend} runtime.decode_kernel={rt.decode_kernel or '-'}"
        f" last_step_attention={tuple(last) if last else None}"
    )
    log(f"attention calls (decode and full) in the timed rounds by backend/kernel: {calls or '(no counter)'}")
    if device.startswith("cuda"):
        # bf16 on CUDA must be served by the Triton kernels: SDPA here means they were not used
        # (not selected, or auto mode fell back after a failed launch)
        ran = triton_calls > 0
        sdpa_calls = sum(v for k, v in calls.items() if not k.startswith("triton/"))
        log(
            f"Triton attention kernel ran: {'YES' if ran else 'NO'} ({triton_calls} calls"
            + (f"; WARNING: {sdpa_calls} attention calls ran on SDPA" if sdpa_calls else "")
            + ")"
        )
        ok &= ran and not sdpa_calls and rt.attention_backend == "triton"
    else:
        log(
            f"Triton attention kernel ran: {'yes' if triton_calls else 'no'} ({triton_calls} calls; "
            f"{'expected on CPU' if not device.startswith('cuda') else 'backend is ' + rt.attention_backend})"
        )
    return ok, summary


# --------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m loadtest.engine_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when present")
    ap.add_argument("--sessions", nargs="+", type=int, default=None, help="concurrent sessions (1 8 32 128)")
    ap.add_argument("--large", action="store_true", help="the large random configuration instead of the default model")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and a short budget (CPU smoke test)")
    ap.add_argument("--time-budget-s", type=float, default=None, help="seconds of timed rounds over all runs")
    ap.add_argument("--max-batch-size", type=int, default=0, help="default: the config's max_batch_size")
    ap.add_argument("--max-rounds", type=int, default=200, help="most timed rounds per run")
    ap.add_argument(
        "--state-memory-gib",
        type=float,
        default=None,
        help="memory for session state (default: free device memory minus a reserve)",
    )
    ap.add_argument("--no-invariant-check", action="store_true", help="skip the batch-invariant comparison")
    ap.add_argument("--kernel-check", action="store_true", help="only the Triton kernels vs SDPA check")
    ap.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (default: torch's; 1 with --quick on CPU)"
    )
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args(argv)
    if a.sessions is None:
        a.sessions = [1, 4] if a.quick else [1, 8, 32, 128]
    if any(n < 1 for n in a.sessions):
        ap.error(f"--sessions must be positive, got {a.sessions}")
    if a.time_budget_s is None:
        a.time_budget_s = 3.0 if a.quick else 90.0
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    miss = missing_packages()
    try:
        import torch
    except ImportError:
        log("engine_bench: torch is not installed; nothing to do (SKIPPED)")
        return 0
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        log("engine_bench: --device cuda but no CUDA device is available")
        return 2
    if args.kernel_check and device == "cpu":
        if "triton" in miss:
            log("kernel check: SKIPPED (triton is not installed)")
            return 0
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernel modules are imported
    threads = args.threads or (1 if args.quick and device == "cpu" else 0)
    if threads:
        torch.set_num_threads(threads)  # a tiny model on a busy CPU: extra threads only contend
    log(
        f"engine_bench: device={device} torch={torch.__version__} python={sys.version.split()[0]}"
        + (f" gpu={torch.cuda.get_device_name()}" if device == "cuda" else f" threads={torch.get_num_threads()}")
    )
    log(f"optional packages missing: {', '.join(miss) if miss else 'none'}")
    t0 = time.perf_counter()
    try:
        if args.kernel_check:
            dtype = "bfloat16" if device == "cuda" else "float32"  # the interpreter's bf16 is broken
            ok = kernel_check(device, dtype, quick_cpu=device == "cpu")
            summary = {"kernel_check": ok}
            log(f"kernel check: {'PASS' if ok else 'FAIL'} ({time.perf_counter() - t0:.1f} s)")
        else:
            ok, summary = engine_bench(args, device)
            log(f"engine bench: {'PASS' if ok else 'FAIL'} ({time.perf_counter() - t0:.1f} s)")
    except ImportError as e:
        log(f"engine_bench: SKIPPED: cannot import what this part needs ({e}); missing: {miss}")
        return 0
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2, default=str)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
