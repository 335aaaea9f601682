"""A real local cluster: embedded Redis, a local Ray, the serve config, gRPC over loopback.

Serve's gRPC proxy binds all interfaces, so `make test` runs these tests inside a private network
namespace whose only interface is loopback (scripts/netns-run: root's, or an unprivileged user's).
Where no namespace is possible they run on the host network anyway (random ports, loopback
clients) with a one-line notice; WORLDSERVE_SKIP_E2E=1 is the only way to skip them.
"""

from __future__ import annotations

import os
import socket

import pytest

OPEN_WORLD = "open-world"  # the served causal DiT (kind causal_dit): tests/e2e/test_open_world.py
OPEN_WORLD_TEXT_DIM = 16  # the width of the text embedding it takes


def isolated_netns() -> bool:
    return [name for _, name in socket.if_nameindex()] == ["lo"]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    if os.environ.get("WORLDSERVE_SKIP_E2E") == "1":
        pytest.skip("WORLDSERVE_SKIP_E2E=1")
    if not isolated_netns():
        print(
            "\ne2e: no private network namespace: the cluster runs on the host network "
            "(Serve's gRPC proxy binds all interfaces; random ports, loopback clients)"
        )
    from worldserve.deploy import load_config
    from worldserve.local import local_cluster

    yaml = {d["name"]: d for app in load_config()["applications"] for d in app.get("deployments", [])}

    def pinned(name: str, n: int) -> dict:
        """The YAML's autoscaling of deployment ``name`` (its policy included), pinned to ``n`` replicas."""
        return {
            "autoscaling_config": {
                **yaml[name]["autoscaling_config"],
                "min_replicas": n,
                "max_replicas": n,
                "initial_replicas": n,
            }
        }

    # a third model beside the shipped two: a tiny random Wan-lineage causal DiT in the published
    # (diffusers) layout, with keyboard + mouse action modules and a text embedding input
    from worldserve.dynamics.models.causal_dit.testing import TINY_OPTIONS, write_tiny_folder

    open_world = {
        "name": OPEN_WORLD,
        "tier": "open",
        "kind": "causal_dit",
        "path": str(write_tiny_folder(tmp_path_factory.mktemp("open-world"), text_dim=OPEN_WORLD_TEXT_DIM)),
        "options": dict(TINY_OPTIONS),
    }
    # the text app over the shipped language model (weights/text): free text is understood for real
    overrides = {
        # one replica of each text deployment (LLMServer: vLLM's engine on a quarter CPU + its replica's)
        "TextService": pinned("TextService", 1),
        "LLMServer:worldserve-text": pinned("LLMServer:worldserve-text", 1),
        # one replica of the open world model, on a quarter of a CPU (the cluster has 6 on 2 cores)
        f"DynamicsModel-{OPEN_WORLD}": {
            **pinned("DynamicsModel-platformer-fast", 1),
            "ray_actor_options": {"num_cpus": 0.25},
        },
        # two replicas of the default model (the replica-kill test), one of the fast tier
        "DynamicsModel-platformer": pinned("DynamicsModel-platformer", 2),
        "DynamicsModel-platformer-fast": pinned("DynamicsModel-platformer-fast", 1),
        # two replicas of each ingress that enforces quotas: a quota must hold wherever a call lands
        "DynamicsService": pinned("DynamicsService", 2),
        "SessionService": pinned("SessionService", 2),
        # two web gateways: players of one live session reach both (the second plays through a relay)
        "WebGateway": pinned("WebGateway", 2),
    }
    with local_cluster(
        num_cpus=6,
        # on 2 busy cores the language model's start (Ray Serve LLM: its replica, a node set-up
        # task and vLLM's engine processes) comes on top of every other app's
        timeout_s=1200,
        workdir=tmp_path_factory.mktemp("cluster"),
        app_args={"torch_threads": 1},
        deployment_overrides=overrides,
        extra_models=[open_world],
    ) as c:
        yield {
            "target": c.target,
            "key_a": c.keys["tenant-a"],
            "key_b": c.keys["tenant-b"],
            "redis": c.redis,
            "tmp": c.workdir,
            "metrics_url": c.metrics_url,
            "http": c.http,
            "deployment_overrides": overrides,  # over deploy/serve/worldserve.yaml's deployments
            "extra_models": [open_world],  # served beside deploy/serve/worldserve.yaml's models
            "open_world": {**open_world, "text_dim": OPEN_WORLD_TEXT_DIM},
            "text_model_path": "",  # the shipped weights
        }


@pytest.fixture
def client(cluster):
    from worldserve.client import WorldClient

    with WorldClient(cluster["target"], cluster["key_a"], timeout_s=120) as c:
        yield c
