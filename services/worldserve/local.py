"""A whole local cluster in one context manager: embedded Redis, API keys, a local Ray, the serve
config deployed and healthy. The end-to-end tests, the benchmark and the load tests share it.

Serve's gRPC proxy binds all interfaces: run it inside a private network namespace
(scripts/netns-run) when nothing may listen beyond loopback.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worldserve.common.auth import add_key, new_key
from worldserve.common.redis_server import EmbeddedRedis, free_port


@dataclass
class LocalCluster:
    target: str  # gRPC endpoint of Serve's proxy
    keys: dict[str, str]  # tenant -> API key
    redis: EmbeddedRedis | None  # the embedded Redis; None: the cluster runs on ``redis_url``
    metrics_url: str  # the Ray node's Prometheus endpoint
    workdir: Path
    http: str = ""  # Serve's HTTP proxy: the web gateway (play page, live WebSocket play)
    redis_url: str = ""  # the session Redis the cluster runs on
    extra: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def local_cluster(
    *,
    tenants: tuple[str, ...] = ("tenant-a", "tenant-b"),
    app_args: Mapping[str, Any] | None = None,
    deployment_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    num_cpus: int | None = None,
    workdir: str | Path | None = None,
    timeout_s: float = 600,
    address: str | None = None,
    redis_url: str = "",
    extra_models: list[dict[str, Any]] | None = None,
    text: bool = True,
) -> Iterator[LocalCluster]:
    """``address``: connect to a running Ray cluster (e.g. several nodes started with ``ray start``)
    instead of starting one; ``num_cpus`` is then that cluster's, ``metrics_url`` is empty (each
    node exports on the port it was started with), and leaving disconnects without stopping it.
    ``redis_url``: a Redis already running (e.g. an ``EmbeddedSentinel``'s ``redis+sentinel://``)
    instead of an embedded one started here. ``extra_models``: served models beside the config's
    (``deploy.load_config``), each its own deployment. ``text=False``: without the text app."""
    import ray
    from ray import serve

    from worldserve import deploy as dep

    tmp = Path(workdir or tempfile.mkdtemp(prefix="worldserve-"))
    redis = None if redis_url else EmbeddedRedis(tmp / "redis").start()
    redis_url = redis_url or (redis.url if redis else "")
    keys = {t: new_key() for t in tenants}
    for t, k in keys.items():
        add_key(tmp / "keys.json", t, k)
    grpc_port, metrics_port, http_port = free_port(), free_port(), free_port()
    try:
        if address:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        else:
            ray.init(
                num_cpus=num_cpus,
                include_dashboard=False,
                logging_level="ERROR",
                log_to_driver=False,
                _metrics_export_port=metrics_port,
            )
        cfg = dep.load_config(
            app_args={
                "redis_url": redis_url,
                "api_keys_file": str(tmp / "keys.json"),
                "archive_url": f"file://{tmp / 'archive'}",
                **(app_args or {}),
            },
            grpc_port=grpc_port,
            http_port=http_port,
            deployment_overrides={k: dict(v) for k, v in (deployment_overrides or {}).items()},
            extra_models=extra_models,
            text=text,
        )
        # A local cluster shares a few cores with its clients: give the proxy longer than Ray's 5 s
        # per readiness check before the controller kills it and starts another (env_vars of the
        # controller: the one runtime_env field Serve's ControllerOptions takes)
        env = cfg.setdefault("controller_options", {}).setdefault("runtime_env", {}).setdefault("env_vars", {})
        env.setdefault(
            "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", os.environ.get("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30")
        )
        dep.deploy(cfg)
        dep.wait_healthy(timeout_s, apps=dep.app_names(cfg))
        yield LocalCluster(
            target=f"127.0.0.1:{grpc_port}",
            keys=keys,
            redis=redis,
            metrics_url="" if address else f"http://127.0.0.1:{metrics_port}/metrics",
            workdir=tmp,
            http=f"http://127.0.0.1:{http_port}",
            redis_url=redis_url,
        )
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        with contextlib.suppress(Exception):
            ray.shutdown()
        if redis is not None:
            redis.stop()


def replica_counts(apps: tuple[str, ...] = ("image", "sessions", "dynamics", "text", "web")) -> dict[str, int]:
    """RUNNING replicas per application and per deployment (``"<app>/<deployment>"``), from Serve's
    own status."""
    from ray import serve

    st = serve.status()
    out = {}
    for name in apps:
        app = st.applications.get(name)
        n = 0
        if app is not None:
            for dname, d in app.deployments.items():
                k = sum(c for state, c in d.replica_states.items() if getattr(state, "value", state) == "RUNNING")
                out[f"{name}/{dname}"] = k
                n += k
        out[name] = n
    return out
