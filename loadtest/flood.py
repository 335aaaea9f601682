"""Flood isolation, measured: a quiet tenant's Step latency alone and beside a tenant that loops
StepBatches of the largest allowed size as fast as it can, in one run on one local cluster, with
the CPU seconds each process class spent in each phase (where the quiet tenant's extra latency
comes from).

    python -m loadtest.flood [--kinds valid,unknown] [--steps 100] [--runs 1]

Each phase: ``--steps`` quiet Steps (one client, one session, as a player steps), the p99 of
their latencies; the flood phases start the flooder in its own process (spawned: a second client
machine's share of this box; it runs at the priority the quiet client does) and wait until its
first batch is in. ``valid``: the flooder steps its own sessions (one per item: the realistic
flood); ``unknown``: sessions that do not exist (the cheapest refusal per item).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

CLASSES = (
    ("proxy", "ProxyActor"),
    ("ingress", "dynamics:DynamicsService"),
    ("model", "DynamicsModel-platformer"),
    ("sessions", "SessionService"),
    ("redis", "redis-server"),
    ("ray", "raylet"),
    ("ray", "gcs_server"),
    ("controller", "ServeController"),
)


def _class_of(cmd: str) -> str:
    for name, marker in CLASSES:
        if marker in cmd:
            return name
    return "other"


def cpu_by_class(exclude: set[int], threads: bool = True) -> dict[str, float]:
    """CPU seconds (user + system) so far of every process on this box, summed per class."""
    import psutil

    out: dict[str, float] = {}
    for p in psutil.process_iter(["pid", "cmdline", "cpu_times", "name"]):
        try:
            if p.info["pid"] in exclude or p.info["cpu_times"] is None:
                continue
            cmd = " ".join(p.info["cmdline"] or []) or p.info["name"] or ""
            c = _class_of(cmd)
            t = p.info["cpu_times"]
            out[c] = out.get(c, 0.0) + t.user + t.system
            if threads and c in ("model", "ingress"):
                for th in p.threads():
                    try:
                        with open(f"/proc/{p.pid}/task/{th.id}/comm") as f:
                            name = f.read().strip()
                        nice = os.getpriority(os.PRIO_PROCESS, th.id)
                        idle = os.sched_getscheduler(th.id) == os.SCHED_IDLE
                    except OSError:
                        continue
                    k = f"{c}/{name.rstrip('0123456789_')}/{'idle' if idle else f'n{nice}'}"
                    out[k] = out.get(k, 0.0) + th.user_time + th.system_time
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def flood(target: str, key: str, session_ids: list[str], stop: Any, started: Any, stats: Any, errors: Any) -> None:
    """The flooding tenant's loop (its own process): one StepBatch after the other, no pause."""
    import grpc

    from worldserve.client import WorldClient, action
    from worldserve.v1 import dynamics_pb2

    stats[3] = time.process_time()
    with WorldClient(target, key, timeout_s=120, retry_s=0) as c:
        reqs = [dynamics_pb2.StepRequest(session_id=s, action=action(["up"])) for s in session_ids]
        while not stop.is_set():
            try:
                r = c.step_batch(reqs)
                ok = sum(1 for x in r.results if x.HasField("ok"))
                with stats.get_lock():
                    stats[0] += 1  # batches answered
                    stats[1] += ok  # items stepped
                started.set()
            except grpc.RpcError as e:
                with stats.get_lock():
                    stats[2] += 1  # refused (the step-rate quota)
                started.set()
                errors.put(f"{e.code().name}: {e.details()}")
    stats[3] = time.process_time() - stats[3]  # the flooder's own CPU seconds


def quiet_p99(client: Any, session_id: str, n: int) -> tuple[float, float, list[float]]:
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.step(session_id, ["right"])
        lat.append(time.perf_counter() - t0)
    return float(np.percentile(lat, 99)), float(np.median(lat)), lat


@contextlib.contextmanager
def flooding(target: str, key: str, session_ids: list[str]) -> Iterator[Any]:
    ctx = mp.get_context("spawn")
    stop, started, errors = ctx.Event(), ctx.Event(), ctx.Queue()
    stats = ctx.Array("d", 4)
    p = ctx.Process(target=flood, args=(target, key, session_ids, stop, started, stats, errors), daemon=True)
    p.start()
    try:
        if not started.wait(120):
            raise RuntimeError("the flooder's first batch never came back")
        yield stats, errors, p.pid
    finally:
        stop.set()
        p.join(120)


def measure_phase(client: Any, sid: str, n: int, exclude: set[int]) -> dict[str, Any]:
    c0, t0 = cpu_by_class(exclude), time.perf_counter()
    p99, p50, lat = quiet_p99(client, sid, n)
    wall = time.perf_counter() - t0
    c1 = cpu_by_class(exclude)
    cpu = {k: round(c1.get(k, 0.0) - c0.get(k, 0.0), 2) for k in sorted(set(c0) | set(c1))}
    cpu = {k: v for k, v in cpu.items() if v >= 0.05}
    return {"p99_ms": p99 * 1e3, "p50_ms": p50 * 1e3, "max_ms": max(lat) * 1e3, "wall_s": wall, "cpu_s": cpu}


def profile(folder: str, kind: str, seconds: int = 6) -> list[Any]:
    """py-spy (collapsed stacks, per thread) of every proxy, ingress and model replica process."""
    import subprocess

    import psutil

    os.makedirs(folder, exist_ok=True)
    spies = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        c = _class_of(" ".join(p.info["cmdline"] or []))
        if c in ("proxy", "ingress", "model"):
            out = f"{folder}/{kind}-{c}-{p.info['pid']}.txt"
            cmd = ["py-spy", "record", "-d", str(seconds), "-r", "50", "-p", str(p.info["pid"]), "--threads"]
            spies.append(
                subprocess.Popen([*cmd, "-f", "raw", "-o", out], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
    return spies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", default="valid,unknown")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--profile", default="", help="a folder: py-spy profiles of the servers in each flood phase")
    args = ap.parse_args()

    from worldserve.client import WorldClient
    from worldserve.common.auth import add_key, new_key
    from worldserve.common.config import Config
    from worldserve.deploy import load_config
    from worldserve.local import local_cluster

    yaml = {d["name"]: d for app in load_config()["applications"] for d in app.get("deployments", [])}

    def pinned(name: str, n: int) -> dict[str, Any]:
        ac = yaml[name]["autoscaling_config"]
        return {"autoscaling_config": {**ac, "min_replicas": n, "max_replicas": n, "initial_replicas": n}}

    overrides = {  # the e2e cluster's shape (tests/e2e/conftest.py)
        "DynamicsModel-platformer": pinned("DynamicsModel-platformer", 2),
        "DynamicsModel-platformer-fast": pinned("DynamicsModel-platformer-fast", 1),
        "DynamicsService": pinned("DynamicsService", 2),
        "SessionService": pinned("SessionService", 2),
        "WebGateway": pinned("WebGateway", 2),
    }
    dyn = next(a for a in load_config()["applications"] if a["name"] == "dynamics")
    quotas = Config.load(dyn["args"]).quotas
    n_flood = quotas.max_step_batch  # the largest StepBatch a tenant may send
    me = {os.getpid()}
    with local_cluster(num_cpus=6, app_args={"torch_threads": 1}, deployment_overrides=overrides) as c:
        key_q, key_f = new_key(), new_key()
        add_key(c.workdir / "keys.json", "quiet", key_q)
        add_key(c.workdir / "keys.json", "flooder", key_f, {"max_sessions": n_flood})
        t0 = time.perf_counter()
        with WorldClient(c.target, key_f, timeout_s=120) as f:
            root = f.create_session(prompt="a red door on the left, grass, day", seed=1)
            own = [root.session_id] + [f.fork_session(root.session_id, seed=i).session_id for i in range(1, n_flood)]
        print(f"flooder: {len(own)} sessions in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        unknown = [f"s_flood{i}" for i in range(n_flood)]
        results = []
        with WorldClient(c.target, key_q, timeout_s=120, retry_s=0) as q:
            sid = q.create_session(prompt="a red door on the left, grass, day", seed=4).session_id
            quiet_p99(q, sid, 10)  # warm
            for run in range(args.runs):
                row: dict[str, Any] = {"run": run, "alone": measure_phase(q, sid, args.steps, me)}
                for kind in args.kinds.split(","):
                    ids = own if kind == "valid" else unknown
                    with flooding(c.target, key_f, ids) as (stats, errors, pid):
                        b0, i0 = stats[0], stats[1]
                        spies = profile(args.profile, kind) if args.profile else []
                        ph = measure_phase(q, sid, args.steps, me)
                        for sp in spies:
                            sp.wait(60)
                        ph["flood_batches"] = stats[0] - b0
                        ph["flood_items_ok"] = stats[1] - i0
                        ph["flood_refused"] = stats[2]
                    ph["flooder_cpu_s_total"] = round(stats[3], 2)
                    ph["errors"] = [errors.get() for _ in range(errors.qsize())]
                    ph["ratio"] = ph["p99_ms"] / row["alone"]["p99_ms"]
                    row[kind] = ph
                results.append(row)
                print(json.dumps(row), flush=True)
        for row in results:
            alone = row["alone"]["p99_ms"]
            parts = [f"alone p99 {alone:.1f} ms"]
            for kind in args.kinds.split(","):
                parts.append(f"{kind}: p99 {row[kind]['p99_ms']:.1f} ms ({row[kind]['ratio']:.2f}x)")
            print("; ".join(parts))


if __name__ == "__main__":
    main()
