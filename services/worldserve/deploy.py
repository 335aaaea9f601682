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
    """Start Serve (gRPC proxy included) on the connected Ray cluster and deploy every app.

    Public Serve API only: ``serve.start`` with the config's proxy options, each application
    built from its ``import_path`` builder with its ``args`` and each listed deployment's
    options applied with ``Deployment.options`` (see :func:`build_applications`), then
    ``serve.run_many``. Returns once the apps are submitted; :func:`wait_healthy` waits for them.
    """
    from ray import serve

    targets = build_applications(cfg)  # a bad config or builder fails here, before Serve starts
    serve.start(
        proxy_location=cfg.get("proxy_location"),
        http_options=cfg.get("http_options"),
        grpc_options=cfg.get("grpc_options"),
        logging_config=cfg.get("logging_config"),
        tracing_config=cfg.get("tracing_config"),
        controller_options=cfg.get("controller_options"),
    )
    serve.run_many(targets, wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)


# What a serve config may hold that `serve.start` / `serve.run_many` / `Deployment.options` cannot
# apply (Ray 2.60): refused rather than silently dropped.
UNSUPPORTED_TOP = ("target_capacity",)
UNSUPPORTED_APP = ("runtime_env", "autoscaling_policy", "host", "port")
UNSUPPORTED_DEPLOYMENT = ("rolling_update_percentage",)


def _validate(cfg: dict):
    """The config as Serve's own schema reads it (the checks `serve deploy` would make)."""
    from ray.serve.schema import DeploymentSchema, ServeApplicationSchema, ServeDeploySchema

    # Serve's schemas ignore unknown fields: a misspelled option would be dropped without a word.
    unknown = [k for k in cfg if k not in ServeDeploySchema.model_fields]
    for app in cfg.get("applications") or []:
        unknown += [f"applications[{app.get('name')}].{k}" for k in app if k not in ServeApplicationSchema.model_fields]
        for d in app.get("deployments") or []:
            unknown += [
                f"applications[{app.get('name')}].deployments[{d.get('name')}].{k}"
                for k in d
                if k not in DeploymentSchema.model_fields
            ]
    if unknown:
        raise ValueError(f"serve config: unknown field(s) {', '.join(unknown)}")
    schema = ServeDeploySchema.model_validate(cfg)
    top = schema.model_dump(exclude_unset=True)
    bad = [f"{k}" for k in UNSUPPORTED_TOP if top.get(k) is not None]
    for app in schema.applications:
        a = app.model_dump(exclude_unset=True)
        bad += [f"applications[{app.name}].{k}" for k in UNSUPPORTED_APP if a.get(k) is not None]
        for d in a.get("deployments", []):
            bad += [f"applications[{app.name}].deployments[{d['name']}].{k}" for k in UNSUPPORTED_DEPLOYMENT if k in d]
    if bad:
        raise ValueError(
            f"serve config: {', '.join(bad)} cannot be applied by worldserve.deploy "
            "(Serve's Python API has no equivalent); remove them or deploy the config with `serve deploy`"
        )
    return schema


def build_applications(cfg: dict) -> list:
    """One ``serve.RunTarget`` per application of the config: its builder called with its ``args``,
    then every deployment the config lists given the config's options (what the controller does
    for a deployed config: the config's fields replace the code's, ``ray_actor_options`` whole)."""
    from ray import serve

    schema = _validate(cfg)
    default_logging = cfg.get("logging_config")
    targets = []
    for app in schema.applications:
        spec = app.model_dump(exclude_unset=True)
        overrides = {d.pop("name"): d for d in spec.get("deployments", [])}
        built = _call_builder(app.import_path, spec.get("args") or {})
        seen: dict[str, Any] = {}
        built = _with_options(built, overrides, seen, {})
        missing = sorted(set(overrides) - set(seen))
        if missing:
            raise ValueError(
                f"application {app.name!r}: the config lists deployment(s) {missing} that "
                f"{app.import_path} does not build; it builds {sorted(seen)}"
            )
        targets.append(
            serve.RunTarget(
                target=built,
                name=app.name,
                route_prefix=app.route_prefix,
                logging_config=spec.get("logging_config") or default_logging,
                external_scaler_enabled=spec.get("external_scaler_enabled", False),
            )
        )
    return targets


def _call_builder(import_path: str, args: dict[str, Any]):
    """The application at ``import_path``: a built ``Application``, or a builder called with ``args``
    (converted to its pydantic model when it takes one), as Serve does for a config."""
    import importlib
    import inspect

    from pydantic import BaseModel
    from ray.serve import Application

    module, _, attr = import_path.partition(":") if ":" in import_path else import_path.rpartition(".")
    obj = getattr(importlib.import_module(module), attr)
    if isinstance(obj, Application):
        if args:
            raise ValueError(f"{import_path} is a built application: it takes no args")
        return obj
    params = list(inspect.signature(obj).parameters.values())
    if len(params) != 1:
        raise TypeError(f"{import_path}: an application builder takes exactly one parameter (the args)")
    ann = params[0].annotation
    app = obj(ann.model_validate(args) if inspect.isclass(ann) and issubclass(ann, BaseModel) else args)
    if not isinstance(app, Application):
        raise TypeError(f"{import_path} returned {type(app).__name__}, not a serve Application")
    return app


def _with_options(app, overrides: dict[str, dict], seen: dict[str, Any], memo: dict[int, Any]):
    """``app`` rebound with ``overrides[name]`` applied (``Deployment.options``) to every deployment
    named there, through the whole graph (applications bound into others' init args, in lists,
    tuples and dicts); ``seen`` collects every deployment name met."""
    if id(app) in memo:
        return memo[id(app)]
    dep = bound_deployment(app)
    seen[dep.name] = dep
    args = _rebind(dep.init_args, overrides, seen, memo)
    kwargs = _rebind(dep.init_kwargs, overrides, seen, memo)
    if dep.name in overrides:
        dep = dep.options(**overrides[dep.name])
    memo[id(app)] = out = dep.bind(*args, **kwargs)
    return out


def _rebind(value, overrides, seen, memo):
    from ray.serve import Application

    if isinstance(value, Application):
        return _with_options(value, overrides, seen, memo)
    if type(value) is dict:
        return {k: _rebind(v, overrides, seen, memo) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_rebind(v, overrides, seen, memo) for v in value)
    return value  # other objects are passed as they are (a deployment in one gets no options)


def bound_deployment(app):
    """The ``Deployment`` an ``Application`` (``Deployment.bind(...)``) was bound from.

    The one private access of this module: Ray 2.60 has no public accessor from a
    ``ray.serve.Application`` to its bound ``Deployment`` (Serve's own ``build_app`` and config
    path read ``Application._bound_deployment``), and no public way to set per-deployment options
    on an application a builder returned. tests/test_deploy.py fails when Ray changes this
    attribute, or adds a public accessor to use instead.
    """
    return app._bound_deployment


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
