"""Soak: long-lived sessions stepped for minutes; does Redis memory stay flat?

    python -m loadtest.soak --minutes 10 --sessions 8 [--no-archive] --out out/soak

Starts a local cluster (run it under scripts/netns-run), steps ``--sessions`` sessions together
(one StepBatch a step, as an evaluation farm does) for ``--minutes``, and samples Redis every 10 s:
``used_memory`` and the number of fields of the sessions' logs. ``--no-archive`` turns the
trajectory archive off (every step stays in Redis: the "before" of issue 12). Writes
``soak.json`` and ``soak.png``; prints the first and last samples and the growth per minute.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--no-archive", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("out/soak"))
    ns = ap.parse_args(argv)
    import redis

    from worldserve.client import WorldClient, new_request_id
    from worldserve.local import local_cluster
    from worldserve.v1 import common_pb2, dynamics_pb2

    label = "no-archive" if ns.no_archive else "archive"
    out = ns.out / label
    out.mkdir(parents=True, exist_ok=True)
    args = {"archive_url": ""} if ns.no_archive else {}
    samples: list[dict] = []
    with local_cluster(tenants=("soak",), app_args=args, workdir=Path(tempfile.mkdtemp(prefix="wsoak-"))) as c:
        r = redis.Redis.from_url(c.redis.url)
        with WorldClient(c.target, c.keys["soak"], timeout_s=120) as wc:
            sids = [
                wc.create_session(prompt="a red door on the left, grass, day", seed=i).session_id
                for i in range(ns.sessions)
            ]
            stop = time.monotonic() + 60 * ns.minutes
            steps = [0]
            t0 = time.monotonic()

            def sample() -> None:
                fields = sum(r.hlen(f"ws:soak:{{{s}}}:log") for s in sids)
                samples.append(
                    {
                        "t_s": time.monotonic() - t0,
                        "steps": steps[0] * len(sids),
                        "used_memory": int(r.info("memory")["used_memory"]),
                        "log_fields": fields,
                    }
                )

            def sampler() -> None:
                while time.monotonic() < stop:
                    sample()
                    time.sleep(10)

            th = threading.Thread(target=sampler, daemon=True)
            th.start()
            keys = ["right", "right", "left", "up", "right", "jump"]
            while time.monotonic() < stop:
                k = keys[steps[0] % len(keys)]
                reqs = [
                    dynamics_pb2.StepRequest(
                        session_id=s, action=common_pb2.Action(keys=[k]), request_id=new_request_id()
                    )
                    for s in sids
                ]
                res = wc.step_batch(reqs)
                if any(x.HasField("error") for x in res.results):
                    raise SystemExit(f"a step failed: {[x.error.message for x in res.results if x.HasField('error')]}")
                steps[0] += 1
            th.join(15)
            sample()
    first, last = samples[0], samples[-1]
    minutes = (last["t_s"] - first["t_s"]) / 60
    growth = (last["used_memory"] - first["used_memory"]) / max(minutes, 1e-9) / 2**20
    report = {
        "label": label,
        "sessions": ns.sessions,
        "minutes": ns.minutes,
        "samples": samples,
        "redis_growth_mib_per_min": growth,
    }
    (out / "soak.json").write_text(json.dumps(report, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.plot([s["t_s"] / 60 for s in samples], [s["used_memory"] / 2**20 for s in samples])
        ax.set(title=f"Redis used_memory, {ns.sessions} sessions ({label})", xlabel="minutes", ylabel="MiB")
        fig.tight_layout()
        fig.savefig(out / "soak.png", dpi=100)
    except ImportError:
        pass
    print(
        f"{label}: {last['steps']} steps in {minutes:.1f} min; Redis {first['used_memory'] / 2**20:.1f} -> "
        f"{last['used_memory'] / 2**20:.1f} MiB ({growth:+.2f} MiB/min); log fields {first['log_fields']} -> "
        f"{last['log_fields']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
