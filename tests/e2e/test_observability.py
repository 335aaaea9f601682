"""Every metric the dashboard and the alerting rules query is one the services really export.

Drives a few requests through a real local cluster (tests/e2e/conftest.py), scrapes the Ray
node's Prometheus endpoint and checks each metric name found in deploy/grafana/worldserve.json and
deploy/prometheus/worldserve.rules.yaml against the scrape. redis_exporter metrics (redis_*) are
not in a local cluster and recording-rule outputs (worldserve:...) are not scraped; both are left out.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "worldserve.json"
RULES = ROOT / "deploy" / "prometheus" / "worldserve.rules.yaml"

# PromQL keywords and the names that may stand where a metric name could (not metrics).
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "inf",
    "nan",
    "atan2",
    "start",
    "end",
}
_IDENT = re.compile(r"(?<![\w:.$])([A-Za-z_:][A-Za-z0-9_:]*)\b(?!\s*\()")


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (Grafana variables allowed): what is left once string
    literals, label matchers, range/subquery brackets, grouping clauses and function calls are gone."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # string literals
    e = re.sub(r"\{[^{}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\[\]]*\]", " ", e)  # ranges, subqueries ([5m], [$__rate_interval])
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", e)  # `sum by (x) (` -> `sum (`
    e = re.sub(r"\$\{?\w+\}?", " ", e)  # Grafana variables outside brackets
    names = {m for m in _IDENT.findall(e) if m.lower() not in PROMQL_WORDS}
    return {n for n in names if not re.fullmatch(r"\d+[smhdwy]", n)}


def dashboard_exprs(d: dict) -> list[str]:
    exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", []) if t.get("expr")]
    for v in d.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if v.get("type") == "query" and q:
            m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", q)  # label_values(<expr>, label)
            exprs.append(m.group(1) if m else q)
    return exprs


def rule_exprs(doc: dict) -> list[str]:
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def referenced_metrics() -> dict[str, set[str]]:
    """metric name -> where it is used; recording-rule outputs and redis_exporter metrics left out."""
    rules = yaml.safe_load(RULES.read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    out: dict[str, set[str]] = {}
    for where, exprs in (
        ("dashboard", dashboard_exprs(json.loads(DASHBOARD.read_text()))),
        ("rules", rule_exprs(rules)),
    ):
        for expr in exprs:
            for name in metric_names(expr):
                if name in recorded or name.startswith("redis_"):
                    continue
                out.setdefault(name, set()).add(where)
    return out


def test_metric_name_extraction():
    assert metric_names('sum by (application, le) (rate(ray_x_bucket{rpc="Step", le="0.25"}[$__rate_interval]))') == {
        "ray_x_bucket"
    }
    assert metric_names(
        "histogram_quantile(0.99, sum by (le) (rate(a_bucket[5m]))) > 0.25 and on (namespace) b > 1"
    ) == {"a_bucket", "b"}
    assert metric_names('(x{code!="OK"} or 0 * y) / ignoring (code) group_left z offset 5m') == {"x", "y", "z"}
    assert metric_names("sum by (a) (rate(x[5m])) / max without (b) (y) + sum(z) by (le)") == {"x", "y", "z"}
    assert metric_names("worldserve:step_requests:rate5m > bool 1 unless absent(c)") == {
        "worldserve:step_requests:rate5m",
        "c",
    }
    names = referenced_metrics()
    assert "ray_worldserve_dynamics_request_duration_seconds_bucket" in names
    assert "ray_serve_autoscaling_desired_replicas" in names
    assert not [n for n in names if n.startswith(("worldserve:", "redis_"))]
    assert len(names) >= 15


# Counters of events this test does not provoke: Ray exports a counter only once it was incremented.
EVENT_ONLY = {
    "ray_worldserve_dynamics_item_failures_total",
    "ray_worldserve_dynamics_step_conflicts_total",
    "ray_worldserve_dynamics_quota_rejections_total",
    "ray_worldserve_sessions_quota_rejections_total",
    "ray_worldserve_web_live_frames_dropped_total",  # a live player too slow for its frames
    "ray_worldserve_web_live_deadline_misses_total",  # a live frame past its deadline (an idle machine has none)
    # vLLM's engine gauges are exported only while the engine reports: tests/e2e/test_text.py waits for them
    "ray_vllm_num_requests_running",
    "ray_vllm_num_requests_waiting",
}


def scraped_names(url: str) -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=30).read().decode()
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


@pytest.mark.e2e
def test_dashboard_and_rules_query_only_exported_metrics(cluster):
    from worldserve.client import WorldClient

    wanted = referenced_metrics()
    with WorldClient(cluster["target"], cluster["key_a"], timeout_s=120) as c:
        c.generate_image("sand, night", seed=1)  # image: its own RPC metrics (a caption: no text app)
        s = c.create_session(prompt="a red door on the left, grass", seed=3)  # sessions (+ image by handle)
        for keys in (["right"], ["left"], ["up", "jump"]):  # dynamics: a cache miss, then hits
            c.step(s.session_id, keys)
        c.step(s.session_id, ["right"], deadline_ms=5000)  # an interactive step: deadline outcomes
        c.fork_session(s.session_id, step=1)
        # text: a free-text parse (its own metrics, and vLLM's engine metrics through Ray Serve LLM)
        from worldserve.v1 import text_pb2, text_pb2_grpc

        md = [("application", "text"), ("authorization", f"Bearer {cluster['key_a']}")]
        text_pb2_grpc.TextServiceStub(c.channel).ParsePrompt(
            text_pb2.ParsePromptRequest(text="a snowy night with a pink door to my right"), metadata=md, timeout=120
        )
        gone = c.create_session(prompt="a red door on the left, grass, day", seed=4)
        c.step(gone.session_id, ["left"])
        c.delete_session(gone.session_id)  # its replica evicts its state: evictions{reason="deleted"}
        with pytest.raises(grpc.RpcError) as ei:  # an error, so error ratios have a numerator
            c.get_session("00000000000000000000000000000000")
        assert ei.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
        with pytest.raises(grpc.RpcError):
            c.step("00000000000000000000000000000000", ["left"])

        # web: a live player on its own world (live gauges, frames, key-to-frame, fps windows)
        from websockets.sync.client import connect

        live = c.create_session(prompt="a blue box on the right, snow", seed=5)
        url = cluster["http"].replace("http://", "ws://") + f"/v1/sessions/{live.session_id}/play?fps=5"
        with connect(url, additional_headers={"authorization": f"Bearer {cluster['key_a']}"}, open_timeout=60) as ws:
            ws.recv(timeout=30)  # hello
            # Ray exports every ~10 s, and keeps a gauge only while it is being set (about two export
            # intervals): keep stepping while polling so queue depth and active sessions stay fresh.
            deadline = time.monotonic() + 90
            missing: set[str] = set(wanted) - EVENT_ONLY  # (those may never come: not waited for)
            seq = 0
            while True:
                c.step(s.session_id, ["right"])
                seq += 1
                ws.send(json.dumps({"type": "action", "seq": seq, "keys": ["right"] if seq % 2 else []}))
                while True:  # take the frames that came meanwhile
                    try:
                        ws.recv(timeout=0.01)
                    except TimeoutError:
                        break
                missing = set(wanted) - EVENT_ONLY - scraped_names(cluster["metrics_url"])
                if not missing or time.monotonic() > deadline:
                    break
                time.sleep(3)
    assert not missing, "queried by the dashboard/rules but not exported: " + ", ".join(
        f"{n} ({'/'.join(sorted(wanted[n]))})" for n in sorted(missing)
    )
