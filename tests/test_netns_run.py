"""scripts/netns-run: root's network namespace, an unprivileged user's, or the host network with a
notice; each way runs the command (loopback up inside a namespace)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "netns-run"
PROBE = (
    "import os, socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
    "socket.create_connection(s.getsockname()).close(); "
    "print(','.join(n for _, n in socket.if_nameindex()), os.environ.get('WORLDSERVE_E2E_HOST_NET', ''))"
)


def run(mode: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLDSERVE_E2E_HOST_NET", "WORLDSERVE_NO_NETNS")}
    env["WORLDSERVE_NETNS"] = mode
    return subprocess.run(
        [str(SCRIPT), sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.mark.parametrize("mode", ["root", "user"])
def test_a_namespace_has_only_a_working_loopback(mode):
    r = run(mode)
    if r.returncode == 3:
        pytest.skip(f"{mode} network namespaces are not possible on this machine: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["lo"]  # no host interface; loopback works; not marked host network


def test_without_a_namespace_the_command_runs_on_the_host_network_with_a_notice():
    r = run("none")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == "1"  # the e2e tests learn they are on the host network
    assert r.stderr.count("\n") == 1 and "host network" in r.stderr
