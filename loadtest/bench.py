"""Serving benchmark: `python -m loadtest.bench` (or `make bench`).

Starts its own embedded Redis and local Ray cluster (gRPC on loopback), deploys the serve config
with one dynamics replica, and prints from one run:

- the model step alone of each served model (batch 1: sample + decode, in this process, same
  threads as a replica, a full context);
- a trivial RPC through Serve's gRPC proxy (GetModelInfo);
- Step latency p50/p99 through the whole stack (one session of the default model, closed loop);
- aggregate steps/s for 1 session vs N concurrent sessions of the default model (batching), and
  for N sessions of every other served model (each tier's frames/s through the whole stack);
- the model alone at N concurrent sessions: the replica's runner (prefilled states, the batches a
  replica forms, step + decode) in this process, no Redis, no RPC;
- the busy CPU of the whole machine per operation (trivial RPC, served step, model step alone),
  less what the idle cluster burns: where the model cannot use a core the serving stack takes,
  served / alone is bounded by ``cpu_bound_ceiling`` (model CPU per step / served CPU per step);

and checks the targets: whole-stack Step p50 <= trivial-RPC p50 + model step p50 + 3 ms, and
served steps/s at N concurrent sessions >= 90% of the model alone's at the same concurrency.
Figures are ratios within one run: the machine is shared and noisy. Exit code 0 when both targets
hold, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path


def cpu_busy_s() -> float:
    """CPU seconds this machine has spent busy (every process: /proc/stat's user, nice, system,
    irq, softirq), to charge each phase its whole-stack CPU cost, not just its latency."""
    import os

    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """Busy CPU per operation over a phase, less what the idle cluster burns meanwhile."""

    def __init__(self, idle_per_s: float = 0.0):
        self.idle_per_s = idle_per_s

    def __enter__(self) -> CpuMeter:
        self.t0, self.c0 = time.perf_counter(), cpu_busy_s()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.t0
        self.busy = max(0.0, cpu_busy_s() - self.c0 - self.idle_per_s * self.wall)

    def per(self, n: int) -> float:
        return self.busy / max(n, 1)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def model_alone(n: int, threads: int, overrides: dict | None = None) -> dict[str, list[float]]:
    """Seconds per step + decode at batch 1, for each served model (as its replica loads it)."""
    import torch

    from worldserve.common.config import Config, setup_torch
    from worldserve.dynamics.registry import load_model

    config = Config.load({**(overrides or {}), "torch_threads": threads})
    device = setup_torch(config)  # the replica's threads and device
    times: dict[str, list[float]] = {}
    for spec in config.models:
        m = load_model(spec, config, device)
        i = m.info
        frames = torch.zeros(i.context_frames - 1, i.frame_height, i.frame_width, 3, dtype=torch.uint8)
        state = m.prefill(m.encode(frames), m.null_action()[None].repeat(len(frames), 1), first_step=0)  # full context
        a = m.action_vector(["right"])[None]
        out = times[spec.name] = []
        for k in range(n + 2):
            t0 = time.perf_counter()
            z = m.step([state], a, seeds=[0], steps=[m.state_step(state) + 1])
            m.decode(z)
            if k >= 2:  # warm-up
                out.append(time.perf_counter() - t0)
        m.release_state(state)
    return times


def model_alone_concurrent(
    n: int, duration_s: float, threads: int, overrides: dict | None = None
) -> tuple[float, float]:
    """Steps/s of the default model alone at ``n`` concurrent sessions: the replica's runner on
    batches of ``n`` jobs whose states are cached (what a warm replica runs), as many batches as fit
    ``duration_s``, no Redis and no RPC; and the busy CPU seconds per step."""
    import torch

    from worldserve.common.config import Config, batch_invariant, setup_torch
    from worldserve.dynamics.engine.runner import Job, Runner
    from worldserve.dynamics.engine.state_cache import StateCache
    from worldserve.dynamics.engine.types import StepRequest
    from worldserve.dynamics.registry import load_model

    config = Config.load({**(overrides or {}), "torch_threads": threads})
    device = setup_torch(config)
    spec = config.models[0]
    m = load_model(spec, config, device)
    if hasattr(m, "configure_state_pool"):
        m.configure_state_pool(config.state_cache_bytes)
    i = m.info
    cache = StateCache(m, config.state_cache_bytes)
    runner = Runner(m, cache, batch_invariant=batch_invariant(config, device, spec))
    frames = torch.zeros(i.context_frames - 1, i.frame_height, i.frame_width, 3, dtype=torch.uint8)
    z0 = m.encode(frames)
    a0 = m.null_action()[None].repeat(len(frames), 1)
    states = [m.prefill(z0, a0, first_step=0) for _ in range(n)]
    vec = m.action_vector(["right"])
    g = float(i.default_guidance)

    def batch() -> None:
        jobs = [
            Job(
                StepRequest(tenant="bench", session_id=f"s{k}"),
                ("bench", f"s{k}"),
                m.state_step(s),
                k,
                vec,
                g,
                event="",
                state=s,
            )
            for k, s in enumerate(states)
        ]
        runner.run(jobs)
        for j in jobs:
            if j.error is not None:
                raise j.error

    batch()  # warm-up
    done, t0 = 0, time.perf_counter()
    with CpuMeter() as cpu:
        while time.perf_counter() - t0 < duration_s:
            batch()
            done += n
    took = time.perf_counter() - t0
    for s in states:
        m.release_state(s)
    return done / took, cpu.per(done)


def closed_loop(client, sids: list[str], duration_s: float) -> tuple[int, list[float], int]:
    """Each session steps in its own thread, back to back, for duration_s. Returns (steps, latencies, errors)."""
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + duration_s

    def run(sid: str) -> None:
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                client.step(sid, ["right"])
            except Exception:
                with lock:
                    errors[0] += 1
                continue
            with lock:
                lat.append(time.perf_counter() - t0)

    ts = [threading.Thread(target=run, args=(s,)) for s in sids]
    t0 = time.monotonic()
    [t.start() for t in ts]
    [t.join() for t in ts]
    return len(lat), lat, errors[0] if time.monotonic() - t0 > 0 else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=32, help="concurrent sessions for the batching figure")
    ap.add_argument("--duration-s", type=float, default=20.0, help="seconds of each closed-loop phase")
    ap.add_argument("--latency-steps", type=int, default=60, help="sequential Steps for p50/p99")
    ap.add_argument("--trivial", type=int, default=200, help="trivial RPCs for their p50")
    ap.add_argument("--torch-threads", type=int, default=0, help="torch threads in the replica and the model-alone run")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument(
        "--app-args",
        type=json.loads,
        default={},
        help='Config overrides for every app as JSON, e.g. \'{"batch_invariant": "off"}\' or other models',
    )
    ns = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print("[bold]model step alone[/] (batch 1, sample + decode) ...")
    alone = model_alone(20, ns.torch_threads, ns.app_args)
    default = next(iter(alone))
    model_s = alone[default]
    console.print(f"model alone: {ns.sessions} concurrent sessions for {ns.duration_s:.0f} s ...")
    alone_n, alone_cpu = model_alone_concurrent(ns.sessions, ns.duration_s, ns.torch_threads, ns.app_args)

    from worldserve.client import WorldClient
    from worldserve.local import local_cluster

    with (
        console.status("benchmark on a local cluster ..."),
        local_cluster(
            tenants=("bench",),
            app_args={**ns.app_args, "torch_threads": ns.torch_threads},
            deployment_overrides={
                f"DynamicsModel-{name}": {
                    "autoscaling_config": {"min_replicas": 1, "max_replicas": 1, "initial_replicas": 1}
                }
                for name in alone
            },
        ) as cluster,
    ):
        client = WorldClient(cluster.target, cluster.keys["bench"], timeout_s=120)
        for _ in range(5):
            client.model_info()
        with CpuMeter() as idle:  # what the idle cluster burns (health checks, metrics, control loops)
            time.sleep(5.0)
        idle_per_s = idle.busy / idle.wall
        trivial = []
        with CpuMeter(idle_per_s) as cpu_trivial:
            for _ in range(ns.trivial):
                t0 = time.perf_counter()
                client.model_info()
                trivial.append(time.perf_counter() - t0)

        sids = [
            client.create_session(prompt="a red door on the left, grass, day", seed=i).session_id
            for i in range(ns.sessions)
        ]
        for s in sids:  # first step encodes the first frame and fills the replica cache
            client.step(s, ["right"])
        stack = []
        for _ in range(ns.latency_steps):
            t0 = time.perf_counter()
            client.step(sids[0], ["right"])
            stack.append(time.perf_counter() - t0)
        console.print(f"closed loop: 1 session for {ns.duration_s:.0f} s ...")
        with CpuMeter(idle_per_s) as cpu_1:
            n1, _, e1 = closed_loop(client, sids[:1], ns.duration_s)
        console.print(f"closed loop: {ns.sessions} sessions for {ns.duration_s:.0f} s ...")
        with CpuMeter(idle_per_s) as cpu_n:
            nn, lat_n, en = closed_loop(client, sids, ns.duration_s)
        tiers = {}
        for name in list(alone)[1:]:  # every other served model: N sessions, closed loop
            tsids = [
                client.create_session(prompt="a red door on the left, grass, day", seed=i, model=name).session_id
                for i in range(ns.sessions)
            ]
            for s_ in tsids:
                client.step(s_, ["right"])
            console.print(f"closed loop: {ns.sessions} sessions of {name} for {ns.duration_s:.0f} s ...")
            nt, _, et = closed_loop(client, tsids, ns.duration_s)
            tiers[name] = (nt, et)
        client.close()

    ms = lambda s: s * 1000
    fig = {
        "model_step_p50_ms": ms(statistics.median(model_s)),
        "trivial_rpc_p50_ms": ms(statistics.median(trivial)),
        "trivial_rpc_p99_ms": ms(pct(trivial, 99)),
        "step_p50_ms": ms(statistics.median(stack)),
        "step_p99_ms": ms(pct(stack, 99)),
        "steps_per_s_1": n1 / ns.duration_s,
        f"steps_per_s_{ns.sessions}": nn / ns.duration_s,
        f"model_alone_steps_per_s_{ns.sessions}": alone_n,
        f"step_p50_ms_at_{ns.sessions}": ms(statistics.median(lat_n)) if lat_n else float("nan"),
        "errors": e1 + en + sum(e for _, e in tiers.values()),
        # busy CPU (every process on the machine, less the idle cluster's) per operation
        "idle_cluster_cpu_ms_per_s": ms(idle_per_s),
        "cpu_ms_per_trivial_rpc": ms(cpu_trivial.per(len(trivial))),
        "cpu_ms_per_step_1": ms(cpu_1.per(n1)),
        f"cpu_ms_per_step_{ns.sessions}": ms(cpu_n.per(nn)),
        f"model_alone_cpu_ms_per_step_{ns.sessions}": ms(alone_cpu),
    }
    for name, times in alone.items():
        fig[f"model_step_p50_ms/{name}"] = ms(statistics.median(times))
    for name, (nt, _) in tiers.items():
        fig[f"steps_per_s_{ns.sessions}/{name}"] = nt / ns.duration_s
    budget = fig["trivial_rpc_p50_ms"] + fig["model_step_p50_ms"] + 3.0
    ratio = fig[f"steps_per_s_{ns.sessions}"] / max(alone_n, 1e-9)
    fig.update(
        step_budget_ms=budget,
        overhead_ms=fig["step_p50_ms"] - fig["trivial_rpc_p50_ms"] - fig["model_step_p50_ms"],
        served_vs_alone=ratio,
        # on a CPU-bound machine served / alone cannot pass the model's share of a served step's CPU
        cpu_bound_ceiling=alone_cpu / max(cpu_n.per(nn), 1e-9),
    )
    t = Table(title="worldserve serving benchmark")
    t.add_column("figure")
    t.add_column("value", justify="right")
    for k, v in fig.items():
        t.add_row(k, f"{v:.2f}" if isinstance(v, float) else str(v))
    console.print(t)
    ok_latency = fig["step_p50_ms"] <= budget
    ok_batch = ratio >= 0.9
    console.print(
        f"Step p50 {fig['step_p50_ms']:.1f} ms vs budget {budget:.1f} ms (trivial + model + 3): "
        + ("[green]met[/]" if ok_latency else "[red]missed[/]")
    )
    console.print(
        f"{ns.sessions} sessions: served / model alone steps/s = {ratio:.0%} (target 90%): "
        + ("[green]met[/]" if ok_batch else "[red]missed[/]")
    )
    if ns.json:
        ns.json.write_text(json.dumps(fig, indent=2))
    return 0 if ok_latency and ok_batch else 1


if __name__ == "__main__":
    sys.exit(main())
