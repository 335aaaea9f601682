"""Offline checks of the Kubernetes manifests (k8s/) and the observability config (deploy/).

- Every overlay renders with `kubectl kustomize` (skipped where kubectl is missing).
- Every custom resource validates against the strict JSON schemas of ../shared/schemas (KubeRay
  v1.7.0 RayService, prometheus-operator v0.93.0 PodMonitor/ServiceMonitor/PrometheusRule); core
  kinds against the upstream Kubernetes schemas that kubernetes-validate carries (strict mode).
  A misspelled field fails both.
- The copies stay in sync: serveConfigV2 == deploy/serve/worldserve.yaml, PrometheusRule ==
  deploy/prometheus/worldserve.rules.yaml, dashboard ConfigMap == deploy/grafana/worldserve.json.
- Several dynamics models: every model in the dynamics app's `models:` has its DynamicsModel-<name>
  deployment and vice versa (in deploy/serve and every copy and overlay); the gpu overlay gives
  GPUs only to model deployments (and ImageService), the dynamics ingress stays on CPU workers,
  and the GPU groups are sized to the deployments they host.
- Every worldserve_dynamics_* metric the dashboard and the rules query is one the services export
  (DYNAMICS_METRICS), with its Prometheus suffix and labels; per-model panels filter on $model and
  alerts about a model name it.
- Non-root everywhere, no real secret committed, and the wiring between objects (Secrets, ports,
  labels, selectors) holds.
- With promtool on PATH: the rules pass `promtool check rules` and their unit tests, and every
  dashboard query parses.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
SCHEMAS = ROOT.parent / "shared" / "schemas"
SERVE_YAML = ROOT / "deploy" / "serve" / "worldserve.yaml"
RULES = ROOT / "deploy" / "prometheus" / "worldserve.rules.yaml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "worldserve.rules.test.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "worldserve.json"
SECRET_TEMPLATES = K8S / "secrets" / "secrets.template.yaml"

TARGETS = ("base", "overlays/dev", "overlays/gpu")
KUBERNETES_VERSION = "1.32.0"  # schemas kubernetes-validate checks core kinds against
WORKER_GROUPS = ("cpu", "image-gpu", "dynamics-gpu", "text-gpu")
GPU_GROUPS = ("image-gpu", "dynamics-gpu", "text-gpu")
# What overlays/gpu adds to the serve config, and nothing else: placement of each deployment on
# the worker group that offers its custom resource.
GPU_PLACEMENT = {
    "ImageService": ({"num_gpus": 1, "resources": {"worldserve_image": 1}}, "image-gpu"),
    "SessionService": ({"resources": {"worldserve_cpu": 1}}, "cpu"),
    "DynamicsService": ({"resources": {"worldserve_cpu": 1}}, "cpu"),  # the dynamics ingress: routing only, no GPU
    "WebGateway": ({"resources": {"worldserve_cpu": 1}}, "cpu"),  # the web gateway: no GPU
    "TextService": ({"resources": {"worldserve_cpu": 1}}, "cpu"),  # the text ingress: no GPU
    # Ray Serve LLM's deployment (vLLM): placed by the text app's args.llm (device: gpu, resources),
    # from which Ray Serve LLM sizes its placement group; see actor_options
    "LLMServer:worldserve-text": ({"num_gpus": 1, "resources": {"worldserve_text": 1}}, "text-gpu"),
}
LLM_DEPLOYMENT = "LLMServer:worldserve-text"


def actor_options(app: dict, dep: dict) -> dict:
    """A deployment's placement: its ray_actor_options; for Ray Serve LLM's deployment, the text
    app's ``args.llm`` (``device: gpu`` is one GPU per replica, ``resources`` its custom resources)."""
    if dep["name"] != LLM_DEPLOYMENT:
        return dep["ray_actor_options"]
    llm = app["args"].get("llm") or {}
    out: dict = {"resources": dict(llm.get("resources") or {})}
    if llm.get("device") == "gpu":
        out["num_gpus"] = 1
    return out


# The dynamics app: one ingress, and one deployment per served model (every one on a dynamics GPU).
DYNAMICS_INGRESS = "DynamicsService"
MODEL_DEPLOYMENT_PREFIX = "DynamicsModel-"
MODEL_PLACEMENT = ({"num_gpus": 1, "resources": {"worldserve_dynamics": 1}}, "dynamics-gpu")
MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,47}$")  # worldserve.common.config.ModelSpec
SERVE_COPIES = (  # every serve config file in the repository
    SERVE_YAML,
    K8S / "base" / "serve" / "worldserve.yaml",
    K8S / "overlays" / "gpu" / "serve" / "worldserve.yaml",
)
CRD_SCHEMAS = {
    ("ray.io/v1", "RayService"): "kuberay-v1.7.0/rayservice_v1.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "prometheus-operator-v0.93.0/podmonitor_v1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "prometheus-operator-v0.93.0/servicemonitor_v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheus-operator-v0.93.0/prometheusrule_v1.json",
}
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)


# -- rendering ------------------------------------------------------------------------------------
@functools.cache
def _render(target: str) -> tuple[dict, ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: cannot render the kustomizations")
    out = subprocess.run([kubectl, "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"kubectl kustomize {target} failed:\n{out.stderr}"
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def render(target: str) -> list[dict]:
    return copy.deepcopy(list(_render(target)))


def one(objs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def rayservice(objs: list[dict]) -> dict:
    return one(objs, "RayService", "worldserve")


def groups(rs: dict) -> dict[str, dict]:
    return {g["groupName"]: g for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]}


def pod_templates(objs: list[dict]):
    """(where, pod template) for every pod the objects will create."""
    for o in objs:
        kind, name = o["kind"], o["metadata"]["name"]
        if kind in ("StatefulSet", "Deployment", "DaemonSet", "Job", "ReplicaSet"):
            yield f"{kind}/{name}", o["spec"]["template"]
        elif kind == "RayService":
            rcc = o["spec"]["rayClusterConfig"]
            yield f"{kind}/{name}/head", rcc["headGroupSpec"]["template"]
            for g in rcc["workerGroupSpecs"]:
                yield f"{kind}/{name}/{g['groupName']}", g["template"]
        elif kind == "Pod":
            yield f"Pod/{name}", o


def containers(template: dict):
    spec = template["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def ray_containers(rs: dict):
    rcc = rs["spec"]["rayClusterConfig"]
    yield "head", rcc["headGroupSpec"]["template"], rcc["headGroupSpec"]["template"]["spec"]["containers"][0]
    for name, g in groups(rs).items():
        yield name, g["template"], g["template"]["spec"]["containers"][0]


def serve_config(objs: list[dict]) -> dict:
    return yaml.safe_load(rayservice(objs)["spec"]["serveConfigV2"])


def selects(selector: dict, labels: dict) -> bool:
    for k, v in selector.get("matchLabels", {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions", []):
        op, key, values = e["operator"], e["key"], e.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def kuberay_pod_labels(template: dict, node_type: str, group: str) -> dict:
    """The labels KubeRay puts on a Ray pod: ours from the template plus its own."""
    return {
        **template["metadata"].get("labels", {}),
        "ray.io/node-type": node_type,
        "ray.io/group": group,
        "ray.io/is-ray-node": "yes",
        "ray.io/cluster": "worldserve-xxxxx",
    }


# -- schema validation ----------------------------------------------------------------------------
@functools.cache
def crd_schema(api_version: str, kind: str) -> dict:
    if not SCHEMAS.is_dir():
        pytest.skip(f"strict CRD schemas not found at {SCHEMAS} (../shared/schemas next to the repository)")
    return json.loads((SCHEMAS / CRD_SCHEMAS[(api_version, kind)]).read_text())


def validate_crd(obj: dict) -> None:
    import jsonschema

    schema = crd_schema(obj["apiVersion"], obj["kind"])
    jsonschema.Draft7Validator(schema).validate(obj)
    check_metadata(obj)  # metadata is a bare object in CRD schemas


def check_metadata(obj: dict) -> None:
    md = obj["metadata"]
    assert DNS1123_SUBDOMAIN.match(md["name"]) and len(md["name"]) <= 253, md["name"]
    for k, v in {**md.get("labels", {})}.items():
        assert LABEL_KEY.match(k), f"{obj['kind']}/{md['name']}: bad label key {k!r}"
        assert isinstance(v, str) and LABEL_VALUE.match(v) and len(v) <= 63, (
            f"{obj['kind']}/{md['name']}: bad label {k}={v!r}"
        )
    for k, v in md.get("annotations", {}).items():
        assert isinstance(v, str), f"{obj['kind']}/{md['name']}: annotation {k} must be a string"


def validate_core(obj: dict) -> None:
    kv = pytest.importorskip(
        "kubernetes_validate", reason="core kinds need kubernetes-validate (pip install kubernetes-validate)"
    )
    kv.validate(obj, KUBERNETES_VERSION, strict=True)


def validate(obj: dict) -> None:
    if (obj["apiVersion"], obj["kind"]) in CRD_SCHEMAS:
        validate_crd(obj)
    else:
        validate_core(obj)


@pytest.mark.parametrize("target", TARGETS)
def test_renders(target):
    objs = render(target)
    kinds = sorted({o["kind"] for o in objs})
    for kind in ("RayService", "StatefulSet", "Service", "NetworkPolicy", "PodMonitor", "PrometheusRule", "ConfigMap"):
        assert kind in kinds, f"{target} renders no {kind}"
    assert not [o for o in objs if o["kind"] == "Secret"], (
        "Secrets are created by hand (k8s/secrets/), never applied by kustomize"
    )
    keys = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert len(keys) == len(set(keys)), "duplicate objects"
    if target != "base":
        ns = one(objs, "Namespace")["metadata"]["name"]
        assert all(o["metadata"].get("namespace") == ns for o in objs if o["kind"] != "Namespace")


@pytest.mark.parametrize("target", TARGETS)
def test_custom_resources_match_strict_schemas(target):
    crs = [o for o in render(target) if (o["apiVersion"], o["kind"]) in CRD_SCHEMAS]
    assert {o["kind"] for o in crs} == {"RayService", "PodMonitor", "PrometheusRule"}
    for o in crs:
        validate_crd(o)


@pytest.mark.parametrize("target", TARGETS)
def test_core_objects_match_kubernetes_schemas(target):
    core = [o for o in render(target) if (o["apiVersion"], o["kind"]) not in CRD_SCHEMAS]
    assert core
    for o in core:
        validate_core(o)


def test_secret_templates_match_kubernetes_schemas():
    docs = [d for d in yaml.safe_load_all(SECRET_TEMPLATES.read_text()) if d]
    assert sorted((d["apiVersion"], d["kind"], d["metadata"]["name"]) for d in docs) == [
        ("v1", "Secret", "worldserve-api-keys"),
        ("v1", "Secret", "worldserve-gcs-redis"),
        ("v1", "Secret", "worldserve-session-redis"),
    ], "the template holds exactly the three Secrets the manifests use"
    for o in docs:
        validate_core(o)  # raises kubernetes_validate.ValidationError on any schema violation
    # The check is strict: a misspelled field in a template fails it.
    kv = pytest.importorskip("kubernetes_validate")
    bad = copy.deepcopy(docs[0])
    bad["stringdata"] = bad.pop("stringData")
    with pytest.raises(kv.ValidationError, match="Additional properties"):
        validate_core(bad)


def _typo_cases(objs: list[dict]):
    """(description, object with one misspelled field). Every one must fail validation."""
    rs = rayservice(objs)
    bad = copy.deepcopy(rs)
    bad["spec"]["rayClusterConfig"]["enableInTreeAutoscalng"] = bad["spec"]["rayClusterConfig"].pop(
        "enableInTreeAutoscaling"
    )
    yield "RayService spec.rayClusterConfig.enableInTreeAutoscalng", bad
    bad = copy.deepcopy(rs)
    c = bad["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    c["resource"] = c.pop("resources")
    yield "RayService worker container 'resource'", bad
    bad = copy.deepcopy(rs)
    bad["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]["redisAdress"] = "x:6379"
    yield "RayService gcsFaultToleranceOptions.redisAdress", bad
    bad = copy.deepcopy(one(objs, "PodMonitor", "worldserve-ray-head"))
    bad["spec"]["podMetricEndpoints"] = bad["spec"].pop("podMetricsEndpoints")
    yield "PodMonitor spec.podMetricEndpoints", bad
    bad = copy.deepcopy(one(objs, "PrometheusRule"))
    bad["spec"]["groups"][0]["rules"][0]["expression"] = bad["spec"]["groups"][0]["rules"][0].pop("expr")
    yield "PrometheusRule rule 'expression'", bad
    bad = copy.deepcopy(one(objs, "StatefulSet", "worldserve-session-redis"))
    bad["spec"]["replica"] = bad["spec"].pop("replicas")
    yield "StatefulSet spec.replica", bad
    bad = copy.deepcopy(one(objs, "StatefulSet", "worldserve-session-redis"))
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonroot"] = True
    yield "StatefulSet container securityContext.runAsNonroot", bad
    bad = copy.deepcopy(one(objs, "NetworkPolicy", "worldserve-session-redis"))
    bad["spec"]["ingress"][0]["form"] = bad["spec"]["ingress"][0].pop("from")
    yield "NetworkPolicy ingress[0].form", bad


@pytest.mark.parametrize("case", range(8))
def test_misspelled_field_fails_validation(case):
    import jsonschema

    desc, bad = list(_typo_cases(render("overlays/gpu")))[case]
    errors: tuple[type[BaseException], ...] = (jsonschema.ValidationError,)
    if bad["kind"] not in {k for _, k in CRD_SCHEMAS}:
        kv = pytest.importorskip("kubernetes_validate", reason="core kinds need kubernetes-validate")
        errors = (kv.ValidationError,)
    with pytest.raises(errors) as ei:
        validate(bad)
    msg = str(ei.value)
    assert re.search(r"[Aa]dditional properties|is a required property", msg), f"{desc}: unexpected error {msg[:500]}"


# -- the copies stay in sync ----------------------------------------------------------------------
@pytest.mark.parametrize("target", ("base", "overlays/dev"))
def test_serve_config_is_deploy_serve_yaml(target):
    assert serve_config(render(target)) == yaml.safe_load(SERVE_YAML.read_text()), (
        f"{target}: spec.serveConfigV2 differs from deploy/serve/worldserve.yaml; "
        "run: cp deploy/serve/worldserve.yaml k8s/base/serve/worldserve.yaml"
    )


def test_gpu_serve_config_is_deploy_serve_yaml_plus_placement():
    objs = render("overlays/gpu")
    got = serve_config(objs)
    want = yaml.safe_load(SERVE_YAML.read_text())
    stripped = copy.deepcopy(got)
    for app in stripped["applications"]:
        for dep in app["deployments"]:
            extra, _ = placement(dep["name"])
            if dep["name"] == LLM_DEPLOYMENT:  # placed by args.llm: gpu instead of cpu, plus resources
                llm = app["args"]["llm"]
                assert actor_options(app, dep) == extra, f"{dep['name']}: args.llm must place it {extra!r}"
                llm["device"] = "cpu"
                llm.pop("resources")
                continue
            opts = dep["ray_actor_options"]
            for k, v in extra.items():
                assert opts.pop(k) == v, f"{dep['name']}: ray_actor_options.{k} must be {v!r}"
    assert stripped == want, (
        "k8s/overlays/gpu/serve/worldserve.yaml must be deploy/serve/worldserve.yaml plus GPU placement only"
    )
    # Each deployment's custom resource is offered by exactly its worker group, which has the GPUs it asks for.
    rs, gs = rayservice(objs), groups(rayservice(objs))
    for app in got["applications"]:
        for dep in app["deployments"]:
            extra, group = placement(dep["name"])
            (res,) = extra["resources"]
            offering = [n for n, g in gs.items() if res in g.get("resources", {})]
            assert offering == [group], f"{res} offered by {offering}, want [{group}]"
            limits = gs[group]["template"]["spec"]["containers"][0]["resources"]["limits"]
            assert int(limits.get("nvidia.com/gpu", 0)) >= extra.get("num_gpus", 0)
    assert rs["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_k8s_serve_copy_is_deploy_serve_yaml():
    copy_ = K8S / "base" / "serve" / "worldserve.yaml"
    assert yaml.safe_load(copy_.read_text()) == yaml.safe_load(SERVE_YAML.read_text()), (
        "run: cp deploy/serve/worldserve.yaml k8s/base/serve/worldserve.yaml"
    )


# -- several dynamics models ----------------------------------------------------------------------
def placement(deployment: str) -> tuple[dict, str]:
    """(what overlays/gpu adds to the deployment's ray_actor_options, the worker group it lands on)."""
    if deployment.startswith(MODEL_DEPLOYMENT_PREFIX):
        return MODEL_PLACEMENT
    return GPU_PLACEMENT[deployment]


def dynamics_app(cfg: dict) -> dict:
    (app,) = [a for a in cfg["applications"] if a["name"] == "dynamics"]
    return app


def check_models_match_deployments(cfg: dict, where: str) -> None:
    """Every `models:` entry has its DynamicsModel-<name> deployment and vice versa; the ingress is there."""
    app = dynamics_app(cfg)
    args = app["args"]
    names = [m["name"] if isinstance(m, dict) else m for m in args["models"]]
    assert names, f"{where}: the dynamics app serves no model"
    assert len(names) == len(set(names)), f"{where}: duplicate model names {names}"
    for n in names:
        assert isinstance(n, str) and MODEL_NAME.match(n), f"{where}: bad model name {n!r}"
    default = args.get("default_model") or names[0]  # empty: the first model
    assert default in names, f"{where}: default_model {default!r} is not in models {names}"
    deployments = [d["name"] for d in app["deployments"]]
    assert len(deployments) == len(set(deployments)), f"{where}: duplicate deployments {deployments}"
    assert DYNAMICS_INGRESS in deployments, f"{where}: the dynamics app has no {DYNAMICS_INGRESS} ingress deployment"
    want = {MODEL_DEPLOYMENT_PREFIX + n for n in names}
    got = {d for d in deployments if d != DYNAMICS_INGRESS}
    assert not want - got, f"{where}: models without a deployment block: {sorted(want - got)}"
    assert not got - want, (
        f"{where}: deployments that serve no model in `models:` (or are misnamed): {sorted(got - want)}"
    )
    for d in app["deployments"]:
        opts = d.get("ray_actor_options", {})
        if d["name"] == DYNAMICS_INGRESS:
            assert not opts.get("num_gpus"), f"{where}: the dynamics ingress holds no model and needs no GPU"
            continue
        # Session-affine: a session's steps reach the replica that holds its state.
        assert d["request_router_config"]["request_router_class"].endswith(":ConsistentHashRouter"), (where, d["name"])
        ac = d["autoscaling_config"]
        assert 1 <= ac["min_replicas"] <= ac["max_replicas"], (where, d["name"])


@pytest.mark.parametrize("path", SERVE_COPIES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_model_has_its_deployment_in_each_serve_file(path):
    check_models_match_deployments(yaml.safe_load(path.read_text()), str(path.relative_to(ROOT)))


@pytest.mark.parametrize("target", TARGETS)
def test_every_model_has_its_deployment_in_each_overlay(target):
    check_models_match_deployments(serve_config(render(target)), target)


def test_model_deployment_check_catches_mismatches():
    cfg = yaml.safe_load(SERVE_YAML.read_text())
    app = dynamics_app(cfg)
    first = app["args"]["models"][0]["name"]
    orphan = copy.deepcopy(cfg)
    dynamics_app(orphan)["args"]["models"] = dynamics_app(orphan)["args"]["models"][1:]
    dynamics_app(orphan)["args"]["default_model"] = dynamics_app(orphan)["args"]["models"][0]["name"]
    with pytest.raises(AssertionError, match="serve no model"):
        check_models_match_deployments(orphan, "orphan")
    missing = copy.deepcopy(cfg)
    dynamics_app(missing)["deployments"] = [
        d for d in dynamics_app(missing)["deployments"] if d["name"] != MODEL_DEPLOYMENT_PREFIX + first
    ]
    with pytest.raises(AssertionError, match="without a deployment"):
        check_models_match_deployments(missing, "missing")


def test_gpu_overlay_puts_gpus_only_on_model_deployments():
    objs = render("overlays/gpu")
    cfg = serve_config(objs)
    gs = groups(rayservice(objs))
    group_gpus = {
        n: int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))
        for n, g in gs.items()
    }
    hosted: dict[str, list[int]] = {}  # GPU group -> [sum of min_replicas * num_gpus, same for max]
    for app in cfg["applications"]:
        for dep in app["deployments"]:
            name, opts = dep["name"], actor_options(app, dep)
            gpus = opts.get("num_gpus", 0)
            is_model = name.startswith(MODEL_DEPLOYMENT_PREFIX)
            if app["name"] == "dynamics":
                assert (gpus >= 1) == is_model, f"{name}: in dynamics only the model deployments get GPUs"
            else:
                assert not is_model
                assert gpus == 0 or name in ("ImageService", LLM_DEPLOYMENT), f"{name} must not ask for a GPU"
            (res,) = opts["resources"]
            (group,) = [n for n, g in gs.items() if res in g.get("resources", {})]
            assert (group_gpus[group] > 0) == (gpus > 0), f"{name} runs on {group}: GPU deployments on GPU groups only"
            if gpus:
                ac = dep["autoscaling_config"]
                h = hosted.setdefault(group, [0, 0])
                h[0] += ac["min_replicas"] * gpus
                h[1] += ac["max_replicas"] * gpus
    ingress = {d["name"]: d for d in dynamics_app(cfg)["deployments"]}[DYNAMICS_INGRESS]
    assert placement(DYNAMICS_INGRESS)[1] == "cpu" and not ingress["ray_actor_options"].get("num_gpus")
    # One replica per GPU: each GPU group holds exactly the replicas of the deployments it hosts,
    # from all their min_replicas to all their max_replicas (every model at its max at once).
    assert set(hosted) == set(GPU_GROUPS)
    for group, (lo, hi) in hosted.items():
        g = gs[group]
        assert g["minReplicas"] * group_gpus[group] == lo, f"{group}: minReplicas must hold {lo} GPUs of replicas"
        assert g["maxReplicas"] * group_gpus[group] == hi, f"{group}: maxReplicas must hold {hi} GPUs of replicas"


def test_prometheusrule_carries_the_rules_file():
    want = yaml.safe_load(RULES.read_text())["groups"]
    source = yaml.safe_load((K8S / "base" / "monitoring" / "prometheusrule.yaml").read_text())
    assert source["spec"]["groups"] == want, (
        "k8s/base/monitoring/prometheusrule.yaml differs from deploy/prometheus/worldserve.rules.yaml; run: "
        "python deploy/prometheus/to_prometheusrule.py > k8s/base/monitoring/prometheusrule.yaml"
    )
    for target in TARGETS:
        assert one(render(target), "PrometheusRule")["spec"]["groups"] == want


def test_dashboard_configmap_is_deploy_grafana_json():
    want = json.loads(DASHBOARD.read_text())
    assert json.loads((K8S / "base" / "monitoring" / "dashboards" / "worldserve.json").read_text()) == want, (
        "run: cp deploy/grafana/worldserve.json k8s/base/monitoring/dashboards/worldserve.json"
    )
    for target in TARGETS:
        cm = one(render(target), "ConfigMap", "worldserve-grafana-dashboard")
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(cm["data"]["worldserve.json"]) == want


# -- security -------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", TARGETS)
def test_non_root_everywhere(target):
    objs = render(target)
    n = 0
    for where, tpl in pod_templates(objs):
        pod_sc = tpl["spec"].get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, f"{where}: pod securityContext.runAsNonRoot"
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: seccompProfile"
        assert not tpl["spec"].get("hostNetwork") and not tpl["spec"].get("hostPID"), where
        for c in containers(tpl):
            n += 1
            sc = c.get("securityContext", {})
            where_c = f"{where}/{c['name']}"
            uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
            assert isinstance(uid, int) and uid > 0, f"{where_c}: runAsUser must be set and non-zero"
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where_c
            assert sc.get("allowPrivilegeEscalation") is False, f"{where_c}: allowPrivilegeEscalation: false"
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), f"{where_c}: capabilities.drop [ALL]"
            assert not sc.get("capabilities", {}).get("add"), f"{where_c}: adds capabilities"
            assert not sc.get("privileged"), where_c
    assert n >= 7
    rs = rayservice(objs)
    ray_uids = {sc_uid for _, tpl, c in ray_containers(rs) for sc_uid in [c["securityContext"]["runAsUser"]]}
    assert ray_uids == {1000}, "Ray containers run as the image's ray user (uid 1000)"
    auto = rs["spec"]["rayClusterConfig"]["autoscalerOptions"]["securityContext"]  # KubeRay's autoscaler sidecar
    assert auto["runAsNonRoot"] is True and auto["runAsUser"] > 0 and auto["allowPrivilegeEscalation"] is False
    assert "ALL" in auto["capabilities"]["drop"]
    if target != "base":
        ns = one(objs, "Namespace")
        assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def _all_yaml_docs_under(path: Path):
    for f in sorted(path.rglob("*.yaml")):
        for d in yaml.safe_load_all(f.read_text()):
            if isinstance(d, dict):
                yield f, d


SECRETISH = re.compile(r"pass(word)?|secret|token|api[_-]?key|credential", re.I)


def test_no_real_secret_is_committed():
    secrets = [(f, d) for f, d in _all_yaml_docs_under(K8S) if d.get("kind") == "Secret"]
    assert {d["metadata"]["name"] for _, d in secrets} == {
        "worldserve-session-redis",
        "worldserve-gcs-redis",
        "worldserve-api-keys",
    }
    for f, d in secrets:
        assert not d.get("data"), f"{f}: templates use stringData placeholders, not base64 data"
        for k, v in d["stringData"].items():
            assert "REPLACE_ME" in v, f"{f}: Secret {d['metadata']['name']} key {k} holds a real-looking value"
    keys = json.loads(one([d for _, d in secrets], "Secret", "worldserve-api-keys")["stringData"]["api_keys.json"])
    for e in keys["keys"]:
        assert not re.fullmatch(r"[0-9a-f]{64}", e["sha256"]), "the key template must not carry a real key hash"
    # No literal credentials anywhere: secret-looking env vars come from Secrets, URLs reference them.
    for target in TARGETS:
        for where, tpl in pod_templates(render(target)):
            for c in containers(tpl):
                for name, e in env_of(c).items():
                    if (SECRETISH.search(name) and not name.endswith("_FILE")) or name == "REDISCLI_AUTH":
                        assert "valueFrom" in e and "value" not in e, (
                            f"{where}/{c['name']}: {name} must come from a Secret"
                        )
                    if "value" in e:
                        assert not re.search(r"://[^/\s]*:[^$@/\s][^@/\s]*@", e["value"]), (
                            f"{where}/{c['name']}: {name} carries a literal password"
                        )
    for f in list(K8S.rglob("*")) + list((ROOT / "deploy").rglob("*")):
        if f.is_file():
            text = f.read_text(errors="replace")
            assert not re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", text), f
            assert not re.search(r"\bws_[A-Za-z0-9_-]{32}\b", text), f"{f}: looks like a worldserve API key"


# -- wiring ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", TARGETS)
def test_rayservice_wiring(target):
    objs = render(target)
    rs = rayservice(objs)
    cfg = serve_config(objs)
    rcc = rs["spec"]["rayClusterConfig"]
    assert rcc["enableInTreeAutoscaling"] is True
    assert rcc["rayVersion"] == "2.60.0"
    assert rcc["authOptions"]["mode"] == "token"
    gs = groups(rs)
    assert tuple(gs) == WORKER_GROUPS
    for name, g in gs.items():
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], name
        limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        gpus = int(limits.get("nvidia.com/gpu", 0))
        if target == "overlays/gpu" and name in GPU_GROUPS:
            assert gpus >= 1, f"{name} needs nvidia.com/gpu in the gpu overlay"
        else:
            assert gpus == 0, f"{name}: no GPUs outside the gpu overlay's GPU groups"
        if target == "overlays/dev":
            assert g["minReplicas"] == g["replicas"] == g["maxReplicas"] == 1
    # Serve's gRPC port is what KubeRay's Serve Service exposes (it keeps only the port named "serve").
    ports = rs["spec"]["serveService"]["spec"]["ports"]
    assert [(p["name"], p["port"]) for p in ports] == [("serve", cfg["grpc_options"]["port"])]
    head_ports = {
        p["name"]: p["containerPort"] for p in rcc["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert head_ports["grpc"] == cfg["grpc_options"]["port"]
    assert head_ports["http"] == cfg["http_options"]["port"] == 8000  # KubeRay's proxy health check port
    assert "serve" not in head_ports, "a head port named 'serve' would replace the gRPC port in the Serve Service"
    assert cfg["http_options"]["host"] == "0.0.0.0"
    # Metrics, env and the key file on every Ray container.
    secrets = {d["metadata"]["name"]: d for d in yaml.safe_load_all(SECRET_TEMPLATES.read_text())}
    for where, tpl, c in ray_containers(rs):
        mports = [p for p in c["ports"] if p["name"] == "metrics"]
        assert [p["containerPort"] for p in mports] == [8080], f"{where}: metrics port 8080"
        env = env_of(c)
        pw = env["SESSION_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert pw["key"] in secrets[pw["name"]]["stringData"]
        assert env["REDIS_URL"]["value"] == "redis://:$(SESSION_REDIS_PASSWORD)@worldserve-session-redis:6379/0"
        names = list(env)
        assert names.index("SESSION_REDIS_PASSWORD") < names.index("REDIS_URL"), "$(VAR) expands only earlier vars"
        keys_file = Path(env["WORLDSERVE_API_KEYS_FILE"]["value"])
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        vols = {v["name"]: v for v in tpl["spec"]["volumes"]}
        (mount,) = [m for m in mounts.values() if keys_file.parent == Path(m["mountPath"])]
        secret_vol = vols[mount["name"]]["secret"]
        assert mount.get("readOnly") is True
        assert keys_file.name in secrets[secret_vol["secretName"]]["stringData"]
    # GCS fault tolerance on its own Redis, not the session one.
    ft = rcc["gcsFaultToleranceOptions"]
    gcs_host = ft["redisAddress"].split("://")[-1].split(":")[0]
    services = {o["metadata"]["name"] for o in objs if o["kind"] == "Service"}
    assert gcs_host in services and gcs_host != "worldserve-session-redis"
    ref = ft["redisPassword"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] != "worldserve-session-redis" and ref["key"] in secrets[ref["name"]]["stringData"]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("redis", ("worldserve-session-redis", "worldserve-gcs-redis"))
def test_redis_statefulsets(target, redis):
    objs = render(target)
    sts = one(objs, "StatefulSet", redis)
    c = {c["name"]: c for c in sts["spec"]["template"]["spec"]["containers"]}["redis"]
    script = c["args"][0]
    for flag in (
        "--appendonly yes",
        "--appendfsync everysec",
        "--maxmemory-policy noeviction",
        '--maxmemory "$REDIS_MAXMEMORY"',
        "--include /run/redis/auth.conf",
        "--dir /data",
    ):
        assert flag in script, f"{redis}: {flag}"
    assert "requirepass" in script and "REPLACE_ME" in script  # refuses the placeholder password
    env = env_of(c)
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": redis, "key": "password"}
    assert re.fullmatch(r"\d+(mb|gb)", env["REDIS_MAXMEMORY"]["value"])
    assert [m["mountPath"] for m in c["volumeMounts"] if m["name"] == "data"] == ["/data"]
    assert [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]] == ["data"]
    # maxmemory below the memory limit, leaving room for the AOF rewrite fork.
    limit = c["resources"]["limits"]["memory"]
    limit_b = int(limit[:-2]) * {"Mi": 2**20, "Gi": 2**30}[limit[-2:]]
    mm = env["REDIS_MAXMEMORY"]["value"]
    mm_b = int(mm[:-2]) * {"mb": 2**20, "gb": 2**30}[mm[-2:]]
    assert mm_b <= 0.8 * limit_b, f"{redis}: maxmemory {mm} too close to the {limit} limit"
    labels = sts["spec"]["template"]["metadata"]["labels"]
    svc = one(objs, "Service", redis)
    assert selects({"matchLabels": svc["spec"]["selector"]}, labels)
    assert sts["spec"]["serviceName"] in {o["metadata"]["name"] for o in objs if o["kind"] == "Service"}


@pytest.mark.parametrize("target", TARGETS)
def test_only_ray_pods_reach_redis(target):
    objs = render(target)
    rs = rayservice(objs)
    pols = [o for o in objs if o["kind"] == "NetworkPolicy"]
    ray_pods = [
        kuberay_pod_labels(tpl, "head" if w == "head" else "worker", "headgroup" if w == "head" else w)
        for w, tpl, _ in ray_containers(rs)
    ]
    head = ray_pods[0]
    cleanup = {**head, "ray.io/node-type": "redis-cleanup"}  # KubeRay's GCS cleanup Job, from the head template
    stranger = {"app": "something-else"}
    for redis, clients in (("worldserve-session-redis", ray_pods), ("worldserve-gcs-redis", [head, cleanup])):
        labels = one(objs, "StatefulSet", redis)["spec"]["template"]["metadata"]["labels"]
        mine = [p for p in pols if selects(p["spec"]["podSelector"], labels)]
        assert len(mine) == 1, f"{redis}: one NetworkPolicy"
        pol = mine[0]
        assert pol["spec"]["policyTypes"] == ["Ingress"]
        redis_rules = [r for r in pol["spec"]["ingress"] if any(p["port"] == 6379 for p in r["ports"])]
        assert len(redis_rules) == 1
        peers = redis_rules[0]["from"]
        assert all("namespaceSelector" not in p and "ipBlock" not in p for p in peers), "same namespace pods only"
        for pod in clients:
            assert any(selects(p["podSelector"], pod) for p in peers), f"{redis}: Ray pod {pod} is not allowed in"
        assert not any(selects(p["podSelector"], stranger) for p in peers)
        if redis == "worldserve-gcs-redis":
            worker = ray_pods[1]
            assert not any(selects(p["podSelector"], worker) for p in peers), "workers do not talk to the GCS Redis"
        for rule in pol["spec"]["ingress"]:
            if rule is not redis_rules[0]:
                assert [p["port"] for p in rule["ports"]] == [9121], "other peers reach the exporter only"


@pytest.mark.parametrize("target", ("base", "overlays/gpu"))
def test_pdbs_cover_each_worker_group(target):
    objs = render(target)
    rs = rayservice(objs)
    pdbs = [o for o in objs if o["kind"] == "PodDisruptionBudget"]
    for name, g in groups(rs).items():
        pod = kuberay_pod_labels(g["template"], "worker", name)
        mine = [p for p in pdbs if selects(p["spec"]["selector"], pod)]
        assert len(mine) == 1, f"group {name}: {len(mine)} PDBs"
        spec = mine[0]["spec"]
        assert (
            isinstance(spec["minAvailable"], int) and "maxUnavailable" not in spec
        )  # RayCluster has no scale subresource
        assert spec["selector"]["matchLabels"]["ray.io/group"] == name
        assert spec["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    head = kuberay_pod_labels(rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"], "head", "headgroup")
    assert not [p for p in pdbs if selects(p["spec"]["selector"], head)]


@pytest.mark.parametrize("target", TARGETS)
def test_podmonitors_select_the_metrics_ports(target):
    objs = render(target)
    rs = rayservice(objs)
    pms = {o["metadata"]["name"]: o for o in objs if o["kind"] == "PodMonitor"}
    head_tpl = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    head = kuberay_pod_labels(head_tpl, "head", "headgroup")
    assert selects(pms["worldserve-ray-head"]["spec"]["selector"], head)
    assert not selects(pms["worldserve-ray-workers"]["spec"]["selector"], head)
    for name, g in groups(rs).items():
        w = kuberay_pod_labels(g["template"], "worker", name)
        assert selects(pms["worldserve-ray-workers"]["spec"]["selector"], w)
        assert not selects(pms["worldserve-ray-head"]["spec"]["selector"], w)
    for pm in ("worldserve-ray-head", "worldserve-ray-workers"):
        spec = pms[pm]["spec"]
        assert [e["port"] for e in spec["podMetricsEndpoints"]] == ["metrics"]
        assert head_tpl["metadata"]["labels"][spec["jobLabel"]] == "worldserve"
    sts = one(objs, "StatefulSet", "worldserve-session-redis")
    labels = sts["spec"]["template"]["metadata"]["labels"]
    spec = pms["worldserve-session-redis"]["spec"]
    assert selects(spec["selector"], labels)
    assert labels[spec["jobLabel"]] == "worldserve-session-redis"  # the job the Redis alerts select
    exporter_ports = {p["name"] for c in sts["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
    assert [e["port"] for e in spec["podMetricsEndpoints"]] == ["metrics"] and "metrics" in exporter_ports


# -- rules and dashboard --------------------------------------------------------------------------
def test_rules_use_defined_recordings_and_known_jobs():
    groups_ = yaml.safe_load(RULES.read_text())["groups"]
    rules = [r for g in groups_ for r in g["rules"]]
    recorded = {r["record"] for r in rules if "record" in r}
    alerts = [r for r in rules if "alert" in r]
    assert len(alerts) >= 8
    for r in rules:
        used = set(re.findall(r"\bworldserve:[a-z0-9_:]+", r["expr"]))
        assert used <= recorded, f"{r.get('record') or r.get('alert')}: undefined recording rules {used - recorded}"
        for job in re.findall(r'job="([^"]+)"', r["expr"]):
            assert job == "worldserve-session-redis", job
    for a in alerts:
        assert (
            a["labels"]["severity"] in ("warning", "critical")
            and a["annotations"]["summary"]
            and a["annotations"]["description"]
        )
    names = {a["alert"] for a in alerts}
    for must in (
        "WorldserveStepLatencyP99High",
        "WorldserveErrorRatioHigh",
        "WorldserveDynamicsQueueBacklog",
        "WorldserveReplicasPinnedAtMax",
        "WorldserveSessionRedisMemoryHigh",
        "WorldserveSessionRedisAOFWriteFailing",
        "WorldserveDynamicsModelStepSlow",
        "WorldserveDynamicsItemFailures",
        "WorldserveDynamicsStateCacheNearBudget",
        "WorldserveDynamicsStateEvictionsHigh",
    ):
        assert must in names
    # The Step SLO threshold is a histogram bucket bound, so the violation ratio is exact.
    from worldserve.common.metrics import LATENCY_BUCKETS_S

    assert 0.25 in LATENCY_BUCKETS_S and 'le="0.25"' in RULES.read_text()


def test_dashboard_panels():
    d = json.loads(DASHBOARD.read_text())
    assert d["uid"] == "worldserve" and d["schemaVersion"] >= 36
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    titles = " | ".join(p["title"] for p in d["panels"]).lower()
    for want in (
        "requests/s",
        "errors/s",
        "p50",
        "p99",
        "replicas",
        "batch size",
        "frames/s",
        "cache hit",
        "active sessions",
        "queue depth",
        "redis op latency",
        "routed requests/s by model",
        "model steps/s by attention backend / kernel",
        "state cache bytes",
        "evictions/s by model and reason",
        "item failures",
    ):
        assert want in titles, want
    for p in d["panels"]:
        if p["type"] == "row":
            continue
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}" and t["expr"]
            if not t["expr"].startswith(("max(redis_", "min(redis_")):
                assert "$namespace" in t["expr"], f"{p['title']}: filter on $namespace"
    # No two panels overlap.
    cells = set()
    for p in d["panels"]:
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']} overlaps another"
                cells.add((x, y))


# Every worldserve_dynamics_* metric the dynamics services export, as the code names it (Ray's
# exporter adds the ray_ prefix, and _total to counters): its kind and its labels besides the
# application / deployment / replica tags Ray adds. The dashboard and the rules query only these.
DYNAMICS_METRICS: dict[str, tuple[str, frozenset[str]]] = {
    # The ingress, DynamicsService (requests, request_duration_seconds and redis_op_duration_seconds
    # are every service's: worldserve.common.metrics.ServiceMetrics).
    "worldserve_dynamics_requests": ("counter", frozenset({"rpc", "code"})),
    "worldserve_dynamics_request_duration_seconds": ("histogram", frozenset({"rpc"})),
    "worldserve_dynamics_redis_op_duration_seconds": ("histogram", frozenset({"op"})),
    "worldserve_dynamics_routed_requests": ("counter", frozenset({"model"})),
    "worldserve_dynamics_quota_rejections": ("counter", frozenset({"quota", "tenant"})),  # tenants: 64 named
    "worldserve_dynamics_quota_steps_admitted": ("counter", frozenset({"tenant"})),
    # Each model's deployment, DynamicsModel-<name>: every metric carries the bounded `model` label.
    "worldserve_dynamics_batch_size": ("histogram", frozenset({"model"})),
    "worldserve_dynamics_queue_depth": ("gauge", frozenset({"model"})),
    "worldserve_dynamics_active_sessions": ("gauge", frozenset({"model"})),
    "worldserve_dynamics_state_cache_bytes": ("gauge", frozenset({"model"})),
    "worldserve_dynamics_state_evictions": ("counter", frozenset({"model", "reason"})),  # reason: budget|deleted|stale
    "worldserve_dynamics_context_cache_hits": ("counter", frozenset({"model"})),
    "worldserve_dynamics_context_cache_misses": ("counter", frozenset({"model"})),
    "worldserve_dynamics_frames_generated": ("counter", frozenset({"model"})),
    "worldserve_dynamics_model_step_duration_seconds": ("histogram", frozenset({"model"})),
    "worldserve_dynamics_model_steps": ("counter", frozenset({"model", "backend", "kernel"})),
    "worldserve_dynamics_step_conflicts": ("counter", frozenset({"model"})),
    "worldserve_dynamics_item_failures": ("counter", frozenset({"model"})),
    "worldserve_dynamics_queue_wait_seconds": ("histogram", frozenset({"model", "priority"})),
    "worldserve_dynamics_deadline_steps": ("counter", frozenset({"model", "outcome"})),  # outcome: met|missed
}
SCRAPED_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
TARGET_LABELS = frozenset({"application", "deployment", "replica", "namespace", "job", "pod", "instance"})
RAW_DYNAMICS = re.compile(r"\b(ray_worldserve_dynamics_[A-Za-z0-9_]+)\s*(\{[^{}]*\})?")
REPLICA_ALERTS = ("WorldserveReplicasPinnedAtMax", "WorldserveReplicasUnavailable")  # per deployment: a model's too


def dynamics_metric(scraped: str) -> tuple[str, str, frozenset[str]]:
    """ray_worldserve_dynamics_<what><suffix> -> (exported name, kind, labels a query may use)."""
    for name, (kind, labels) in DYNAMICS_METRICS.items():
        for sfx in SCRAPED_SUFFIXES[kind]:
            if scraped == "ray_" + name + sfx:
                return name, kind, labels | TARGET_LABELS | ({"le"} if sfx == "_bucket" else set())
    raise AssertionError(
        f"{scraped}: not a metric the dynamics services export (DYNAMICS_METRICS) with the suffix "
        "Ray scrapes it under (counters _total; histograms _bucket/_sum/_count; gauges bare)"
    )


def _matcher_labels(body: str) -> list[str]:
    body = re.sub(r'"(?:[^"\\]|\\.)*"', '""', body)
    return re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", body)


def _aggregations(expr: str):
    """(by-labels, argument text) of every `agg by (labels) (argument)` in a PromQL expression."""
    for m in re.finditer(r"\b(?:sum|max|min|avg|count)\s+by\s*\(([^()]*)\)\s*\(", expr):
        depth, i = 1, m.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(expr[i], 0)
            i += 1
        yield [x.strip() for x in m.group(1).split(",") if x.strip()], expr[m.end() : i - 1]


def dashboard_queries() -> list[tuple[str, str]]:
    d = json.loads(DASHBOARD.read_text())
    out = [(p["title"], t["expr"]) for p in d["panels"] for t in p.get("targets", [])]
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            out.append((f"variable {v['name']}", v["query"]["query"]))
    return out


def rule_queries() -> list[tuple[str, str]]:
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    return [(r.get("record") or r["alert"], r["expr"]) for r in rules]


def test_dashboard_and_rules_query_only_exported_dynamics_metrics():
    used = set()
    for where, expr in dashboard_queries() + rule_queries():
        assert not re.findall(r"(?<![A-Za-z0-9_])worldserve_dynamics_\w+", expr), (
            f"{where}: Ray scrapes application metrics with a ray_ prefix"
        )
        for scraped, matchers in RAW_DYNAMICS.findall(expr):
            name, kind, labels = dynamics_metric(scraped)
            used.add(name)
            bad = set(_matcher_labels(matchers or "")) - labels
            assert not bad, f"{where}: {scraped} has no label(s) {sorted(bad)}"
        for by, arg in _aggregations(expr):
            for scraped, _ in RAW_DYNAMICS.findall(arg):
                bad = set(by) - dynamics_metric(scraped)[2]
                assert not bad, f"{where}: aggregates {scraped} by {sorted(bad)}, which it does not carry"
    # The per-model metrics the brief asks to watch are all on the dashboard or in the rules.
    assert {n for n, (_, labels) in DYNAMICS_METRICS.items() if "model" in labels} <= used, sorted(
        {n for n, (_, labels) in DYNAMICS_METRICS.items() if "model" in labels} - used
    )
    with pytest.raises(AssertionError):
        dynamics_metric("ray_worldserve_dynamics_queue_depth_total")  # a gauge has no _total
    with pytest.raises(AssertionError):
        dynamics_metric("ray_worldserve_dynamics_context_cache_sessions")  # not exported


def test_dashboard_filters_model_panels_on_model_variable():
    d = json.loads(DASHBOARD.read_text())
    (var,) = [v for v in d["templating"]["list"] if v["name"] == "model"]
    m = re.fullmatch(r"label_values\((ray_worldserve_dynamics_\w+)\{[^{}]*\}, model\)", var["query"]["query"])
    assert m and "model" in dynamics_metric(m.group(1))[2], var["query"]
    assert var["includeAll"] and var["multi"] and var["allValue"] == ".*" and "$namespace" in var["query"]["query"]
    for p in d["panels"]:
        for t in p.get("targets", []):
            for scraped, matchers in RAW_DYNAMICS.findall(t["expr"]):
                if "model" in DYNAMICS_METRICS[dynamics_metric(scraped)[0]][1]:
                    assert 'model=~"$model"' in matchers, f'{p["title"]}: filter {scraped} on model=~"$model"'
                    assert re.search(r"\bby\s*\([^()]*\bmodel\b", t["expr"]), f"{p['title']}: split by model"


def _rule_dependencies() -> dict[str, set[str]]:
    """rule name -> the raw dynamics metrics it reads, through recording rules."""
    rules = dict(rule_queries())
    deps: dict[str, set[str]] = {}

    def of(name: str) -> set[str]:
        if name not in deps:
            expr = rules[name]
            got = {dynamics_metric(m)[0] for m, _ in RAW_DYNAMICS.findall(expr)}
            for rec in re.findall(r"\bworldserve:[a-z0-9_:]+", expr):
                got |= of(rec)
            deps[name] = got
        return deps[name]

    return {name: of(name) for name in rules}


def test_alerts_about_a_model_name_it():
    alerts = {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r}
    deps = _rule_dependencies()
    per_model = {a for a in alerts if any("model" in DYNAMICS_METRICS[m][1] for m in deps[a])}
    assert {
        "WorldserveDynamicsQueueBacklog",
        "WorldserveDynamicsModelStepSlow",
        "WorldserveDynamicsItemFailures",
        "WorldserveDynamicsStateCacheNearBudget",
        "WorldserveDynamicsStateEvictionsHigh",
    } <= per_model
    for a in per_model | set(REPLICA_ALERTS):
        ann = alerts[a]["annotations"]
        assert "$labels.model" in ann["description"], f"{a}: its description must name the model"
        if a in per_model:
            assert "$labels.model" in ann["summary"], f"{a}: its summary must name the model"
    # The promtool unit tests show each per-model alert firing, with the model in its labels.
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    fired: dict[str, list[dict]] = {}
    for t in tests:
        for case in t.get("alert_rule_test", []):
            fired.setdefault(case["alertname"], []).extend(case.get("exp_alerts") or [])
    for a in per_model | set(REPLICA_ALERTS):
        assert fired.get(a), f"{a}: no promtool unit test shows it firing"
    for a in per_model:
        assert all("model" in e["exp_labels"] for e in fired[a]), f"{a}: fires without a model label"
    assert any("model" in e["exp_labels"] for a in REPLICA_ALERTS for e in fired[a]), "replica alerts carry model"


def test_state_cache_budget_matches_serve_config():
    budget = dynamics_app(yaml.safe_load(SERVE_YAML.read_text()))["args"]["state_cache_bytes"]
    (ratio,) = [e for n, e in rule_queries() if n == "worldserve:dynamics_state_cache_budget:ratio"]
    assert re.fullmatch(rf"worldserve:dynamics_state_cache_bytes:max / {budget}\s*", ratio), (
        f"the rule's budget must be state_cache_bytes ({budget}) of deploy/serve/worldserve.yaml: {ratio!r}"
    )
    d = json.loads(DASHBOARD.read_text())
    (panel,) = [p for p in d["panels"] if p["title"].lower().startswith("state cache bytes")]
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s_["value"] for s_ in steps[1:]] == [budget], "the dashboard's budget line must be state_cache_bytes"


def _promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool is not installed (Prometheus' CLI): PromQL syntax is checked by the e2e scrape test only")
    return tool


def test_promtool_checks_and_unit_tests_rules():
    tool = _promtool()
    out = subprocess.run([tool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run([tool, "test", "rules", str(RULES_TEST)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_parses_every_dashboard_query():
    tool = _promtool()
    d = json.loads(DASHBOARD.read_text())
    rules = []
    for p in d["panels"]:
        for i, t in enumerate(p.get("targets", [])):
            expr = t["expr"].replace("$__rate_interval", "5m").replace("$namespace", ".*").replace("$model", ".*")
            rules.append({"record": f"dashboard:panel{p['id']}_{i}", "expr": expr})
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "dashboard.rules.yaml"
        f.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
        out = subprocess.run([tool, "check", "rules", str(f)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
