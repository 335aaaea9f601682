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

from worldserve.common.serving import OPTIONS_ARG

REPO_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "serve" / "worldserve.yaml"
APPS = ("image", "sessions", "dynamics", "text", "web")
TEXT_APP = "text"
"""The text app (worldserve.text): served by default; ``load_config(text=False)`` leaves it out."""


def load_config(
    path: str | Path | None = None,
    *,
    app_args: dict[str, Any] | None = None,
    grpc_port: int | None = None,
    http_port: int | None = None,
    http_host: str | None = "127.0.0.1",
    deployment_overrides: dict[str, dict[str, Any]] | None = None,
    extra_models: list[dict[str, Any]] | None = None,
    text: bool = True,
) -> dict:
    """The serve config at ``path`` (default: the repository's) with this run's values merged in:
    ``app_args`` into every application's args, ports, ``deployment_overrides`` (deployment name
    -> options) over the deployments' options. ``extra_models``: more served models (``ModelSpec``
    mappings) appended to the dynamics application's ``models``, each with a ``DynamicsModel-<name>``
    deployment whose options are a copy of the config's first model deployment's (overridable).
    ``text=False``: without the text app (every app's ``text_app`` emptied: free text answers
    FAILED_PRECONDITION "text understanding is not deployed")."""
    path = Path(path) if path else REPO_CONFIG
    if not path.exists():
        raise FileNotFoundError(f"serve config {path} not found; pass --config")
    cfg = yaml.safe_load(path.read_text())
    cfg = copy.deepcopy(cfg)
    if not text:
        cfg["applications"] = [a for a in cfg["applications"] if a["name"] != TEXT_APP]
        for app in cfg["applications"]:
            if (app.get("args") or {}).get("text_app"):
                app["args"]["text_app"] = ""
    # Serve turns gRPC server reflection on unless told otherwise: here it is on only where the
    # config says `enable_reflection: true`.
    cfg.setdefault("grpc_options", {}).setdefault("enable_reflection", False)
    if grpc_port is not None:
        cfg["grpc_options"]["port"] = grpc_port
    if http_port is not None:
        cfg["http_options"]["port"] = http_port
    if http_host is not None:  # local runs: loopback only (Serve's gRPC proxy still binds all interfaces)
        cfg["http_options"]["host"] = http_host
    for app in cfg["applications"]:
        app.setdefault("args", {})
        app["args"].update(app_args or {})
        if app["name"] == "dynamics" and extra_models:
            template = next(d for d in app.get("deployments", []) if d["name"].startswith("DynamicsModel-"))
            app["args"]["models"] = list(app["args"].get("models") or []) + [dict(m) for m in extra_models]
            for m in extra_models:
                app["deployments"].append({**copy.deepcopy(template), "name": f"DynamicsModel-{m['name']}"})
        if app["name"] == "sessions":
            app["args"]["image_app"] = app["args"].get("image_app", "image")
            app["args"]["dynamics_app"] = app["args"].get("dynamics_app", "dynamics")
        for dep in app.get("deployments", []):
            dep.update((deployment_overrides or {}).get(dep["name"], {}))
    return cfg


def deploy(cfg: dict) -> None:
    """Start Serve (gRPC proxy included) on the connected Ray cluster and submit every app.

    Public Serve API only: each application built by its ``import_path`` builder with its
    ``args`` and, under ``args["deployment_options"]``, the options the config lists for its
    deployments (the builder applies them with ``Deployment.options``; see
    :mod:`worldserve.common.serving`); then ``serve.start`` with the config's proxy, logging,
    tracing and controller options, and ``serve.run_many``. Returns once the apps are submitted;
    :func:`wait_healthy` waits for them.
    """
    from ray import serve
    from ray.exceptions import RayActorError

    targets = build_applications(cfg)  # a bad config or builder fails here, before Serve starts
    start = dict(
        proxy_location=cfg.get("proxy_location"),
        http_options=cfg.get("http_options"),
        grpc_options=cfg.get("grpc_options"),
        logging_config=cfg.get("logging_config"),
        tracing_config=cfg.get("tracing_config"),
        controller_options=cfg.get("controller_options"),
    )
    try:
        serve.start(**start)
    except RayActorError:
        # serve.start waits on the proxies the new controller started first; on a loaded machine a
        # proxy can miss its readiness checks (RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S, 5 s in Ray
        # 2.60), and the controller kills it and starts another: the wait dies with the first one.
        # The controller runs on: start again connects to it; wait_healthy waits for the proxies.
        serve.start(**start)
    serve.run_many(targets, wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)


# What a serve config may hold that `serve.start` / `serve.run_many` / `Deployment.options` cannot
# apply (Ray 2.60): refused rather than silently dropped.
UNSUPPORTED_TOP = ("target_capacity",)
UNSUPPORTED_APP = ("runtime_env", "autoscaling_policy", "host", "port")
UNSUPPORTED_DEPLOYMENT = ("rolling_update_percentage",)


def validate(cfg: dict):
    """The config as Serve's own schema reads it (the checks `serve deploy` would make), with
    unknown fields and fields the Python API cannot apply refused."""
    from ray.serve.schema import DeploymentSchema, ServeApplicationSchema, ServeDeploySchema

    # Serve's schemas ignore unknown fields: a misspelled option would be dropped without a word.
    unknown = [k for k in cfg if k not in ServeDeploySchema.model_fields]
    for app in cfg.get("applications") or []:
        where = f"applications[{app.get('name')}]"
        unknown += [f"{where}.{k}" for k in app if k not in ServeApplicationSchema.model_fields]
        for d in app.get("deployments") or []:
            unknown += [
                f"{where}.deployments[{d.get('name')}].{k}" for k in d if k not in DeploymentSchema.model_fields
            ]
    if unknown:
        raise ValueError(f"serve config: unknown field(s) {', '.join(unknown)}")
    schema = ServeDeploySchema.model_validate(cfg)
    bad = [k for k in UNSUPPORTED_TOP if cfg.get(k) is not None]
    for app in cfg["applications"]:
        where = f"applications[{app['name']}]"
        bad += [f"{where}.{k}" for k in UNSUPPORTED_APP if app.get(k) is not None]
        for d in app.get("deployments") or []:
            bad += [f"{where}.deployments[{d['name']}].{k}" for k in UNSUPPORTED_DEPLOYMENT if k in d]
        if OPTIONS_ARG in (app.get("args") or {}):
            bad.append(f"{where}.args.{OPTIONS_ARG} (worldserve.deploy sets it from the deployments list)")
    if bad:
        raise ValueError(
            f"serve config: {', '.join(bad)} cannot be applied by worldserve.deploy "
            "(Serve's Python API has no equivalent); remove them or deploy the config with `serve deploy`"
        )
    return schema


def build_applications(cfg: dict) -> list:
    """One ``serve.RunTarget`` per application of the config: its builder called with its
    ``args``, and the options the config lists per deployment under ``args[OPTIONS_ARG]`` (what
    Serve's controller does for a deployed config: the config's fields replace the code's,
    ``ray_actor_options`` whole; a deployment the builder does not make is refused)."""
    from ray import serve

    schema = validate(cfg)
    targets = []
    for spec, app in zip(cfg["applications"], schema.applications):
        args = copy.deepcopy(spec.get("args") or {})
        options = {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in spec.get("deployments") or []}
        if options:
            args[OPTIONS_ARG] = copy.deepcopy(options)
        try:
            built = call_builder(app.import_path, args)
        except (TypeError, ValueError) as e:
            raise type(e)(f"application {app.name!r} ({app.import_path}): {e}") from e
        targets.append(
            serve.RunTarget(
                target=built,
                name=app.name,
                route_prefix=app.route_prefix,
                logging_config=spec.get("logging_config") or cfg.get("logging_config"),
                external_scaler_enabled=app.external_scaler_enabled,
            )
        )
    return targets


def call_builder(import_path: str, args: dict[str, Any]):
    """The application at ``import_path``: a built ``Application``, or a builder called with
    ``args`` (converted to its pydantic model when it takes one), as Serve does for a config."""
    import importlib
    import inspect

    from pydantic import BaseModel
    from ray.serve import Application

    module, sep, attr = import_path.partition(":")
    if not sep:
        module, _, attr = import_path.rpartition(".")
    obj = getattr(importlib.import_module(module), attr)
    if isinstance(obj, Application):
        if args:
            raise ValueError("a built application takes no args and no deployment options")
        return obj
    params = list(inspect.signature(obj).parameters.values())
    if len(params) != 1:
        raise TypeError("an application builder takes exactly one parameter (the args)")
    ann = params[0].annotation
    app = obj(ann.model_validate(args) if inspect.isclass(ann) and issubclass(ann, BaseModel) else args)
    if not isinstance(app, Application):
        raise TypeError(f"the builder returned {type(app).__name__}, not a serve Application")
    return app


def app_names(cfg: dict) -> tuple[str, ...]:
    """The applications a serve config deploys."""
    return tuple(a["name"] for a in cfg["applications"])


def wait_healthy(timeout_s: float = 300.0, apps: tuple[str, ...] | None = None, progress=None) -> dict:
    """Block until every app (default: :data:`APPS`) is RUNNING and every proxy is up; raise with
    Serve's own message when an app fails."""
    from ray import serve

    apps = APPS if apps is None else apps
    deadline = time.monotonic() + timeout_s
    last: dict = {}
    proxies: dict = {}
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
        # a proxy that missed its readiness checks is restarted by the controller: wait for it too
        proxies = {node: str(getattr(s, "value", s)) for node, s in st.proxies.items()}
        if (
            len(last) == len(apps)
            and all(s == "RUNNING" for s in last.values())
            and not any(s in ("STARTING", "UNHEALTHY") for s in proxies.values())
        ):
            return last
        time.sleep(1.0)
    raise TimeoutError(f"serve applications not RUNNING after {timeout_s} s: {last}, proxies: {proxies}")
