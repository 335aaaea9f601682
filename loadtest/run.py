"""Load scenarios against a local cluster: `python -m loadtest.run SCENARIO [options]`.

Scenarios (bounded in time and count, loopback only):
  farm         N agents, each stepping its own session in a closed loop
  interactive  players paced at a fixed frame rate, counting deadline misses
  burst        a burst of session creation from prompts
  tenants      several tenants, one of them noisy
  autoscale    load aimed at the dynamics service alone, then idle: shows dynamics replicas
               scaling up while image and sessions stay at their minimum, and back down
  live         players on the web gateway's WebSocket at a target fps (loadtest/live.py):
               achieved fps, key-to-frame latency, deadline misses, replicas scaling on misses

Each run starts its own local cluster (embedded Redis + Ray + Serve; run it under
scripts/netns-run, `make loadtest` does), drives it with Locust in a separate process, samples
the replica count of every application from Serve's own status once a second, prints
p50/p95/p99, throughput and errors per request kind, checks them against loadtest/slo.yaml, and
writes PNG plots of latency and replica count over time plus the raw figures as JSON.
Exit code 0 when every SLO holds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from loadtest.report import APPS, SCALED, SCALED_KEY, percentile, plot

HERE = Path(__file__).resolve().parent

DEFAULTS = {  # users, spawn rate, seconds of load, seconds of idle sampling afterwards
    "farm": (16, 8, 40, 0),
    "interactive": (4, 4, 40, 0),
    "burst": (16, 16, 20, 0),
    "tenants": (16, 8, 40, 0),
    "autoscale": (96, 16, 90, 75),
    "live": (8, 8, 60, 0),  # players; the rest: --fps, --per-session
}


def split_users(scenario: str, users: int) -> list[tuple[str, int]]:
    """(user class, users) for each class of a scenario, by the classes' weights (at least one each)."""
    from loadtest import scenario_classes

    classes = scenario_classes(scenario)
    total = sum(w for _, w in classes)
    out = [(name, max(1, round(users * w / total))) for name, w in classes]
    extra = sum(n for _, n in out) - users
    if extra > 0:  # rounding gave one too many: take it from the largest class
        i = max(range(len(out)), key=lambda j: out[j][1])
        out[i] = (out[i][0], out[i][1] - extra)
    return out


def summarize(records: list[dict], load_s: float) -> dict[str, dict]:
    by: dict[str, list[dict]] = {}
    for r in records:
        by.setdefault(r["name"], []).append(r)
    out = {}
    for name, rs in sorted(by.items()):
        ok = [r["ms"] for r in rs if r["ok"]]
        out[name] = {
            "count": len(rs),
            "errors": sum(not r["ok"] for r in rs),
            "error_ratio": sum(not r["ok"] for r in rs) / len(rs),
            "rps": len(ok) / load_s,
            "p50_ms": percentile(ok, 50),
            "p95_ms": percentile(ok, 95),
            "p99_ms": percentile(ok, 99),
            "deadline_miss_ratio": sum(r.get("deadline_miss", False) for r in rs) / len(rs),
            "codes": sorted({r["code"] for r in rs}),
        }
    return out


SERVER_TIMINGS = {  # histogram (scraped name) -> the label that splits it, what the report calls it, ms per unit
    "ray_worldserve_dynamics_queue_wait_seconds": ("priority", "queue wait", 1000.0),
    "ray_worldserve_dynamics_model_step_duration_seconds": ("model", "model batch", 1000.0),
    "ray_worldserve_dynamics_request_duration_seconds": ("rpc", "dynamics ingress", 1000.0),
    "ray_serve_grpc_request_latency_ms": ("route", "serve grpc proxy", 1.0),
    "ray_serve_deployment_processing_latency_ms": ("deployment", "replica", 1.0),
}


def server_timings(metrics_url: str, wait_s: float = 15.0) -> dict[str, dict[str, float]]:
    """Mean seconds of the cluster's own histograms (queue wait by priority, model batch time,
    ingress RPC time) from its Prometheus endpoint, after Ray's next export."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    time.sleep(wait_s)  # Ray exports every ~10 s
    try:
        text = urllib.request.urlopen(metrics_url, timeout=30).read().decode()
    except OSError:
        return {}
    sums: dict[str, dict[str, float]] = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            for name, (label, what, scale) in SERVER_TIMINGS.items():
                if smp.name in (name + "_sum", name + "_count"):
                    key = f"{what} [{smp.labels.get(label, '')}]"
                    d = sums.setdefault(key, {"sum": 0.0, "count": 0.0, "scale": scale})
                    d["sum" if smp.name.endswith("_sum") else "count"] += smp.value
    return {
        k: {"mean_ms": d["scale"] * d["sum"] / d["count"], "count": d["count"]} for k, d in sums.items() if d["count"]
    }


def check_slo(summary: dict[str, dict], slo: dict) -> list[tuple[str, str, float, float, bool]]:
    """(request kind, figure, measured, limit, ok) for every SLO line."""
    rows = []
    for name, limits in slo.items():
        if not isinstance(limits, dict):
            continue
        got = summary.get(name)
        for figure, limit in limits.items():
            if got is None:
                rows.append((name, figure, float("nan"), limit, False))
                continue
            if figure.startswith("max_"):
                value = got[figure[4:]]
                rows.append((name, figure, value, limit, value <= limit))
            elif figure.startswith("min_"):
                value = got[figure[4:]]
                rows.append((name, figure, value, limit, value >= limit))
            else:
                value = got[figure]
                rows.append((name, figure, value, limit, value <= limit))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="worldserve load scenarios")
    ap.add_argument("scenario", choices=sorted(DEFAULTS))
    ap.add_argument("--users", type=int)
    ap.add_argument("--spawn-rate", type=float)
    ap.add_argument("--duration-s", type=float, help="seconds of load")
    ap.add_argument("--idle-s", type=float, help="seconds of sampling after the load (scale-down)")
    ap.add_argument("--out", type=Path, default=Path("out/loadtest"))
    ap.add_argument("--slo", type=Path, default=HERE / "slo.yaml")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=YAML",
        help="a config override for every application, e.g. --set torch_threads=1 (repeatable)",
    )
    ap.add_argument("--fps", type=float, default=2.0, help="live: the players' target fps")
    ap.add_argument(
        "--per-session", type=int, default=1, help="live: players per session (one controller, the rest spectators)"
    )
    ns = ap.parse_args(argv)
    app_args = {}
    for item in ns.set:
        field, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set {item!r}: expected FIELD=VALUE")
        app_args[field] = yaml.safe_load(value)
    users, rate, dur, idle = DEFAULTS[ns.scenario]
    users, rate = ns.users or users, ns.spawn_rate or rate
    dur = ns.duration_s if ns.duration_s is not None else dur
    idle = ns.idle_s if ns.idle_s is not None else idle
    out = ns.out / ns.scenario
    out.mkdir(parents=True, exist_ok=True)
    slo = yaml.safe_load(ns.slo.read_text()).get(ns.scenario, {})

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from worldserve.local import local_cluster, replica_counts

    console = Console()
    if ns.scenario == "live":
        from loadtest.live import run_live

        ns.users, ns.duration_s = users, dur
        return run_live(ns, app_args, slo, console)
    overrides = {}
    num_cpus = None
    if ns.scenario == "autoscale":
        num_cpus = 8  # logical CPUs: room for 4 dynamics replicas at 0.5 each beside the others
        overrides = {
            SCALED: {
                "autoscaling_config": {
                    "min_replicas": 1,
                    "max_replicas": 4,
                    "initial_replicas": 1,
                    "target_ongoing_requests": 16,
                    "upscale_delay_s": 5,
                    "downscale_delay_s": 20,
                    "metrics_interval_s": 2,
                    "look_back_period_s": 10,
                }
            },
        }
    tenants = ("tenant-a", "noisy", "quiet-0", "quiet-1", "quiet-2")
    samples: list[dict] = []
    console.print(
        f"[bold]{ns.scenario}[/]: {users} users, {dur:.0f} s of load" + (f", then {idle:.0f} s idle" if idle else "")
    )
    with local_cluster(
        tenants=tenants, deployment_overrides=overrides, num_cpus=num_cpus, workdir=out / "cluster", app_args=app_args
    ) as c:
        keys_file = out / "keys.json"
        keys_file.write_text(json.dumps(c.keys))
        keys_file.chmod(0o600)
        extra_args: list[str] = []
        if ns.scenario == "autoscale":  # sessions exist before the load: only dynamics is loaded
            from worldserve.client import WorldClient

            with (
                WorldClient(c.target, c.keys["tenant-a"], timeout_s=120) as wc,
                console.status("creating sessions ..."),
            ):
                sids = [
                    wc.create_session(prompt="a red door on the left, grass, day", seed=i).session_id
                    for i in range(users)
                ]
            (out / "sessions.txt").write_text("\n".join(sids))
            extra_args = ["--sessions", str(out / "sessions.txt")]
        stop = threading.Event()
        t_start = time.time()

        def sample() -> None:
            while not stop.is_set():
                try:
                    samples.append({"t": time.time() - t_start, **replica_counts(APPS)})
                except Exception:
                    pass
                stop.wait(1.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rec_file = out / "requests.jsonl"
        procs = []
        # one Locust process per user class: a tenant's users never share a gevent loop with another
        # tenant's (in one process, 12 closed-loop users delayed a paced user's calls by ~300 ms)
        for cls_name, n in split_users(ns.scenario, users):
            part = out / f"requests.{cls_name}.jsonl"
            cmd = [
                sys.executable,
                "-m",
                "loadtest.locust_worker",
                "--scenario",
                ns.scenario,
                "--target",
                c.target,
                "--keys",
                str(keys_file),
                "--users",
                str(n),
                "--spawn-rate",
                str(max(1.0, rate * n / users)),
                "--duration-s",
                str(dur),
                "--out",
                str(part),
                "--user-class",
                cls_name,
                *extra_args,
            ]
            procs.append(
                (
                    part,
                    subprocess.Popen(cmd, cwd=HERE.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
                )
            )
        failed = False
        with console.status(f"load: {users} users for {dur:.0f} s ..."):
            for _part, proc in procs:
                try:
                    so, se = proc.communicate(timeout=dur + 300)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    so, se = proc.communicate()
                if proc.returncode != 0:
                    console.print(so[-3000:], se[-3000:])
                    failed = True
        if failed:
            stop.set()
            return 2
        with rec_file.open("w") as f:
            for part, _ in procs:
                f.write(part.read_text())
                part.unlink()
        if idle:
            with console.status(f"idle: sampling replicas for {idle:.0f} s ..."):
                time.sleep(idle)
        stop.set()
        sampler.join(5)
        with console.status("reading the cluster's own timings ..."):
            server = server_timings(c.metrics_url)

    records = [json.loads(line) for line in rec_file.read_text().splitlines() if line.strip()]
    summary = summarize(records, dur)
    table = Table(title=f"{ns.scenario}: {len(records)} requests")
    table.add_column("request", no_wrap=True, min_width=14)
    for col in ("count", "errors", "rps", "p50 ms", "p95 ms", "p99 ms", "deadline miss"):
        table.add_column(col, justify="right")
    for name, s in summary.items():
        table.add_row(
            escape(name),
            str(s["count"]),
            str(s["errors"]),
            f"{s['rps']:.1f}",
            f"{s['p50_ms']:.0f}",
            f"{s['p95_ms']:.0f}",
            f"{s['p99_ms']:.0f}",
            f"{s['deadline_miss_ratio']:.1%}",
        )
    console.print(table)
    rows = check_slo(summary, slo)
    if ns.scenario == "autoscale":  # the point of this scenario: only dynamics scales, and back down
        peak_ = {app: max((s_.get(app, 0) for s_ in samples), default=0) for app in (*APPS, SCALED_KEY)}
        end_ = samples[-1] if samples else {}
        rows += [
            ("replicas", f"{SCALED} peak > 1", peak_[SCALED_KEY], 1, peak_[SCALED_KEY] > 1),
            ("replicas", "image peak == 1", peak_["image"], 1, peak_["image"] == 1),
            ("replicas", "sessions peak == 1", peak_["sessions"], 1, peak_["sessions"] == 1),
            ("replicas", f"{SCALED} at the end == 1", end_.get(SCALED_KEY, 0), 1, end_.get(SCALED_KEY, 0) == 1),
        ]
    st = Table(title="SLO (loadtest/slo.yaml)")
    st.add_column("request", no_wrap=True, min_width=14)
    for col in ("figure", "measured", "limit", ""):
        st.add_column(col)
    for name, figure, value, limit, ok in rows:
        st.add_row(escape(name), figure, f"{value:.3f}", str(limit), "[green]ok[/]" if ok else "[red]MISSED[/]")
    console.print(st)
    peak = {app: max((s[app] for s in samples), default=0) for app in APPS}
    final = samples[-1] if samples else {}
    console.print(
        "replicas (from serve.status): peak "
        + ", ".join(f"{a}={peak[a]}" for a in APPS)
        + "; at the end "
        + ", ".join(f"{a}={final.get(a, 0)}" for a in APPS)
    )
    png = plot(records, samples, out / "latency_replicas.png", f"worldserve load: {ns.scenario}")
    (out / "report.json").write_text(
        json.dumps(
            {
                "scenario": ns.scenario,
                "users": users,
                "duration_s": dur,
                "idle_s": idle,
                "summary": summary,
                "slo": [dict(zip(("request", "figure", "measured", "limit", "ok"), r)) for r in rows],
                "replicas": samples,
                "server": server,
            },
            indent=2,
        )
    )
    if server:
        console.print(
            "server side (mean ms): "
            + escape(", ".join(f"{k} {v['mean_ms']:.0f} (n={v['count']:.0f})" for k, v in server.items()))
        )
    console.print(f"wrote {png} and {out / 'report.json'}")
    return 0 if all(r[4] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
