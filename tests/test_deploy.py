"""worldserve.deploy without Ray running: the serve config deployed with Serve's public Python API.

Every application is built by its builder with its args; every deployment the config lists gets the
config's options through ``Deployment.options`` (the builders apply them: worldserve.common.serving);
deploy() hands serve.start the proxy options and serve.run_many the apps. That Serve runs them with
the options in force is checked on the real cluster (tests/e2e/test_cluster.py).
"""

from __future__ import annotations

import copy

import pytest
from ray import serve
from ray.exceptions import RayActorError
from ray.serve import Deployment

from worldserve import deploy as dep
from worldserve.common.serving import OPTIONS_ARG, DeploymentOptions

POLICY = "worldserve.dynamics.autoscale:DeadlineAwarePolicy"
ROUTER = "ray.serve.experimental.consistent_hash_router:ConsistentHashRouter"


@serve.deployment(max_ongoing_requests=5, ray_actor_options={"num_cpus": 1, "num_gpus": 0})
class Child:
    def __init__(self, tag: str):
        self.tag = tag


def test_options_are_applied_by_name_and_a_name_never_built_is_refused():
    args = {
        "greeting": "hi",
        OPTIONS_ARG: {
            "Child": {"max_ongoing_requests": 7},
            "Renamed": {"num_replicas": 3, "user_config": {"level": 1}, "ray_actor_options": {"num_cpus": 0.5}},
        },
    }
    opts = DeploymentOptions(args)
    assert args == {"greeting": "hi"}  # popped: the deployments never see it
    child, renamed = opts.apply(Child), opts.apply(Child, name="Renamed")
    assert (child.name, child.max_ongoing_requests, child.ray_actor_options) == (
        "Child",
        7,
        {"num_cpus": 1, "num_gpus": 0},
    )
    assert (renamed.name, renamed.num_replicas, renamed.user_config) == ("Renamed", 3, {"level": 1})
    assert renamed.ray_actor_options == {"num_cpus": 0.5}  # replaced whole, as Serve's config path does
    assert renamed.max_ongoing_requests == 5  # unlisted: the code's
    opts.check()

    opts = DeploymentOptions({OPTIONS_ARG: {"Nope": {"max_ongoing_requests": 1}}})
    opts.apply(Child)
    with pytest.raises(ValueError, match=r"\['Nope'\].*builds \['Child'\]"):
        opts.check()
    with pytest.raises(TypeError, match=OPTIONS_ARG):
        DeploymentOptions({OPTIONS_ARG: {"Child": 3}})
    assert DeploymentOptions({}).apply(Child) is Child  # nothing given: the code's deployment as it is


@pytest.fixture(autouse=True)
def no_text_model(monkeypatch):
    """The text app over a model folder that is not there: it is built with TextService alone (its
    replica's start-up error would name the folder). With a folder, Ray Serve LLM's builder reads
    the job's runtime_env, which starts a local Ray in this process; its deployment
    (LLMServer:worldserve-text) and its options are checked in tests/e2e/test_text.py."""
    monkeypatch.setenv("WORLDSERVE_TEXT_MODEL", "/nonexistent/text-model")


@pytest.fixture
def options_calls(monkeypatch):
    """Every ``Deployment.options`` call of the builders: (resulting name, kwargs); ``bind``'s own
    calls (``_init_args``) left out."""
    calls: list[tuple[str, dict]] = []
    real = Deployment.options

    def options(self, *a, **kw):
        out = real(self, *a, **kw)
        if "_init_args" not in kw:
            calls.append((out.name, kw))
        return out

    monkeypatch.setattr(Deployment, "options", options)
    return calls


def test_every_deployment_of_the_repository_config_gets_its_options(options_calls):
    overrides = {
        "DynamicsModel-platformer": {
            "max_ongoing_requests": 77,
            "autoscaling_config": {
                "min_replicas": 2,
                "max_replicas": 3,
                "initial_replicas": 2,
                "policy": {"policy_function": POLICY, "policy_kwargs": {"miss_ratio": 0.3}},
            },
        },
        "ImageService": {"user_config": {"note": "x"}},
    }
    cfg = dep.load_config(app_args={"redis_url": "redis://127.0.0.1:1/0"}, deployment_overrides=overrides)
    before = copy.deepcopy(cfg)
    targets = dep.build_applications(cfg)
    assert cfg == before  # the caller's config is not touched
    assert [(t.name, t.route_prefix) for t in targets] == [(a["name"], a["route_prefix"]) for a in cfg["applications"]]
    assert all(isinstance(t.target, serve.Application) for t in targets)
    assert all(t.logging_config == cfg["logging_config"] for t in targets)  # the global one, as Serve applies it
    applied = {name: kw for name, kw in options_calls if "name" not in kw}
    for app in cfg["applications"]:
        for want in app["deployments"]:  # every field the YAML (plus the run's overrides) sets
            name = want.pop("name")
            if name.startswith("LLMServer:"):  # not built here (see no_text_model)
                continue
            assert applied[name] == want, name
    fast = applied["DynamicsModel-platformer-fast"]
    assert fast["autoscaling_config"]["policy"]["policy_function"] == POLICY
    assert fast["request_router_config"]["request_router_class"] == ROUTER
    assert applied["DynamicsModel-platformer"]["autoscaling_config"]["policy"]["policy_kwargs"] == {"miss_ratio": 0.3}


def test_an_extra_model_is_served_beside_the_configs_with_its_own_deployment(options_calls):
    extra = {"name": "open-world", "kind": "causal_dit", "path": "random", "options": {"chunk_frames": 1}}
    overrides = {"DynamicsModel-open-world": {"ray_actor_options": {"num_cpus": 0.25}}}
    cfg = dep.load_config(
        app_args={"redis_url": "redis://127.0.0.1:1/0"}, deployment_overrides=overrides, extra_models=[extra]
    )
    dyn = next(a for a in cfg["applications"] if a["name"] == "dynamics")
    assert [m["name"] for m in dyn["args"]["models"]] == ["platformer", "platformer-fast", "open-world"]
    first = next(d for d in dyn["deployments"] if d["name"] == "DynamicsModel-platformer")
    added = next(d for d in dyn["deployments"] if d["name"] == "DynamicsModel-open-world")
    assert added["ray_actor_options"] == {"num_cpus": 0.25}  # overridden
    assert added["autoscaling_config"] == first["autoscaling_config"]  # the first model's otherwise
    dep.build_applications(cfg)
    assert dict(options_calls)["DynamicsModel-open-world"]["ray_actor_options"] == {"num_cpus": 0.25}


def test_options_for_a_deployment_the_builder_does_not_make_are_refused():
    cfg = dep.load_config(app_args={"redis_url": "redis://127.0.0.1:1/0"})
    cfg["applications"][0]["deployments"].append({"name": "Nope", "max_ongoing_requests": 1})
    with pytest.raises(ValueError, match=r"application 'image'.*\['Nope'\].*builds \['ImageService'\]"):
        dep.build_applications(cfg)


@pytest.mark.parametrize(
    "where,field,value",
    [
        ("app", "runtime_env", {"env_vars": {"A": "1"}}),
        ("deployment", "rolling_update_percentage", 50),
        ("top", "target_capacity", 50),
        ("args", OPTIONS_ARG, {}),
    ],
)
def test_what_the_python_api_cannot_apply_is_refused_not_dropped(where, field, value):
    cfg = dep.load_config(app_args={"redis_url": "redis://127.0.0.1:1/0"})
    app = cfg["applications"][0]
    {"app": app, "deployment": app["deployments"][0], "top": cfg, "args": app["args"]}[where][field] = value
    with pytest.raises(ValueError, match=field):
        dep.build_applications(cfg)


def test_a_config_serve_rejects_is_rejected_before_anything_starts():
    cfg = dep.load_config(app_args={"redis_url": "redis://127.0.0.1:1/0"})
    cfg["applications"][0]["deployments"][0]["max_ongoing_request"] = 2  # misspelled
    with pytest.raises(ValueError, match=r"unknown field\(s\) applications\[image\]\.deployments\[ImageService\]"):
        dep.build_applications(cfg)
    cfg = dep.load_config(deployment_overrides={"ImageService": {"max_ongoing_requests": "many"}})
    with pytest.raises(Exception, match="max_ongoing_requests"):  # Serve's schema checks the types
        dep.build_applications(cfg)


def test_deploy_starts_serve_with_the_proxy_options_and_runs_every_app(monkeypatch):
    calls = []
    monkeypatch.setattr(serve, "start", lambda **kw: calls.append(("start", kw)))
    monkeypatch.setattr(serve, "run_many", lambda targets, **kw: calls.append(("run_many", targets, kw)))
    cfg = dep.load_config(app_args={"redis_url": "redis://127.0.0.1:1/0"}, grpc_port=9123, http_port=8123)
    cfg["controller_options"] = {"runtime_env": {"env_vars": {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30"}}}
    dep.deploy(cfg)
    (_, start), (_, targets, kw) = calls
    assert start == {
        "proxy_location": "HeadOnly",
        "http_options": cfg["http_options"],
        "grpc_options": cfg["grpc_options"],
        "logging_config": cfg["logging_config"],
        "tracing_config": None,
        "controller_options": cfg["controller_options"],
    }
    assert [t.name for t in targets] == list(dep.APPS)
    assert kw == {"wait_for_ingress_deployment_creation": False, "wait_for_applications_running": False}


def test_deploy_starts_again_when_the_first_proxy_dies_while_serve_starts(monkeypatch):
    """A proxy slow past its readiness checks is replaced by the controller; serve.start, waiting on
    the first one, raises: deploy connects again to the running controller and goes on."""
    calls = []

    def start(**kw):
        calls.append("start")
        if len(calls) == 1:
            raise RayActorError()

    monkeypatch.setattr(serve, "start", start)
    monkeypatch.setattr(serve, "run_many", lambda targets, **kw: calls.append("run_many"))
    dep.deploy(dep.load_config(app_args={"redis_url": "redis://127.0.0.1:1/0"}))
    assert calls == ["start", "start", "run_many"]


def test_grpc_reflection_is_off_unless_the_config_turns_it_on(tmp_path):
    """Serve's default is on (anyone reaching the port lists the API); every shipped serve config
    says off, a config that says nothing gets off, and only ``enable_reflection: true`` turns it on.
    Requests reach worldserve as bytes through its own registrations (worldserve.common.wire)."""
    import yaml

    root = dep.REPO_CONFIG.parents[2]
    for path in (
        dep.REPO_CONFIG,
        root / "k8s/base/serve/worldserve.yaml",
        root / "k8s/overlays/gpu/serve/worldserve.yaml",
    ):
        grpc_options = yaml.safe_load(path.read_text())["grpc_options"]
        assert grpc_options["enable_reflection"] is False, path
        # first the proxy's stream-cancellation hook, then the five services through worldserve.common.wire
        assert [f.rsplit(".", 1)[0] for f in grpc_options["grpc_servicer_functions"]] == [
            "worldserve.common.proxy_streams"
        ] + ["worldserve.common.wire"] * 5
    raw = yaml.safe_load(dep.REPO_CONFIG.read_text())
    del raw["grpc_options"]["enable_reflection"]
    (tmp_path / "quiet.yaml").write_text(yaml.safe_dump(raw))
    assert dep.load_config(tmp_path / "quiet.yaml")["grpc_options"]["enable_reflection"] is False
    raw["grpc_options"]["enable_reflection"] = True
    (tmp_path / "on.yaml").write_text(yaml.safe_dump(raw))
    assert dep.load_config(tmp_path / "on.yaml")["grpc_options"]["enable_reflection"] is True
