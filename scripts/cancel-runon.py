#!/usr/bin/env python
"""How many cancelled Rollouts (and Plays) run on with nobody listening: a fresh local cluster,
then rounds of N streams of 200 actions, each cancelled by its client after 2 frames; a stream
"ran on" when its session lands more than 2 steps past the last frame the client received.

    PYTHONPATH=services:. flock /tmp/heavy.lock scripts/netns-run python scripts/cancel-runon.py \
        --rounds 2 --n 20 [--kind rollout|play] [--channel shared|fresh] [--serial]

Round 1 goes through a fresh proxy (a new cluster); later rounds through a warm one. ``--channel
fresh`` opens a new gRPC channel per stream (a fresh connection to the proxy); ``shared`` one per
round. ``--no-fix`` deploys without worldserve.common.proxy_streams (the before figure). Prints
one line per round (with every stream's overshoot: steps landed past its last received frame)
and the total.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time

ACTIONS = 200
SLACK = 2  # steps a stream may take after its client's last received frame


def one(target: str, key: str, client, kind: str, seed: int, fresh: bool) -> tuple[str, int]:
    """Start a stream, take 2 frames, cancel: (session id, step of the last frame received)."""
    from worldserve.client import WorldClient, action
    from worldserve.v1 import dynamics_pb2

    c = WorldClient(target, key, timeout_s=120) if fresh else client
    s = client.create_session(prompt="cancel", seed=seed)
    if kind == "rollout":
        stream = c.rollout(s.session_id, ["right"] * ACTIONS)
    else:

        def msgs():
            for _ in range(ACTIONS):
                yield dynamics_pb2.PlayRequest(session_id=s.session_id, action=action(["right"]))

        stream = c.dynamics.Play(msgs(), metadata=c._md("dynamics", s.session_id), timeout=120)
    got = [next(stream).step for _ in range(2)]
    stream.cancel()
    if fresh:
        c.close()
    return s.session_id, got[-1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--kind", choices=("rollout", "play"), default="rollout")
    ap.add_argument("--channel", default="shared", help="shared|fresh, or a comma list (round i takes item i %% len)")
    ap.add_argument("--serial", action="store_true", help="one stream at a time (default: all of a round at once)")
    ap.add_argument("--no-fix", action="store_true", help="without worldserve.common.proxy_streams")
    ap.add_argument("--wait-s", type=float, default=4.0, help="wait after the cancels before reading the sessions")
    a = ap.parse_args()

    from worldserve import deploy
    from worldserve.client import WorldClient
    from worldserve.local import local_cluster

    if a.no_fix:
        load = deploy.load_config

        def without_fix(*args, **kwargs):
            cfg = load(*args, **kwargs)
            fns = cfg["grpc_options"]["grpc_servicer_functions"]
            fns[:] = [f for f in fns if "proxy_streams" not in f]
            return cfg

        deploy.load_config = without_fix  # type: ignore[assignment]

    overrides = {  # the shape of tests/e2e/conftest.py's session cluster
        d: {"autoscaling_config": {"min_replicas": n, "max_replicas": n, "initial_replicas": n}}
        for d, n in (("DynamicsModel-platformer", 2), ("DynamicsService", 2), ("SessionService", 2))
    }
    total = ran_on_total = 0
    t0 = time.monotonic()
    with local_cluster(
        num_cpus=6,
        workdir=tempfile.mkdtemp(prefix="cancel-runon-"),
        app_args={"torch_threads": 1},
        deployment_overrides=overrides,
    ) as cl:
        print(f"cluster up in {time.monotonic() - t0:.0f}s", flush=True)
        key = cl.keys["tenant-a"]
        channels = a.channel.split(",")
        assert set(channels) <= {"shared", "fresh"}, a.channel
        for rnd in range(a.rounds):
            channel = channels[rnd % len(channels)]
            with WorldClient(cl.target, key, timeout_s=120) as client:
                results: list[tuple[str, int]] = []
                errors: list[BaseException] = []

                def run(i: int, rnd: int = rnd, client=client, results=results, errors=errors, channel=channel) -> None:
                    try:
                        results.append(one(cl.target, key, client, a.kind, rnd * 1000 + i, channel == "fresh"))
                    except BaseException as e:  # reported below
                        errors.append(e)

                threads = [threading.Thread(target=run, args=(i,)) for i in range(a.n)]
                for t in threads:
                    t.start()
                    if a.serial:
                        t.join()
                for t in threads:
                    t.join()
                time.sleep(a.wait_s)
                first = {sid: client.get_session(sid).step for sid, _ in results}
                time.sleep(a.wait_s)
                ran_on, over = [], []
                for sid, last in results:
                    landed = client.get_session(sid).step
                    over.append(landed - last)
                    if landed > last + SLACK:
                        ran_on.append((last, first[sid], landed))
                print(
                    f"round {rnd + 1} ({'fresh' if rnd == 0 else 'warm'} proxy, {a.kind}, channel={channel}, "
                    f"{'no fix, ' if a.no_fix else ''}"
                    f"{'serial' if a.serial else 'concurrent'}): {len(ran_on)} of {len(results)} ran on "
                    f"(last received, landed after {a.wait_s:.0f}s, after {2 * a.wait_s:.0f}s): {ran_on}; "
                    f"overshoot of each: {sorted(over)}; errors: {[repr(e)[:120] for e in errors]}",
                    flush=True,
                )
                total += len(results)
                ran_on_total += len(ran_on)
    print(f"total: {ran_on_total} of {total} ran on", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
