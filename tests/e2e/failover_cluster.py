"""The child process of tests/e2e/test_redis_failover.py (pytest's own process has already
ray.init'ed the shared cluster): a primary, two replicas and a Sentinel (``EmbeddedSentinel``), a
local cluster on their ``redis+sentinel://`` URL with ``redis_wait_replicas=1``, eight SDK clients
stepping; the primary is SIGKILLed under that load. Prints one JSON line of figures.

    python tests/e2e/failover_cluster.py WORKDIR
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

CLIENTS = 8
BEFORE_KILL = 3  # acknowledged steps each client has before the kill
AFTER_KILL = 3  # ... and needs from Steps begun after it
TIMEOUT_S = 60.0  # from the kill, at most


def main(workdir: Path) -> dict[str, object]:
    import grpc

    from worldserve.client import WorldClient
    from worldserve.common.redis_server import EmbeddedSentinel
    from worldserve.local import local_cluster

    t_start = time.monotonic()
    sentinel = EmbeddedSentinel(workdir / "sentinel", replicas=2, sentinels=1).start()
    try:
        with local_cluster(
            redis_url=sentinel.url,
            workdir=workdir / "cluster",
            num_cpus=4,
            app_args={"torch_threads": 1, "redis_wait_replicas": 1},
            text=False,  # no free text here: the language model's start-up is not what this tests
        ) as c:
            t_up = time.monotonic()
            key = c.keys["tenant-a"]
            # per client: (step, when its Step began, when it was answered)
            acked: list[list[tuple[int, float, float]]] = [[] for _ in range(CLIENTS)]
            errors: list[str] = []
            retries = [0] * CLIENTS
            sids = [""] * CLIENTS
            stop = threading.Event()

            def player(i: int) -> None:
                with WorldClient(c.target, key, timeout_s=30, retry_s=TIMEOUT_S) as w:
                    try:
                        sids[i] = w.create_session(prompt="a red door on the left, grass, day", seed=i).session_id
                        while not stop.is_set():
                            began = time.monotonic()
                            n = w.step(sids[i], ["right"]).step
                            acked[i].append((n, began, time.monotonic()))
                    except grpc.RpcError as e:
                        errors.append(f"client {i}: {e.code()} {e.details()}")
                    retries[i] = w.retries

            threads = [threading.Thread(target=player, args=(i,), daemon=True) for i in range(CLIENTS)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 120
            while min(len(a) for a in acked) < BEFORE_KILL and time.monotonic() < deadline and not errors:
                time.sleep(0.02)
            old = sentinel.kill_primary()
            killed = time.monotonic()
            while time.monotonic() < killed + TIMEOUT_S and not errors:
                if all(sum(b > killed for _, b, _ in a) >= AFTER_KILL for a in acked):
                    break
                time.sleep(0.05)
            stop.set()
            for t in threads:
                t.join(TIMEOUT_S)
            new = sentinel.primary_port()
            try:  # a failed read still reports the figures (which clients came back, and when)
                with WorldClient(c.target, key, timeout_s=30) as w:
                    landed = [w.get_session(s).step for s in sids]
            except grpc.RpcError as e:
                errors.append(f"read after the players stopped: {e.code()} {e.details()}")
                landed = [len(a) for a in acked]
            lost = sum(1 for i, a in enumerate(acked) for n, _, _ in a if n > landed[i])
            exactly_once = all([n for n, _, _ in a] == list(range(1, len(a) + 1)) for a in acked)
            # a client is back when a Step it began after the kill is answered (the new primary's)
            back = [min((d for _, b, d in a if b > killed), default=None) for a in acked]
            recovered = [d - killed for d in back if d is not None]
            return {
                "startup_s": round(t_up - t_start, 1),
                "acked": sum(len(a) for a in acked),
                "acked_after_kill": sum(1 for a in acked for _, b, _ in a if b > killed),
                "lost_acked": lost,
                "exactly_once": exactly_once,
                "clients_back": len(recovered),
                "recover_s_max": round(max(recovered), 2) if recovered else None,
                "recover_s_min": round(min(recovered), 2) if recovered else None,
                "sdk_retries": sum(retries),
                "errors": errors[:3],
                "primary": [old, new],
                "wall_s": round(time.monotonic() - t_start, 1),
            }
    finally:
        sentinel.stop()


if __name__ == "__main__":
    print("FIGURES " + json.dumps(main(Path(sys.argv[1]))), flush=True)
