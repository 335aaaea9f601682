"""Issue 23, node loss: a two-node local Ray cluster (head + worker raylet on this machine, the
default model's replicas on both) under 8 stepping SDK clients; the worker node's raylet and every
process of it are SIGKILLed. Nothing acknowledged is lost, every session steps again within 15 s,
and Serve gets its replica count back on the head.

Its own cluster, with its own Redis and ports, so it runs in a child process (tests/e2e/node_loss.py:
pytest's process is connected to the session cluster) that prints its figures as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).with_name("node_loss.py")


def test_losing_a_node_loses_no_acknowledged_step_and_serve_restores_its_replicas():
    if os.environ.get("WORLDSERVE_SKIP_E2E") == "1":
        pytest.skip("WORLDSERVE_SKIP_E2E=1")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # never the session cluster
    p = subprocess.Popen(
        [sys.executable, str(SCRIPT)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        out, err = p.communicate(timeout=420)
    except subprocess.TimeoutExpired:
        p.terminate()  # the script stops both its nodes on SIGTERM
        out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err[-4000:]
    f = json.loads(out.strip().splitlines()[-1])
    print(
        f"\nnode loss: cluster up {f['cluster_up_s']} s; {f['killed_processes']} processes killed; "
        f"{f['sessions_on_killed_replica']}/8 sessions on the lost replica; every session stepped again "
        f"after {max((t for t in f['resume_s'].values() if t is not None), default=None)} s (longest gap {f['max_gap_s']} s, {f['retries']} SDK retries); "
        f"replica count back after {f['restored_s']} s; wall {f['wall_s']} s"
    )
    # the default model's replicas were on both nodes, and the lost one served some sessions
    assert "ray::ServeReplica:dynamics:DynamicsModel-platformer" in f["worker_replicas"], f["worker_replicas"]
    assert f["replicas_before"]["DynamicsModel-platformer"] == 2, f["replicas_before"]
    assert f["warm"] and f["sessions_on_killed_replica"] >= 1, (f["sessions_per_replica"], f["worker_replicas"])
    # nothing acknowledged is lost: every session's stored step is its acked count, each step once,
    # and the store holds the frame the client was given for every acked step
    assert not f["errors"] and f["players_stuck"] == 0, f
    assert len(f["sessions"]) == 8
    for sid, s in f["sessions"].items():
        assert s["acked_in_order"] and s["stored_step"] == s["acked"], (sid, s)
        assert s["exported_steps"] and s["frames_match"], (sid, s)
    # every session steps again within 15 s of the kill
    assert all(t is not None and t <= 15.0 for t in f["resume_s"].values()), f["resume_s"]
    # Serve saw the replicas go and started them again on the head: the same count per deployment
    assert f["restored_s"] is not None, f
    assert f["replicas_after"] == f["replicas_before"], f
