"""A real local cluster: embedded Redis, a local Ray, the serve config, gRPC over loopback.

Serve's gRPC proxy binds all interfaces, so these tests run only inside a private network
namespace where loopback is the only interface (`make test` provides one through
scripts/netns-run); elsewhere they skip, unless WORLDSERVE_E2E_HOST_NET=1 says otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worldserve.common.auth import add_key, new_key
from worldserve.common.redis_server import EmbeddedRedis, free_port


def isolated_netns() -> bool:
    import socket

    return [name for _, name in socket.if_nameindex()] == ["lo"]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    if not (isolated_netns() or os.environ.get("WORLDSERVE_E2E_HOST_NET") == "1"):
        pytest.skip("e2e needs a private network namespace (Serve's gRPC proxy binds all interfaces): run `make test`")
    import ray
    from ray import serve

    from worldserve import deploy as dep

    tmp = tmp_path_factory.mktemp("cluster")
    redis = EmbeddedRedis(tmp / "redis").start()
    keys_file = tmp / "keys.json"
    key_a, key_b = new_key(), new_key()
    add_key(keys_file, "tenant-a", key_a)
    add_key(keys_file, "tenant-b", key_b)
    grpc_port = free_port()
    metrics_port = free_port()
    ray.init(num_cpus=6, _metrics_export_port=metrics_port, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    cfg = dep.load_config(
        app_args={"redis_url": redis.url, "api_keys_file": str(keys_file), "torch_threads": 1},
        grpc_port=grpc_port,
        http_port=free_port(),
        deployment_overrides={
            "DynamicsService": {"autoscaling_config": {"min_replicas": 2, "max_replicas": 2, "initial_replicas": 2}},
        },
    )
    dep.deploy(cfg)
    dep.wait_healthy(600)
    info = {"target": f"127.0.0.1:{grpc_port}", "key_a": key_a, "key_b": key_b, "redis": redis, "tmp": Path(tmp),
            "metrics_url": f"http://127.0.0.1:{metrics_port}/metrics"}
    yield info
    serve.shutdown()
    ray.shutdown()
    redis.stop()


@pytest.fixture
def client(cluster):
    from worldserve.client import WorldClient

    with WorldClient(cluster["target"], cluster["key_a"], timeout_s=120) as c:
        yield c
