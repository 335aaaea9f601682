"""A second local cluster whose archive is an S3-compatible server, for test_archive_faults.py.

pytest's process has ray.init'ed the shared session cluster (its archive is a local folder), so
this one runs in a child process with its own Ray, Redis and ports: every deployment pinned to one
replica (one sessions replica runs the one archiver), then one JSON line on stdout (gRPC target, API
key, Redis URL, metrics endpoint) and it serves until its stdin closes.

    python tests/e2e/archive_cluster.py '{"workdir": ..., "app_args": {...}}'
"""

from __future__ import annotations

import json
import sys


def main(spec: dict) -> None:
    from worldserve.deploy import load_config
    from worldserve.local import local_cluster

    overrides = {}
    for app in load_config()["applications"]:
        for d in app.get("deployments", []):
            if "autoscaling_config" in d:
                one = {"min_replicas": 1, "max_replicas": 1, "initial_replicas": 1}
                overrides[d["name"]] = {"autoscaling_config": {**d["autoscaling_config"], **one}}
    with local_cluster(
        num_cpus=4,
        workdir=spec["workdir"],
        app_args={"torch_threads": 1, **spec["app_args"]},
        deployment_overrides=overrides,
        text=False,  # no free text here: the language model's start-up is not what this tests
    ) as c:
        info = {"target": c.target, "key": c.keys["tenant-a"], "redis": c.redis.url, "metrics": c.metrics_url}
        print(json.dumps(info), flush=True)
        sys.stdin.read()  # until the test closes it


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
