"""Every `worldserve` command answers the failures a newcomer meets with one line (what failed,
where, what to do) and a non-zero exit; `--debug` shows the traceback. Run as a user would: the
CLI in a subprocess, a fresh $WORLDSERVE_HOME, nothing listening where it looks.
(With a cluster: a bad key, an unknown model or prompt, in tests/e2e/test_cli_failures.py.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from worldserve.common.redis_server import free_port


def cli(*args: str, home: Path, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k not in ("WORLDSERVE_API_KEY", "REDIS_URL", "RAY_ADDRESS")}
    e.update(WORLDSERVE_HOME=str(home), COLUMNS="200", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "worldserve.cli", *args], capture_output=True, text=True, env=e, timeout=timeout
    )


def one_line(r: subprocess.CompletedProcess) -> str:
    """The failure's whole output: exactly one line on stderr, nothing on stdout, exit 1."""
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and not r.stdout.strip(), (r.stdout, r.stderr)
    assert lines[0].startswith("error: "), lines
    print(lines[0])  # (pytest -s shows what a user sees)
    return lines[0][len("error: ") :]


@pytest.mark.parametrize("command", [["status"], ["play"], ["eval", "--worlds", "1"]])
def test_no_cluster_is_one_line_naming_the_endpoint_and_up(tmp_path, command):
    target = f"127.0.0.1:{free_port()}"
    r = cli(*command, "--target", target, home=tmp_path, env={"WORLDSERVE_API_KEY": "wsk_x"})
    assert one_line(r) == f"no worldserve at {target}: run `worldserve up` (or pass --target)"


def test_a_stale_state_file_points_at_a_cluster_that_is_gone(tmp_path):
    # an earlier `up` wrote its endpoint; that cluster is gone (a reboot, a kill): status says so
    target = f"127.0.0.1:{free_port()}"
    (tmp_path / "state.json").write_text(json.dumps({"endpoint": target, "ray_address": "127.0.0.1:1"}))
    (tmp_path / "dev_key").write_text("wsk_old\n")
    assert (
        one_line(cli("status", home=tmp_path)) == f"no worldserve at {target}: run `worldserve up` (or pass --target)"
    )


def test_no_key_says_where_it_looked_and_what_makes_one(tmp_path):
    msg = one_line(cli("play", "--target", f"127.0.0.1:{free_port()}", home=tmp_path))
    assert msg == f"no API key in {tmp_path / 'dev_key'}: run `worldserve up` (it makes one) or set WORLDSERVE_API_KEY"


def test_debug_shows_the_traceback(tmp_path):
    target = f"127.0.0.1:{free_port()}"
    r = cli("--debug", "status", "--target", target, home=tmp_path, env={"WORLDSERVE_API_KEY": "wsk_x"})
    assert r.returncode == 1
    assert "Traceback" in r.stderr and "CliError" in r.stderr and len(r.stderr.splitlines()) > 5


def test_a_missing_extra_is_named_before_anything_starts(tmp_path):
    # a machine without the serve extra: `import ray` fails (a finder refuses it, as if absent)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        textwrap.dedent(
            """
            import sys
            class _NoRay:
                def find_spec(self, name, path=None, target=None):
                    if name == "ray" or name.startswith("ray."):
                        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                    return None
            sys.meta_path.insert(0, _NoRay())
            """
        )
    )
    home = tmp_path / "home"
    r = cli("up", home=home, env={"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])})
    assert (
        one_line(r)
        == "ray is not installed (the 'serve' extra is missing): run pip install -e '.[serve,text]' (or `make install`)"
    )
    assert not (home / "state.json").exists() and not (home / "redis").exists()  # nothing was started


def test_a_port_in_use_is_named_before_anything_starts(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = tmp_path / "serve.yaml"
        repo = Path(__file__).resolve().parents[1] / "deploy" / "serve" / "worldserve.yaml"
        cfg.write_text(repo.read_text().replace("port: 9000", f"port: {port}", 1))
        assert f"port: {port}" in cfg.read_text()
        home = tmp_path / "home"
        msg = one_line(cli("up", "--config", str(cfg), home=home))
    assert msg == (
        f"port {port} (Serve's gRPC proxy) is in use by another program: stop it, or pass --config with "
        "another grpc_options.port"
    )
    assert not (home / "redis").exists()  # no Redis started for a cluster that cannot start


def test_ray_is_run_by_this_interpreter_not_the_first_ray_on_path(tmp_path, monkeypatch):
    from worldserve.cli_cluster import _ray, ray_command

    # another Python's `ray` first on PATH: it must never run
    other = tmp_path / "other-python" / "bin"
    other.mkdir(parents=True)
    marker = tmp_path / "ran"
    (other / "ray").write_text(f"#!/bin/sh\ntouch {marker}\necho 'ray, version 1.0.0 (another python)'\n")
    (other / "ray").chmod(0o755)
    monkeypatch.setenv("PATH", f"{other}{os.pathsep}{os.environ['PATH']}")
    assert ray_command()[0] == sys.executable
    r = _ray("--version")
    import ray

    assert r.returncode == 0 and ray.__version__ in r.stdout, (r.stdout, r.stderr)
    assert not marker.exists()


def test_an_exit_a_command_chose_is_not_an_error():
    import typer

    from worldserve.cli_errors import friendly

    @friendly()
    def done(code: int) -> None:
        raise typer.Exit(code)

    for code in (0, 3):
        with pytest.raises(typer.Exit) as e:
            done(code)
        assert e.value.exit_code == code


def test_ray_s_temp_folder_is_short_enough_for_its_sockets(monkeypatch, tmp_path):
    from worldserve.cli_cluster import RAY_TEMP_MAX, ray_temp_dir

    monkeypatch.setenv("WORLDSERVE_HOME", "/tmp/wsh")
    assert ray_temp_dir() == Path("/tmp/wsh/ray")
    deep = tmp_path / ("x" * 60) / ".worldserve"
    monkeypatch.setenv("WORLDSERVE_HOME", str(deep))
    short = ray_temp_dir()
    assert len(str(short)) <= RAY_TEMP_MAX and short.parent == Path("/tmp")
    monkeypatch.setenv("WORLDSERVE_HOME", str(deep) + "2")
    assert ray_temp_dir() != short  # another home, another folder


def test_a_port_whose_last_connection_lingers_in_time_wait_is_free():
    from worldserve.cli_cluster import _port_free

    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    cl = socket.create_connection(("127.0.0.1", port))
    conn, _ = srv.accept()
    assert not _port_free(port)  # listening: in use
    conn.close()  # the server side closes first: its end lingers in TIME_WAIT
    cl.close()
    srv.close()
    assert _port_free(port)  # as after `worldserve down`: `up` may listen there again
