"""`worldserve down` stops only the Ray cluster `worldserve up` started: another local Ray
cluster of the same user keeps running (`ray stop` would have stopped both). `worldserve up`
starts its Ray head on a fresh machine too (it makes the Ray token first)."""

from __future__ import annotations

import shutil
import tempfile

import pytest


@pytest.mark.e2e
def test_stopping_our_ray_cluster_leaves_another_running(cluster, tmp_path, monkeypatch):
    from worldserve.cli_cluster import _ray, ray_processes, start_ray_head, stop_ray_cluster

    # a fresh machine: no Ray token yet (Ray 2.60 has token auth on; `ray start` wants one)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)

    ours_dir, other_dir = tempfile.mkdtemp(prefix="wso", dir="/tmp"), tempfile.mkdtemp(prefix="wsx", dir="/tmp")
    other = ours = None
    try:
        other = start_ray_head(other_dir, 1)
        assert (tmp_path / ".ray" / "auth_token").exists()  # made once, never printed
        ours = start_ray_head(ours_dir, 1)
        mine, theirs = set(ray_processes(ours_dir, ours)), set(ray_processes(other_dir, other))
        assert mine and theirs and not mine & theirs
        assert stop_ray_cluster(ours_dir, ours) == len(mine)
        assert not ray_processes(ours_dir, ours)
        assert _ray("status", f"--address={ours}").returncode != 0
        assert _ray("status", f"--address={other}").returncode == 0  # the other cluster still answers
        assert set(ray_processes(other_dir, other)) >= theirs
    finally:
        for d, a in ((ours_dir, ours), (other_dir, other)):
            if a:
                stop_ray_cluster(d, a)
            shutil.rmtree(d, ignore_errors=True)
