"""The README's quickstart, run as written: its bash block line by line (up, status, play, eval,
the SDK snippet, down) and its Python block saved as quickstart.py, on a fresh HOME, with this
interpreter's `worldserve` and `python` first on PATH. The README cannot drift from what works.

On the way it checks that `worldserve up` starts its Ray head on a fresh machine (it makes the Ray
token first), and that `worldserve down` stops only the Ray cluster `up` started: another local
Ray cluster of the same user, started just before, keeps running (`ray stop` would stop both)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def block(kind: str) -> str:
    """The fenced block after ``<!-- quickstart:<kind> -->`` in the README."""
    m = re.search(rf"<!-- quickstart:{kind} -->\s*```{kind}\n(.*?)```", README.read_text(), re.S)
    assert m, f"README has no quickstart {kind} block"
    return m.group(1)


def commands() -> list[str]:
    """The bash block's commands, comments dropped."""
    out = []
    for line in block("bash").splitlines():
        cmd = line.split(" # ")[0].strip() if not line.lstrip().startswith("#") else ""
        if cmd:
            out.append(cmd)
    return out


def test_the_quickstart_blocks_are_what_the_test_runs():
    cmds = commands()
    assert [shlex.split(c)[:2] for c in cmds] == [
        ["worldserve", "up"],
        ["worldserve", "status"],
        ["worldserve", "play"],
        ["worldserve", "eval"],
        ["python", "quickstart.py"],
        ["worldserve", "down"],
    ]
    compile(block("python"), "quickstart.py", "exec")


@pytest.mark.e2e
@pytest.mark.timeout(1500)
def test_the_readme_quickstart_runs_as_written(tmp_path):
    from worldserve.cli_cluster import _port_free, _ray, _running, ray_processes, start_ray_head, stop_ray_cluster

    home = tmp_path / "home"
    work = home / "work"
    work.mkdir(parents=True)
    (work / "quickstart.py").write_text(block("python"))
    bindir = str(Path(sys.executable).parent)
    env = {  # a fresh machine: no Ray token either (Ray 2.60 has token auth on: `up` makes one)
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("WORLDSERVE_", "RAY_ADDRESS", "REDIS_URL", "RAY_AUTH_TOKEN"))
    }
    env.update(HOME=str(home), PATH=bindir + os.pathsep + env.get("PATH", ""), COLUMNS="200")
    if not Path(bindir, "python").exists():  # `python` must be this interpreter
        (home / "bin").mkdir()
        (home / "bin" / "python").symlink_to(sys.executable)
        env["PATH"] = str(home / "bin") + os.pathsep + env["PATH"]
    out: dict[str, subprocess.CompletedProcess] = {}
    ray_env = {**env, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "token"}  # as `worldserve` runs Ray (its default)
    other_dir, other, theirs = tempfile.mkdtemp(prefix="wsx", dir="/tmp"), None, set()
    ours_all: set[int] = set()
    try:
        for cmd in commands():
            words = shlex.split(cmd)
            name = words[0] if words[0] == "python" else words[1]  # up, status, ..., python, down
            if name == "down":  # another Ray cluster of this user, which `down` must leave alone
                other = start_ray_head(Path(other_dir), 1, env=ray_env)
                theirs = set(ray_processes(other_dir, other))
                ours = json.loads((home / ".worldserve" / "state.json").read_text())
                ours_all = set(ray_processes(ours["ray_temp_dir"], ours["ray_address"]))
                assert ours_all, ours
            t0 = time.monotonic()
            r = subprocess.run(cmd, shell=True, cwd=work, env=env, capture_output=True, text=True, timeout=1200)
            out[name] = r
            print(f"{cmd!r}: exit {r.returncode} in {time.monotonic() - t0:.0f} s")
            assert r.returncode == 0, (cmd, r.stdout[-3000:], r.stderr[-3000:])
        assert other is not None and theirs
        assert not ray_processes(ours["ray_temp_dir"], ours["ray_address"])  # ours stopped, every process
        # workers, agents and the vLLM engine retitle themselves: found by parentage before, gone after
        assert not [p for p in ours_all if _running(p)], [Path(f"/proc/{p}/cmdline").read_bytes() for p in ours_all]
        assert _port_free(9000) and _port_free(8000)  # `up` again finds Serve's ports free
        assert _ray("status", f"--address={other}", env=ray_env).returncode == 0  # the other cluster still answers
        assert set(ray_processes(other_dir, other)) >= theirs
    finally:
        if "down" not in out:
            subprocess.run("worldserve down", shell=True, cwd=work, env=env, capture_output=True, timeout=120)
        if other:
            stop_ray_cluster(other_dir, other)
        shutil.rmtree(other_dir, ignore_errors=True)
    up = json.loads(out["up"].stdout.strip().splitlines()[-1])
    assert up["endpoint"] == "127.0.0.1:9000" and up["api_key"].startswith("ws")
    assert (home / ".ray" / "auth_token").exists()  # a fresh machine: `up` made Ray's token (never printed)
    assert (home / ".worldserve" / "dev_key").read_text().strip() == up["api_key"]
    status = out["status"].stderr
    for app in ("image", "sessions", "dynamics", "web"):
        assert re.search(rf"^{app}\s+SERVING", status, re.M), status
    play = out["play"].stderr
    assert "understood (text): a pink door on the right, snow, night" in play, play
    assert "event at step 10: 'make it rain' -> 'it starts to rain'" in play, play
    assert (work / "demo.gif").read_bytes()[:6] in (b"GIF87a", b"GIF89a")
    report = json.loads((work / "out" / "eval" / "report.json").read_text())
    assert report["worlds"] == 4 and report["distinct_worlds"] == 4 and report["game"] is not None
    assert [ln.split()[0] for ln in out["python"].stdout.splitlines()] == ["1", "2", "3"]
    assert "stopped" in out["down"].stderr
