"""Node loss, as a script: a local Ray cluster of two nodes on this machine (a head, and a worker
raylet started by ``ray start --block`` in a session of its own, with a ``worker_node`` resource),
the serve config deployed over both (the default model's two replicas spread one per node, the
gRPC proxy on the head only), 8 SDK clients stepping their sessions; then the worker node's
whole process group (``ray start``, its raylet, agents and every worker) is SIGKILLed.

Prints one JSON line of figures: acked steps per session, what the store holds, the seconds until
every session stepped again, and until Serve had its replica count back. Run by
``test_node_loss.py`` in a child process (pytest's own process is connected to the session
cluster); ``python tests/e2e/node_loss.py`` runs it alone (inside ``scripts/netns-run``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CLIENTS = 8
HEAD_CPUS, WORKER_CPUS = 6, 2  # logical: the head alone can hold every replica
WARM_STEPS = 3  # acked steps per session before the kill
AFTER_STEPS = 3  # acked steps per session after the kill before the clients stop
BOUND_S = 90.0  # the kill and the recovery, at most
GCS_DEAD_S = 40.0  # after the kill, Ray has dropped the lost node's actors' names by then
PINNED = {  # deployment -> replicas (fixed: "the replica count" is well defined)
    "ImageService": 1,
    "SessionService": 2,
    "DynamicsService": 2,
    "DynamicsModel-platformer": 2,
    "DynamicsModel-platformer-fast": 1,
    "WebGateway": 1,
}


def _ray_exe() -> str:
    return shutil.which("ray") or str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    from worldserve.common.redis_server import free_port

    return free_port()


def _node_ports() -> list[str]:
    """Ports of one node's own servers: two nodes on one machine must not share the defaults."""
    return [
        f"--node-manager-port={_free_port()}",
        f"--object-manager-port={_free_port()}",
        f"--metrics-export-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--dashboard-agent-grpc-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}",
    ]


def start_head(temp_dir: Path, gcs: str, env: dict[str, str]) -> None:
    port = gcs.rpartition(":")[2]
    p = subprocess.run(
        [
            _ray_exe(),
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--port={port}",
            f"--ray-client-server-port={_free_port()}",
            f"--temp-dir={temp_dir}",
            f"--num-cpus={HEAD_CPUS}",
            *_node_ports(),
        ],
        capture_output=True,
        env=env,
        timeout=120,
        text=True,
    )
    if p.returncode != 0:
        raise RuntimeError(f"ray start --head failed: {p.stderr[-2000:]}")


def start_worker(gcs: str, temp_dir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The worker node in a session of its own (its pid is the session id of every process it
    starts: Ray puts them in the group of ``ray start``)."""
    return subprocess.Popen(
        [
            _ray_exe(),
            "start",
            f"--address={gcs}",
            "--node-ip-address=127.0.0.1",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
            f"--num-cpus={WORKER_CPUS}",
            '--resources={"worker_node": 1}',
            "--block",
            *_node_ports(),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def session_pids(sid: int) -> dict[int, str]:
    """pid -> command line of every live process of session ``sid``."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if os.getsid(int(d.name)) != sid:
                continue
            out[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
    return out


def wait_nodes(n: int, timeout_s: float) -> None:
    import ray

    deadline = time.monotonic() + timeout_s
    while sum(1 for x in ray.nodes() if x["Alive"]) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {n} Ray nodes alive after {timeout_s} s")
        time.sleep(0.5)


def deployment_counts() -> dict[str, int]:
    from worldserve.local import replica_counts

    return {k.split("/", 1)[1]: v for k, v in replica_counts().items() if "/" in k}


def run(tmp: Path) -> dict:
    import grpc
    import ray

    from worldserve.cli_cluster import stop_ray_cluster
    from worldserve.client import WorldClient, action
    from worldserve.deploy import load_config
    from worldserve.local import local_cluster
    from worldserve.v1 import dynamics_pb2

    t_start = time.monotonic()
    env = dict(os.environ)
    if env.get("RAY_AUTH_MODE", "token") == "token" and not (
        env.get("RAY_AUTH_TOKEN") or env.get("RAY_AUTH_TOKEN_PATH")
    ):
        # Ray 2.60's token auth: `ray start` wants a token; a fresh machine has none yet
        subprocess.run([_ray_exe(), "get-auth-token", "--generate"], check=True, capture_output=True, env=env)
    head_dir, worker_dir = tmp / "h", tmp / "w"
    gcs = f"127.0.0.1:{_free_port()}"
    yaml = {d["name"]: d for app in load_config()["applications"] for d in app.get("deployments", [])}
    overrides = {
        name: {
            "autoscaling_config": {
                **yaml[name]["autoscaling_config"],
                "min_replicas": n,
                "max_replicas": n,
                "initial_replicas": n,
            }
        }
        for name, n in PINNED.items()
    }
    figures: dict = {}
    worker: subprocess.Popen[bytes] | None = None
    try:
        start_head(head_dir, gcs, env)
        worker = start_worker(gcs, worker_dir, env)
        ray.init(address=gcs, logging_level="ERROR", log_to_driver=False)
        wait_nodes(2, 60)
        ray.shutdown()
        with local_cluster(
            address=gcs,
            workdir=tmp / "ws",
            app_args={"torch_threads": 1},
            deployment_overrides=overrides,
            timeout_s=240,
            text=False,  # no free text here: the language model's start-up is not what this tests
        ) as c:
            figures["cluster_up_s"] = round(time.monotonic() - t_start, 1)
            on_worker = [cmd for cmd in session_pids(worker.pid).values() if cmd.startswith("ray::ServeReplica")]
            figures["worker_replicas"] = sorted(on_worker)
            counts_before = deployment_counts()
            figures["replicas_before"] = counts_before
            key = c.keys["tenant-a"]
            # sessions until each of the default model's two replicas (one per node) serves some
            sessions: dict[str, str] = {}  # session id -> the replica of its first step
            frames: dict[str, dict[int, bytes]] = {}
            acks: dict[str, list[tuple[float, int]]] = {}
            with WorldClient(c.target, key, timeout_s=60) as cl:
                for i in range(4 * CLIENTS):
                    per = {}
                    for r in sessions.values():
                        per[r] = per.get(r, 0) + 1
                    if len(sessions) >= CLIENTS and len(per) == 2 and min(per.values()) >= 2:
                        break
                    s = cl.create_session(prompt="a red box on the left, grass, day", seed=i)
                    r, call = cl.dynamics.Step.with_call(
                        dynamics_pb2.StepRequest(
                            session_id=s.session_id, action=action(["right"]), request_id=f"first-{i}"
                        ),
                        metadata=cl._md("dynamics", s.session_id),
                        timeout=60,
                    )
                    rep = dict(call.trailing_metadata())["worldserve-replica"]
                    if len(sessions) >= CLIENTS and per.get(rep, 0) >= 2:
                        continue  # this replica has enough: wait for one of the other's
                    if len(sessions) >= CLIENTS:  # drop one of the crowded replica's sessions
                        crowded = max(per, key=lambda k: per[k])
                        drop = next(x for x, y in sessions.items() if y == crowded)
                        del sessions[drop], frames[drop], acks[drop]
                    sessions[s.session_id] = rep
                    frames[s.session_id] = {r.step: r.frame.data}
                    acks[s.session_id] = [(time.monotonic(), r.step)]
            figures["sessions_per_replica"] = sorted([list(sessions.values()).count(r) for r in set(sessions.values())])

            stop = threading.Event()
            errors: list[str] = []
            retries: list[int] = []

            def player(sid: str) -> None:
                with WorldClient(c.target, key, timeout_s=20, retry_s=60) as p:
                    try:
                        while not stop.is_set():
                            r = p.step(sid, ["right"])
                            acks[sid].append((time.monotonic(), r.step))
                            frames[sid][r.step] = r.frame.data
                            time.sleep(0.02)
                    except grpc.RpcError as e:
                        errors.append(f"{sid}: {e.code().name}: {e.details()}")
                    retries.append(p.retries)

            threads = [threading.Thread(target=player, args=(sid,), daemon=True) for sid in sessions]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 60
            while min(len(a) for a in acks.values()) < 1 + WARM_STEPS and time.monotonic() < deadline:
                time.sleep(0.05)
            figures["warm"] = min(len(a) for a in acks.values()) >= 1 + WARM_STEPS
            # the node goes: its `ray start`, raylet, agents and workers, all at once
            node = session_pids(worker.pid)
            figures["killed_processes"] = len(node)
            t_kill = time.monotonic()
            os.killpg(worker.pid, signal.SIGKILL)
            for pid in session_pids(worker.pid):  # anything that left the group meanwhile
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            worker.wait(10)
            n_at_kill = {sid: len(a) for sid, a in acks.items()}
            restored_s = None
            dropped = False  # Serve saw the node's replicas go
            deadline = t_kill + BOUND_S
            while time.monotonic() < deadline:
                stepped = all(any(t > t_kill for t, _ in a) for a in acks.values())
                enough = all(len(a) >= n_at_kill[sid] + AFTER_STEPS for sid, a in acks.items())
                if restored_s is None:
                    counts = deployment_counts()
                    dropped = dropped or counts != counts_before
                    if dropped and counts == counts_before:  # every replica back, on the head
                        restored_s = time.monotonic() - t_kill
                if stepped and enough and restored_s is not None:
                    break
                time.sleep(0.2)
            stop.set()
            for t in threads:
                t.join(30)
            figures["players_stuck"] = sum(t.is_alive() for t in threads)
            figures["errors"] = errors
            figures["retries"] = sum(retries)
            figures["replicas_after"] = deployment_counts()
            figures["restored_s"] = None if restored_s is None else round(restored_s, 1)
            resumed = {sid: min((t for t, _ in a if t > t_kill), default=None) for sid, a in acks.items()}
            figures["resume_s"] = {sid[:12]: None if t is None else round(t - t_kill, 2) for sid, t in resumed.items()}
            gaps = [max(b[0] - a[0] for a, b in zip(a, a[1:])) for a in acks.values()]
            figures["max_gap_s"] = round(max(gaps), 2)
            # the replicas that were on the lost node: their names leave Ray once its GCS has
            # declared the node dead (~15 s of missed health checks), which can be after Serve has
            # already replaced them (seen: 6.5 s): wait for that, bounded
            killed: set[str] = set()
            while True:
                for rep in set(sessions.values()):
                    try:
                        ray.get_actor(rep, namespace="serve")
                    except ValueError:
                        killed.add(rep)
                if killed or time.monotonic() > t_kill + GCS_DEAD_S:
                    break
                time.sleep(0.5)
            figures["sessions_on_killed_replica"] = sum(1 for r in sessions.values() if r in killed)
            # what the store holds: every acked step, once, with the frame the client got
            check = {}
            with WorldClient(c.target, key, timeout_s=60, retry_s=30) as cl:
                for sid in sessions:
                    steps = [s for _, s in acks[sid]]
                    stored = cl.get_session(sid).step
                    exported = {e.step: e.frame.data for e in cl.export_session(sid, include_frames=True)}
                    check[sid[:12]] = {
                        "acked": len(steps),
                        "acked_in_order": steps == list(range(1, len(steps) + 1)),
                        "stored_step": stored,
                        "exported_steps": sorted(exported) == list(range(stored + 1)),
                        "frames_match": all(exported.get(k) == v for k, v in frames[sid].items()),
                    }
            figures["sessions"] = check
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        if worker is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
        stop_ray_cluster(str(head_dir), gcs)
        figures["wall_s"] = round(time.monotonic() - t_start, 1)
    return figures


def main() -> None:
    # Ray 2.60: `ray start` turns token auth on; a driver reads RAY_AUTH_MODE when ray is imported
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    # a SIGTERM (the test's time ran out) unwinds through the finally blocks: both nodes stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="wsnl", dir="/tmp"))  # short: Ray's unix sockets live under it
    try:
        figures = run(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
