"""worldserve.deploy: the serve config deployed with Serve's public Python API.

Without Ray running: every application is built from its builder with its args, and every
deployment the config lists carries the config's options (autoscaling with its custom policy,
request router, max_ongoing_requests, ray_actor_options, num_replicas, user_config), through the
whole deployment graph; deploy() hands serve.start the proxy options and serve.run_many the apps.
With a tiny local Ray (once): Serve runs an application so built, with the overrides in force.
"""

from __future__ import annotations

import copy
import os
import socket
import sys
import time

import pytest
from ray import serve
from ray.serve import Application
from ray.serve.deployment import Deployment

from worldserve import deploy as dep

POLICY = "worldserve.dynamics.autoscale:DeadlineAwarePolicy"
ROUTER = "ray.serve.experimental.consistent_hash_router:ConsistentHashRouter"


def graph(app: Application) -> dict[str, Deployment]:
    """Every deployment of a bound application, by name (ingress first)."""
    out: dict[str, Deployment] = {}

    def walk(v):
        if isinstance(v, Application):
            d = dep.bound_deployment(v)
            out.setdefault(d.name, d)
            for a in (*d.init_args, *d.init_kwargs.values()):
                walk(a)
        elif isinstance(v, dict):
            for a in v.values():
                walk(a)
        elif isinstance(v, (list, tuple)):
            for a in v:
                walk(a)

    walk(app)
    return out


def autoscaling(d: Deployment) -> dict:
    ac = d._deployment_config.autoscaling_config
    return ac.model_dump() if ac is not None else None


def router_class(d: Deployment) -> str:
    return d._deployment_config.request_router_config.request_router_class


# -- a small application of our own: ingress, a child in a dict, one in a list, one shared ---------
@serve.deployment(max_ongoing_requests=5, ray_actor_options={"num_cpus": 1, "num_gpus": 0})
class Child:
    def __init__(self, tag: str):
        self.tag, self.config = tag, None

    def reconfigure(self, config):
        self.config = config

    def __call__(self):
        import ray

        return {
            "tag": self.tag,
            "config": self.config,
            "cpus": ray.get_runtime_context().get_assigned_resources().get("CPU"),
        }


@serve.deployment(max_ongoing_requests=5, ray_actor_options={"num_cpus": 1})
class Ingress:
    def __init__(self, args, children, others=(), *, shared=None):
        self.args, self.children = args, children

    async def __call__(self, *_):
        return {"args": self.args, **{k: await h.remote() for k, h in self.children.items()}}


def build_small(args: dict):
    shared = Child.options(name="Shared").bind("shared")
    children = {"a": Child.options(name="ChildA").bind("a"), "shared": shared}
    return Ingress.bind(dict(args), children, [Child.options(name="ChildB").bind("b")], shared=shared)


def small_config(**deployments) -> dict:
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": 8000},
        "logging_config": {"log_level": "WARNING", "enable_access_log": False},
        "applications": [
            {
                "name": "small",
                "route_prefix": "/small",
                "import_path": f"{__name__}:build_small",
                "args": {"greeting": "hi"},
                "deployments": [{"name": n, **o} for n, o in deployments.items()],
            }
        ],
    }


# -- without Ray ----------------------------------------------------------------------------------
def test_every_deployment_of_the_graph_gets_the_configs_options():
    cfg = small_config(
        ChildA={
            "num_replicas": 3,
            "user_config": {"level": 7},
            "max_ongoing_requests": 11,
            "ray_actor_options": {"num_cpus": 0.5},
        },
        ChildB={
            "autoscaling_config": {
                "min_replicas": 1,
                "max_replicas": 3,
                "target_ongoing_requests": 2,
                "policy": {"policy_function": POLICY, "policy_kwargs": {"miss_ratio": 0.2}},
            },
            "request_router_config": {"request_router_class": ROUTER},
        },
        Shared={"max_ongoing_requests": 9},
    )
    (target,) = dep.build_applications(cfg)
    assert (target.name, target.route_prefix) == ("small", "/small")
    assert target.logging_config == cfg["logging_config"]  # the config's global logging, as Serve applies it
    g = graph(target.target)
    assert list(g) == ["Ingress", "ChildA", "Shared", "ChildB"]
    a, b, shared, ingress = g["ChildA"], g["ChildB"], g["Shared"], g["Ingress"]
    assert (a.num_replicas, a.user_config, a.max_ongoing_requests) == (3, {"level": 7}, 11)
    assert a.ray_actor_options == {"num_cpus": 0.5}  # replaced whole, as the config path does: no num_gpus
    ac = autoscaling(b)
    assert (ac["min_replicas"], ac["max_replicas"], ac["target_ongoing_requests"]) == (1, 3, 2)
    assert ac["policy"]["policy_function"] == POLICY and ac["policy"]["policy_kwargs"] == {"miss_ratio": 0.2}
    assert router_class(b) == ROUTER
    assert shared.max_ongoing_requests == 9
    # unlisted: the code's options; the bound args are kept, the shared child stays one application
    assert ingress.max_ongoing_requests == 5 and ingress.ray_actor_options == {"num_cpus": 1}
    assert ingress.init_args[0] == {"greeting": "hi"}
    assert ingress.init_kwargs["shared"] is ingress.init_args[1]["shared"]
    assert dep.bound_deployment(ingress.init_args[2][0]) is b


def test_the_repository_config_with_run_overrides_is_what_gets_built():
    overrides = {
        "DynamicsModel-platformer": {
            "max_ongoing_requests": 77,
            "ray_actor_options": {"num_cpus": 0.3},
            "autoscaling_config": {
                "min_replicas": 2,
                "max_replicas": 3,
                "initial_replicas": 2,
                "upscale_delay_s": 7,
                "policy": {"policy_function": POLICY, "policy_kwargs": {"miss_ratio": 0.3}},
            },
        },
        "SessionService": {"autoscaling_config": {"min_replicas": 2, "max_replicas": 2, "initial_replicas": 2}},
        "ImageService": {"user_config": {"note": "x"}},
    }
    cfg = dep.load_config(app_args={"redis_url": "redis://127.0.0.1:1/0"}, deployment_overrides=overrides)
    built = {t.name: t for t in dep.build_applications(cfg)}
    assert list(built) == list(dep.APPS)
    for app in cfg["applications"]:
        t = built[app["name"]]
        assert t.route_prefix == app["route_prefix"]
        g = graph(t.target)
        assert sorted(g) == sorted(d["name"] for d in app["deployments"])
        for want in app["deployments"]:  # every field the YAML (plus the run's overrides) sets
            d = g[want["name"]]
            assert d.max_ongoing_requests == want["max_ongoing_requests"], d.name
            assert d.ray_actor_options == want["ray_actor_options"], d.name
            got = autoscaling(d)
            for k, v in want["autoscaling_config"].items():
                if k == "policy":
                    assert got["policy"]["policy_function"] == v["policy_function"], d.name
                    assert got["policy"]["policy_kwargs"] == v["policy_kwargs"], d.name
                else:
                    assert got[k] == v, (d.name, k)
            if "request_router_config" in want:
                assert router_class(d) == want["request_router_config"]["request_router_class"], d.name
            if "user_config" in want:
                assert d.user_config == want["user_config"]
    g = graph(built["dynamics"].target)
    assert autoscaling(g["DynamicsModel-platformer"])["upscale_delay_s"] == 7
    assert autoscaling(g["DynamicsModel-platformer-fast"])["policy"]["policy_function"] == POLICY
    assert router_class(g["DynamicsModel-platformer-fast"]) == ROUTER


def test_a_deployment_the_builder_does_not_make_is_refused():
    with pytest.raises(ValueError, match=r"\['Nope'\].*builds \['ChildA', 'ChildB', 'Ingress', 'Shared'\]"):
        dep.build_applications(small_config(Nope={"max_ongoing_requests": 1}))


@pytest.mark.parametrize(
    "where,field,value",
    [
        ("app", "runtime_env", {"env_vars": {"A": "1"}}),
        ("deployment", "rolling_update_percentage", 50),
        ("top", "target_capacity", 50),
    ],
)
def test_what_the_python_api_cannot_apply_is_refused_not_dropped(where, field, value):
    cfg = small_config(ChildA={"max_ongoing_requests": 1})
    {"app": cfg["applications"][0], "deployment": cfg["applications"][0]["deployments"][0], "top": cfg}[where][
        field
    ] = value
    with pytest.raises(ValueError, match=field):
        dep.build_applications(cfg)


def test_a_config_serve_rejects_is_rejected_before_anything_starts():
    cfg = small_config(ChildA={"max_ongoing_requests": 1})
    cfg["applications"][0]["deployments"][0]["max_ongoing_request"] = 2  # misspelled
    with pytest.raises(
        ValueError, match=r"unknown field\(s\) applications\[small\]\.deployments\[ChildA\]\.max_ongoing_request$"
    ):
        dep.build_applications(cfg)
    cfg = small_config(ChildA={"max_ongoing_requests": "many"})  # Serve's schema checks the types
    with pytest.raises(Exception, match="max_ongoing_requests"):
        dep.build_applications(cfg)


def test_deploy_starts_serve_with_the_proxy_options_and_runs_every_app(monkeypatch):
    calls = []
    monkeypatch.setattr(serve, "start", lambda **kw: calls.append(("start", kw)))
    monkeypatch.setattr(serve, "run_many", lambda targets, **kw: calls.append(("run_many", targets, kw)))
    cfg = small_config(ChildA={"num_replicas": 2})
    cfg["grpc_options"] = {"port": 9123, "grpc_servicer_functions": []}
    dep.deploy(cfg)
    (_, start), (_, targets, kw) = calls
    assert start["http_options"] == cfg["http_options"] and start["grpc_options"] == cfg["grpc_options"]
    assert str(getattr(start["proxy_location"], "value", start["proxy_location"])) == "HeadOnly"
    assert start["logging_config"] == cfg["logging_config"]
    assert [t.name for t in targets] == ["small"] and graph(targets[0].target)["ChildA"].num_replicas == 2
    assert kw == {"wait_for_ingress_deployment_creation": False, "wait_for_applications_running": False}


def test_the_private_hook_still_matches_ray():
    """worldserve.deploy.bound_deployment reads Application._bound_deployment (Ray 2.60 has no
    public accessor). This fails when Ray moves that attribute, or when Application gains public
    members (a public accessor to use instead: replace the hook)."""
    import ray

    app = Child.options(name="Hook").bind("x")
    d = dep.bound_deployment(app)
    assert isinstance(d, Deployment) and d.name == "Hook" and d.init_args == ("x",), ray.__version__
    public = [n for n in vars(Application) if not n.startswith("_")]
    assert public == [], f"ray {ray.__version__}: Application has public members {public}; use them in deploy.py"


# -- once, with a tiny local Ray ------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.e2e
def test_serve_runs_the_built_application_with_the_overrides(tmp_path):
    if os.environ.get("WORLDSERVE_SKIP_E2E") == "1":
        pytest.skip("WORLDSERVE_SKIP_E2E=1")
    import ray
    from ray import cloudpickle

    cfg = small_config(
        ChildA={"num_replicas": 2, "user_config": {"level": 7}, "ray_actor_options": {"num_cpus": 0.01}},
        ChildB={
            "ray_actor_options": {"num_cpus": 0.01},
            "autoscaling_config": {
                "min_replicas": 1,
                "max_replicas": 1,
                "initial_replicas": 1,
                "policy": {"policy_function": POLICY, "policy_kwargs": {"miss_ratio": 0.2}},
            },
            "request_router_config": {"request_router_class": ROUTER},
        },
        Shared={"ray_actor_options": {"num_cpus": 0.01}},
        Ingress={"ray_actor_options": {"num_cpus": 0.01}},
    )
    cfg["http_options"]["port"] = _free_port()  # no gRPC servicers: Serve starts no gRPC proxy
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    t0 = time.monotonic()
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        dep.deploy(copy.deepcopy(cfg))
        dep.wait_healthy(90, apps=("small",))
        st = serve.status().applications["small"].deployments
        running = {
            n: sum(c for s, c in d.replica_states.items() if getattr(s, "value", s) == "RUNNING") for n, d in st.items()
        }
        assert running == {"Ingress": 1, "ChildA": 2, "ChildB": 1, "Shared": 1}
        out = serve.get_app_handle("small").remote().result(timeout_s=30)
        assert out["args"] == {"greeting": "hi"}
        assert out["a"] == {"tag": "a", "config": {"level": 7}, "cpus": 0.01}
        assert out["shared"]["cpus"] == 0.01
        assert time.monotonic() - t0 < 120
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
