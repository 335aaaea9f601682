"""Wrap a Prometheus rule file into a prometheus-operator PrometheusRule.

    python deploy/prometheus/to_prometheusrule.py > k8s/base/monitoring/prometheusrule.yaml

The groups are copied unchanged (tests/k8s/test_manifests.py fails when the two files differ).
Needs only PyYAML.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
HEADER = """\
# GENERATED from deploy/prometheus/worldserve.rules.yaml by deploy/prometheus/to_prometheusrule.py;
# edit the rule file and regenerate. tests/k8s checks that both carry the same groups.
"""


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, s: str):
    style = "|" if "\n" in s else None  # multi-line PromQL and descriptions stay readable
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style=style)


_Dumper.add_representer(str, _str)


def prometheus_rule(groups: list, name: str = "worldserve") -> dict:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "worldserve"}},
        "spec": {"groups": groups},
    }


def render(rules_file: Path) -> str:
    groups = yaml.safe_load(rules_file.read_text())["groups"]
    body = yaml.dump(prometheus_rule(groups), Dumper=_Dumper, sort_keys=False, width=120)
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rules", nargs="?", type=Path, default=HERE / "worldserve.rules.yaml")
    args = ap.parse_args(argv)
    sys.stdout.write(render(args.rules))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
