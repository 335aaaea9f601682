"""Redis failover under load, end to end: a local cluster whose session Redis is a primary, two
replicas and a Sentinel (``redis+sentinel://``, ``redis_wait_replicas=1``); eight SDK clients step
while the primary is SIGKILLed. Sentinel promotes a replica, every replica's store reconnects to it
by itself, and no acknowledged step is lost (the documented window with ``redis_wait_replicas=1``:
none), none applied twice, every client steps again.

pytest's process has already ray.init'ed the shared cluster, so this cluster (with its own Redis
and ports) runs in a child process: tests/e2e/failover_cluster.py, which prints its figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_steps_through_a_redis_primary_sigkill_lose_none_acknowledged(tmp_path):
    env = dict(os.environ, RAY_ADDRESS="local")  # a new Ray instance, never the shared one
    script = Path(__file__).with_name("failover_cluster.py")
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    lines = [x for x in out.stdout.splitlines() if x.startswith("FIGURES ")]
    assert out.returncode == 0 and lines, f"rc {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    f = json.loads(lines[-1].removeprefix("FIGURES "))
    print("\nredis failover e2e:", json.dumps(f))
    assert not f["errors"], f
    assert f["primary"][0] != f["primary"][1], f  # Sentinel promoted a replica
    assert f["clients_back"] == 8 and f["acked_after_kill"] >= 8 * 3, f  # every client steps again
    assert f["lost_acked"] == 0, f  # redis_wait_replicas=1: no acknowledged step is lost
    assert f["exactly_once"], f  # each client's steps are 1..n: none lost, none applied twice
    assert f["recover_s_max"] < 20, f
