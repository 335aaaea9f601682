"""The `live` load scenario: players on the web gateway's WebSocket, each holding keys that change
every half second or so, at a target fps (`python -m loadtest.run live`, or `make loadtest
SCENARIO=live`).

Each player counts the frames it gets (achieved fps), the key-to-frame latency (from sending an
action to the first frame whose ``ack`` shows it) and the frames flagged late; afterwards the
gateway's own Prometheus figures (deadline misses, frames, frames dropped for slow clients,
key-to-frame) and the model deployments' replica counts over time are added. With
``--per-session K`` the players share worlds: one controller and K-1 spectators per session.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

from worldserve.web.live import unpack_frame


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


async def player(
    ws_url: str, key: str, sid: str, role: str, fps: float, duration_s: float, seed: int, t0: float
) -> dict:
    import websockets

    rng = random.Random(seed)
    url = f"{ws_url}/v1/sessions/{sid}/play?role={role}&fps={fps}&format=jpeg"
    async with websockets.connect(
        url, additional_headers={"authorization": f"Bearer {key}"}, max_size=None, open_timeout=60
    ) as ws:
        hello = json.loads(await ws.recv())
        if hello.get("type") != "hello":
            raise RuntimeError(f"expected hello, got {hello}")
        sent: dict[int, float] = {}
        k2f: list[float] = []
        records: list[dict] = []  # for the latency plot: {"t", "ms", "name", "ok"}
        dropped = 0
        frames, late, acked = 0, 0, 0
        arrivals: list[float] = []
        stop = time.monotonic() + duration_s

        async def act() -> None:
            seq = 0
            while time.monotonic() < stop:
                seq += 1
                keys = rng.choice([["right"], ["right", "jump"], ["left"], [], ["up"]])
                sent[seq] = time.perf_counter()
                await ws.send(json.dumps({"type": "action", "seq": seq, "keys": keys}))
                await asyncio.sleep(rng.uniform(0.3, 0.7))

        actor = asyncio.create_task(act()) if role == "controller" else None
        try:
            while time.monotonic() < stop:
                try:
                    m = await asyncio.wait_for(ws.recv(), timeout=max(0.05, stop - time.monotonic()))
                except asyncio.TimeoutError:
                    break
                if isinstance(m, str):
                    continue
                h, _ = unpack_frame(m)
                now = time.perf_counter()
                frames += 1
                arrivals.append(now)
                late += bool(h.get("late"))
                dropped = h.get("dropped", dropped)
                if h["ack"] > acked:
                    for s in [s for s in sent if s <= h["ack"]]:
                        t = sent.pop(s)
                        if s == h["ack"]:
                            k2f.append(now - t)
                            records.append(
                                {"t": time.time() - t0, "ms": 1000 * (now - t), "name": "key->frame", "ok": True}
                            )
                    acked = h["ack"]
        finally:
            if actor is not None:
                actor.cancel()
        span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0
        return {
            "role": role,
            "session": sid,
            "target_fps": hello["fps"],
            "frames": frames,
            "fps": (len(arrivals) - 1) / span if span else 0.0,
            "late": late,
            "key_to_frame_s": k2f,
            "dropped": dropped,
            "records": records,
        }


def gateway_figures(metrics_url: str, wait_s: float = 12.0) -> dict[str, float]:
    """The gateway's live counters and key-to-frame histogram, summed over models and replicas."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    time.sleep(wait_s)  # Ray exports every ~10 s
    text = urllib.request.urlopen(metrics_url, timeout=30).read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            for name in (
                "worldserve_web_live_frames_total",
                "worldserve_web_live_deadline_misses_total",
                "worldserve_web_live_frames_dropped_total",
                "worldserve_web_live_key_to_frame_seconds_sum",
                "worldserve_web_live_key_to_frame_seconds_count",
                "worldserve_dynamics_deadline_steps_total",
            ):
                if s.name.endswith(name):
                    key = name if "deadline_steps" not in name else f"{name}[{s.labels.get('outcome')}]"
                    out[key] = out.get(key, 0.0) + s.value
            for name in TIMINGS:  # the model replicas' own timings: the fleet simulation's service times
                if name in s.name:
                    tail = s.name[s.name.index(name) :]
                    label = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k in TIMING_LABELS)
                    key = f"{tail}[{label}]" if label else tail
                    out[key] = out.get(key, 0.0) + s.value
    return out


TIMINGS = (
    "worldserve_dynamics_model_step_duration_seconds",
    "worldserve_dynamics_batch_size",
    "worldserve_dynamics_queue_wait_seconds",
    "serve_deployment_processing_latency_ms",
)
"""Histograms (sum, count, buckets) kept beside the live figures: model seconds of a batch, its
size, queue wait by priority and time in each deployment's replicas (``loadtest.fleet validate``
reads them)."""
TIMING_LABELS = ("le", "priority", "deployment")


def run_live(ns, app_args: dict, slo: dict, console) -> int:
    """Start a local cluster, play ``ns.users`` live players for ``ns.duration_s`` seconds, report."""
    import requests
    from rich.table import Table

    from loadtest.report import SCALED, plot
    from worldserve.local import local_cluster, replica_counts

    out: Path = ns.out / "live"
    out.mkdir(parents=True, exist_ok=True)
    fps, per = ns.fps, ns.per_session
    overrides = {
        SCALED: {
            "autoscaling_config": {  # the YAML's policy, with delays short enough to show here
                "min_replicas": 1,
                "max_replicas": 3,
                "initial_replicas": 1,
                "target_ongoing_requests": 32,
                "upscale_delay_s": 10,
                "downscale_delay_s": 30,
                "metrics_interval_s": 2,
                "look_back_period_s": 10,
                "policy": {
                    "policy_function": "worldserve.dynamics.autoscale:DeadlineAwarePolicy",
                    "policy_kwargs": {"miss_ratio": 0.1, "min_deadline_steps_per_s": 1.0},
                },
            }
        }
    }
    console.print(f"[bold]live[/]: {ns.users} players at {fps:g} fps, {per} per session, {ns.duration_s:.0f} s")
    with local_cluster(num_cpus=8, workdir=out / "cluster", app_args=app_args, deployment_overrides=overrides) as c:
        key = c.keys["tenant-a"]
        hdr = {"authorization": f"Bearer {key}"}
        sessions = []
        for i in range((ns.users + per - 1) // per):
            r = requests.post(
                c.http + "/v1/sessions",
                json={"prompt": "a red door on the left, grass, day", "seed": i},
                headers=hdr,
                timeout=120,
            )
            r.raise_for_status()
            sessions.append(r.json()["session_id"])
        roles = [(sessions[i // per], "controller" if i % per == 0 else "spectator") for i in range(ns.users)]
        samples: list[dict] = []
        t0 = time.time()

        async def main():
            async def sample():
                while True:
                    try:
                        samples.append({"t": time.time() - t0, **await asyncio.to_thread(replica_counts)})
                    except Exception:
                        pass
                    await asyncio.sleep(1.0)

            sampler = asyncio.create_task(sample())
            try:
                return await asyncio.gather(
                    *(
                        player(c.http.replace("http://", "ws://"), key, sid, role, fps, ns.duration_s, i, t0)
                        for i, (sid, role) in enumerate(roles)
                    ),
                    return_exceptions=True,
                )
            finally:
                sampler.cancel()

        results = asyncio.run(main())
        server = gateway_figures(c.metrics_url)
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    ok = [r for r in results if not isinstance(r, BaseException)]
    k2f = [x for r in ok for x in r["key_to_frame_s"]]
    frames = sum(r["frames"] for r in ok)
    misses = server.get("worldserve_web_live_deadline_misses_total", 0.0)
    produced = server.get("worldserve_web_live_frames_total", 0.0)
    summary = {
        "players": ns.users,
        "per_session": per,
        "target_fps": fps,
        "duration_s": ns.duration_s,
        "errors": errors,
        "frames_received": frames,
        "fps_per_player": {
            "mean": sum(r["fps"] for r in ok) / max(1, len(ok)),
            "min": min((r["fps"] for r in ok), default=0.0),
        },
        "key_to_frame_ms": {
            "p50": 1000 * percentile(k2f, 50),
            "p95": 1000 * percentile(k2f, 95),
            "p99": 1000 * percentile(k2f, 99),
            "count": len(k2f),
        },
        "late_frame_ratio": sum(r["late"] for r in ok) / max(1, frames),
        "frames_dropped_for_slow_players": sum(r["dropped"] for r in ok),
        "deadline_miss_ratio": misses / max(1.0, misses + produced),
        "server": server,
        "replicas_peak": max((s.get(f"dynamics/{SCALED}", 0) for s in samples), default=0),
    }
    table = Table(title=f"live: {ns.users} players at {fps:g} fps")
    for col in ("figure", "value"):
        table.add_column(col)
    for k in ("fps_per_player", "key_to_frame_ms", "late_frame_ratio", "deadline_miss_ratio", "replicas_peak"):
        table.add_row(k, json.dumps(summary[k], default=lambda x: round(x, 3)))
    console.print(table)
    checks = [
        ("deadline_miss_ratio", summary["deadline_miss_ratio"], slo.get("max_deadline_miss_ratio", 1.0), "<="),
        ("key_to_frame p99 ms", summary["key_to_frame_ms"]["p99"], slo.get("key_to_frame_p99_ms", 1e9), "<="),
        ("min fps per player", summary["fps_per_player"]["min"], slo.get("min_fps", 0.0), ">="),
        ("errors", float(len(errors)), 0.0, "<="),
    ]
    passed = True
    for name, got, bound, op in checks:
        good = got <= bound if op == "<=" else got >= bound
        passed &= good
        console.print(f"SLO {name}: {got:.3f} {op} {bound:g} {'ok' if good else '[red]MISSED[/]'}")
    (out / "report.json").write_text(json.dumps({**summary, "replica_samples": samples}, indent=1, default=float))
    png = plot(
        [x for r in ok for x in r["records"]],
        samples,
        out / "latency_replicas.png",
        f"worldserve load: live, {ns.users} players at {fps:g} fps",
    )
    console.print(f"wrote {out / 'report.json'}, {png}")
    return 0 if passed else 1
