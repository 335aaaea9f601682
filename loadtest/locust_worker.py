"""Runs one Locust scenario headless and writes every request as a JSON line.

    python -m loadtest.locust_worker --scenario farm --target 127.0.0.1:9000 --keys keys.json \
        --users 32 --spawn-rate 8 --duration-s 60 --out requests.jsonl

Bounded: it stops after --duration-s (and after --max-requests, if given). Run by loadtest.run.
"""

from __future__ import annotations

import argparse
import json
import time

import gevent
from locust.env import Environment

from loadtest import scenarios  # first: gevent-enables grpc before anything else imports it


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", required=True, choices=sorted(scenarios.SCENARIOS))
    ap.add_argument("--target", required=True)
    ap.add_argument("--keys", required=True, help="JSON file: tenant -> API key")
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--spawn-rate", type=float, default=8)
    ap.add_argument("--duration-s", type=float, default=60)
    ap.add_argument("--max-requests", type=int, default=100_000)
    ap.add_argument("--out", required=True)
    ap.add_argument("--sessions", help="file of session ids, one a line, for scenarios that step existing sessions")
    ap.add_argument(
        "--user-class",
        help="run only this user class of the scenario (loadtest.run starts one worker process per class)",
    )
    ns = ap.parse_args(argv)
    if not ns.target.startswith(("127.", "localhost", "[::1]")):
        raise SystemExit(f"refusing target {ns.target!r}: load tests stay on loopback")

    keys = json.loads(open(ns.keys).read())
    classes = scenarios.SCENARIOS[ns.scenario]
    if ns.user_class:
        classes = [c for c in classes if c.__name__ == ns.user_class]
        if not classes:
            raise SystemExit(f"scenario {ns.scenario!r} has no user class {ns.user_class!r}")
    pool = open(ns.sessions).read().split() if ns.sessions else []
    for cls in classes:
        cls.keys = keys
        cls.session_pool = pool
    env = Environment(user_classes=classes, host=ns.target)
    t0 = time.time()
    out = open(ns.out, "w")
    count = [0]

    def on_request(request_type, name, response_time, response_length, exception, context, **kw):
        out.write(
            json.dumps(
                {
                    "t": time.time() - t0,
                    "name": name,
                    "ms": response_time,
                    "ok": exception is None,
                    "code": context.get("code", "OK"),
                    "tenant": context.get("tenant"),
                    "deadline_miss": context.get("deadline_miss", False),
                }
            )
            + "\n"
        )
        count[0] += 1
        if count[0] >= ns.max_requests:
            env.runner.quit()

    env.events.request.add_listener(on_request)
    runner = env.create_local_runner()
    runner.start(ns.users, spawn_rate=ns.spawn_rate)
    gevent.spawn_later(ns.duration_s, runner.quit)
    runner.greenlet.join()
    out.close()
    print(json.dumps({"requests": count[0], "elapsed_s": time.time() - t0}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
