"""The local cluster behind `worldserve up | down | status`: the state file and the development key
in ``$WORLDSERVE_HOME``, our own Ray head (started, found and stopped alone) and the health wait.

Split from :mod:`worldserve.cli`, which holds the commands.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from worldserve.cli_errors import CliError


def home() -> Path:
    return Path(os.environ.get("WORLDSERVE_HOME", Path.home() / ".worldserve"))


def _state_path() -> Path:
    return home() / "state.json"


def _read_state() -> dict:
    p = _state_path()
    return json.loads(p.read_text()) if p.exists() else {}


def _write_state(state: dict) -> None:
    home().mkdir(parents=True, exist_ok=True)
    _state_path().write_text(json.dumps(state, indent=2))


def dev_key() -> str:
    """The local development key (created by `up`), or $WORLDSERVE_API_KEY."""
    if os.environ.get("WORLDSERVE_API_KEY"):
        return os.environ["WORLDSERVE_API_KEY"]
    p = home() / "dev_key"
    if not p.exists():
        raise CliError(f"no API key in {p}: run `worldserve up` (it makes one) or set WORLDSERVE_API_KEY")
    return p.read_text().strip()


def _ensure_dev_key() -> tuple[str, Path]:
    from worldserve.common.auth import add_key, new_key

    keys_file = Path(os.environ.get("WORLDSERVE_API_KEYS_FILE", home() / "api_keys.json"))
    key_path = home() / "dev_key"
    if key_path.exists() and keys_file.exists():
        return key_path.read_text().strip(), keys_file
    key = new_key()
    add_key(keys_file, "dev", key)
    home().mkdir(parents=True, exist_ok=True)
    key_path.write_text(key + "\n")
    key_path.chmod(0o600)
    return key, keys_file


def ray_command() -> list[str]:
    """Ray's command line, run by this interpreter: the ``ray`` first on PATH may be another
    Python's, whose Ray workers (Serve's proxy among them) could not import worldserve."""
    return [sys.executable, "-m", "ray.scripts.scripts"]


def _ray(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*ray_command(), *args], capture_output=True, text=True, env=env)


def _last_line(r: subprocess.CompletedProcess) -> str:
    """The last non-empty line a failed command printed (its error, usually)."""
    lines = [ln.strip() for ln in (r.stderr + "\n" + r.stdout).splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit status {r.returncode}"


RAY_TEMP_MAX = 40
"""Longest temp folder for our Ray head: Ray's socket paths below it
(``session_<date>_<pid>/sockets/plasma_store``, ~65 characters) must fit 107."""


def ray_temp_dir() -> Path:
    """``$WORLDSERVE_HOME/ray``, or where that path is too long for Ray's sockets, a short folder
    in /tmp named after it."""
    d = home() / "ray"
    if len(str(d)) <= RAY_TEMP_MAX:
        return d
    import hashlib

    return Path("/tmp") / f"worldserve-ray-{hashlib.sha256(str(d).encode()).hexdigest()[:10]}"


def ray_processes(temp_dir: str, gcs_address: str) -> list[int]:
    """PIDs of the processes of one local Ray cluster (see :func:`_ray_tree`)."""
    return _ray_tree(temp_dir, gcs_address)[1]


def _ray_tree(temp_dir: str, gcs_address: str) -> tuple[list[int], list[int]]:
    """PIDs of the processes of one local Ray cluster: those whose command line names its temp
    folder or its GCS address (``ray stop`` would stop every Ray cluster of this user), and their
    descendants: Ray's workers and agents retitle themselves (``ray::ProxyActor``), so only their
    parentage says which cluster they belong to."""
    gcs_port = gcs_address.rpartition(":")[2]
    marks = [temp_dir.rstrip("/") + "/", f"={gcs_address}", f"--gcs_server_port={gcs_port}"]
    me = os.getpid()
    roots: list[int] = []
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        pid = int(d.name)
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((d / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(pid)
        if any(m in cmd for m in marks):
            roots.append(pid)
    out, todo = set(roots), list(roots)
    while todo:
        for c in children.get(todo.pop(), ()):
            if c not in out and c != me:
                out.add(c)
                todo.append(c)
    return roots, sorted(out)


def stop_ray_cluster(temp_dir: str, gcs_address: str, timeout_s: float = 15.0) -> int:
    """Stop one local Ray cluster's processes (SIGTERM, then SIGKILL); returns how many there were."""
    roots, pids = _ray_tree(temp_dir, gcs_address)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    # Ray's own processes (GCS, raylet, agents) get the grace period; a worker that outlives
    # them by a second is killed (some ignore SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_running(p) for p in roots):
        time.sleep(0.2)
    deadline = min(deadline, time.monotonic() + 1.0)
    while time.monotonic() < deadline and any(_running(p) for p in pids):
        time.sleep(0.2)
    # stragglers, and workers forked meanwhile: killed until none is left (a killed process may
    # still show for a moment, and a dying raylet may fork one more worker)
    # (the first list counts: a worker whose raylet died is no longer its child)
    deadline = time.monotonic() + 5.0
    while (rest := [p for p in {*pids, *ray_processes(temp_dir, gcs_address)} if _running(p)]) and (
        time.monotonic() < deadline
    ):
        for pid in rest:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    return len(pids)


def start_ray_head(temp_dir: Path, num_cpus: int, env: dict | None = None) -> str:
    """Start a Ray head of our own (its own ports and temp folder, so that `down` can stop it
    alone); returns its GCS address."""
    from worldserve.common.redis_server import free_port

    env = dict(os.environ if env is None else env)
    if env.get("RAY_AUTH_MODE", "token") == "token" and not (
        env.get("RAY_AUTH_TOKEN") or env.get("RAY_AUTH_TOKEN_PATH")
    ):
        # `ray start` needs a token when token auth is on (Ray 2.60's default); on a fresh machine
        # there is none yet: make ~/.ray/auth_token once (captured, never printed), as Ray advises
        r = _ray("get-auth-token", "--generate", env=env)
        if r.returncode != 0:
            raise CliError(f"`ray get-auth-token --generate` failed: {_last_line(r)}")
    port = free_port()
    args = [
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        "--disable-usage-stats",
        f"--port={port}",
        f"--temp-dir={temp_dir}",
        f"--dashboard-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
        f"--num-cpus={num_cpus}",
    ]
    r = _ray(*args, env=env)
    if r.returncode != 0:
        raise CliError(f"`ray start` failed: {_last_line(r)} (logs in {temp_dir}; `worldserve --debug up` for more)")
    return f"127.0.0.1:{port}"


def _check_health(endpoint: str, key: str) -> None:
    from worldserve.client import WorldClient

    with WorldClient(endpoint, key, timeout_s=30) as c:
        for appname in ("image", "sessions", "dynamics"):
            deadline = time.monotonic() + 60
            while True:
                try:
                    assert c.health(appname) == "SERVING"
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed process whose parent has not reaped it yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        # as a server binds: a port whose last connections linger in TIME_WAIT is free to listen on
        # (without it, `up` right after `down` and a browser's visit saw the web port "in use")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
