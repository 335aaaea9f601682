"""Deploy the serve config onto a running Ray cluster, and wait until it is healthy.

The same path serves `worldserve up`, the end-to-end tests and the benchmark: the YAML of
deploy/serve/worldserve.yaml, with per-run values (redis_url, api_keys_file, ports) merged in.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import yaml

REPO_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "serve" / "worldserve.yaml"
APPS = ("image", "sessions", "dynamics", "web")


def load_config(
    path: str | Path | None = None,
    *,
    app_args: dict[str, Any] | None = None,
    grpc_port: int | None = None,
    http_port: int | None = None,
    http_host: str | None = "127.0.0.1",
    deployment_overrides: dict[str, dict[str, Any]] | None = None,
) -> dict:
    path = Path(path) if path else REPO_CONFIG
    if not path.exists():
        raise FileNotFoundError(f"serve config {path} not found; pass --config")
    cfg = yaml.safe_load(path.read_text())
    cfg = copy.deepcopy(cfg)
    if grpc_port is not None:
        cfg["grpc_options"]["port"] = grpc_port
    if http_port is not None:
        cfg["http_options"]["port"] = http_port
    if http_host is not None:  # local runs: loopback only (Serve's gRPC proxy still binds all interfaces)
        cfg["http_options"]["host"] = http_host
    for app in cfg["applications"]:
        app.setdefault("args", {})
        app["args"].update(app_args or {})
        if app["name"] == "sessions":
            app["args"]["image_app"] = app["args"].get("image_app", "image")
            app["args"]["dynamics_app"] = app["args"].get("dynamics_app", "dynamics")
        for dep in app.get("deployments", []):
            dep.update((deployment_overrides or {}).get(dep["name"], {}))
    return cfg


def deploy(cfg: dict) -> None:
    """Start Serve (gRPC proxy included) on the connected Ray cluster and deploy every app."""
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(cfg)
    client = serve_start(
        http_options=cfg.get("http_options"),
        grpc_options=cfg.get("grpc_options"),
        global_logging_config=cfg.get("logging_config"),
    )
    client.deploy_apps(schema)


def wait_healthy(timeout_s: float = 300.0, apps: tuple[str, ...] = APPS, progress=None) -> dict:
    """Block until every app is RUNNING; raise with Serve's own message when one fails."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    last: dict = {}
    while time.monotonic() < deadline:
        st = serve.status()
        last = {name: st.applications[name].status for name in apps if name in st.applications}
        if progress is not None:
            progress(last)
        failed = [n for n, s in last.items() if s in ("DEPLOY_FAILED", "UNHEALTHY")]
        if failed:
            msgs = "; ".join(
                f"{n}: {st.applications[n].message} "
                + " ".join(f"[{d}: {ds.message}]" for d, ds in st.applications[n].deployments.items() if ds.message)
                for n in failed
            )
            raise RuntimeError(f"serve applications failed: {msgs}")
        if len(last) == len(apps) and all(s == "RUNNING" for s in last.values()):
            return last
        time.sleep(1.0)
    raise TimeoutError(f"serve applications not RUNNING after {timeout_s} s: {last}")
