"""Archive faults under load, on a real cluster whose archive is a real S3-compatible server.

Several SDK clients step their sessions continuously while chunks of CHUNK steps go to S3 (moto's
standalone server, made durable by its request log: tests/e2e/s3_server.py). Then the S3 server
freezes (SIGSTOP: the archiver's requests hang mid-chunk), the sessions replica that runs the
archiver is SIGKILLed in that pass (Serve starts another), the frozen server is killed and,
OUTAGE_S after it froze, started again on its data; the killed replica's sessions pass to the new
replica's archiver after LEASE_S, inside the outage, so it fails and backs off too. Afterwards: no
acknowledged step is lost (each one's frame is in the export), every export is steps 0..N once
each in order, no chunk is listed twice, no session ever held more than TAIL unarchived steps
(Steps answered RESOURCE_EXHAUSTED instead, which the SDK waits out), and Redis is back to its
steady size within RECOVERY_S of the restart.

The cluster runs in a child process (tests/e2e/archive_cluster.py): pytest's process has Ray
initialised for the shared cluster, whose archive is a local folder.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

HERE = Path(__file__).parent
OUTAGE_S = 30.0  # the S3 server is away this long: frozen for FROZEN_S, then dead
FROZEN_S = 8.0
RECOVERY_S = 60.0  # Redis back to its steady size within this long after the S3 server returns
CHUNK, WINDOW, TAIL = 8, 32, 24  # archive_chunk_steps, hot_window_steps, archive_max_tail_steps
LEASE_S = 10.0  # archive_lease_s: the killed replica's sessions go to the new one during the outage
SESSIONS = 3
BUCKET = "worlds"
ACTIONS = (["right"], ["left"], ["up"], [])


def _line(proc: subprocess.Popen, timeout_s: float) -> str:
    """The child's next stdout line, or fail after ``timeout_s``."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout_s):
        raise AssertionError(f"no line from {proc.args[:2]} in {timeout_s} s")
    line = proc.stdout.readline()
    assert line, f"{proc.args[:2]} exited ({proc.poll()})"
    return line


class S3Server:
    def __init__(self, tmp: Path):
        from worldserve.common.redis_server import free_port

        self.port, self.log, self.proc = free_port(), tmp / "s3.log", None
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.err = open(tmp / "s3.stderr", "ab")  # closed in stop()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "s3_server.py"), str(self.port), str(self.log), BUCKET],
            stdout=subprocess.PIPE,
            stderr=self.err,
            text=True,
        )
        assert _line(self.proc, 60).startswith("ready"), "the S3 server did not start"

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)
        if sig == signal.SIGKILL:
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGKILL)
        self.err.close()


def _replica_pids(root: int) -> list[int]:
    """pids of the SessionService replicas under the child cluster (not the shared cluster's):
    its process tree, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" (", 1)
            children.setdefault(int(rest.rsplit(") ", 1)[1].split()[1]), []).append(int(pid))
        except (OSError, IndexError, ValueError):
            pass  # gone meanwhile
    out, todo = [], [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            todo.append(pid)
            try:
                if b"ServeReplica:sessions:SessionService" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    out.append(pid)
            except OSError:
                pass
    return out


def _archive_failures(url: str, timeout_s: float) -> dict[str, float]:
    """The archiver's failed passes by reason, from the child cluster's Prometheus endpoint (Ray
    exports a replica's metrics every few seconds: polled until they show)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    deadline = time.monotonic() + timeout_s
    while True:
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        got = {
            s.labels.get("reason", ""): s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
            if s.name == "ray_worldserve_sessions_archive_failures_total"
        }
        if got or time.monotonic() > deadline:
            return got
        time.sleep(1)


@pytest.mark.timeout(900)
def test_archive_survives_a_sessions_replica_sigkill_and_an_s3_outage(tmp_path):
    if os.environ.get("WORLDSERVE_SKIP_E2E") == "1":
        pytest.skip("WORLDSERVE_SKIP_E2E=1")
    import boto3
    import redis as redis_sync

    from worldserve.client import WorldClient

    t_start = time.monotonic()
    s3 = S3Server(tmp_path)
    s3.start()
    options = {
        "endpoint": s3.endpoint,
        "region": "us-east-1",
        "access_key_id": "t",
        "secret_access_key": "t",
        "allow_http": True,
    }
    spec = {
        "workdir": str(tmp_path / "cluster"),
        "app_args": {
            "archive_url": f"s3://{BUCKET}/faults",
            "archive_options": options,
            "archive_chunk_steps": CHUNK,
            "hot_window_steps": WINDOW,
            "archive_max_tail_steps": TAIL,
            "archive_rid_keep_steps": 16,
            "archive_lease_s": LEASE_S,
        },
    }
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own Ray, not pytest's
    child = subprocess.Popen(
        [sys.executable, str(HERE / "archive_cluster.py"), json.dumps(spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        info = json.loads(_line(child, 600))
        t_up = time.monotonic()
        r = redis_sync.Redis.from_url(info["redis"])
        with WorldClient(info["target"], info["key"], timeout_s=60) as c:
            sids = [
                c.create_session(prompt="a red box on the left, grass, day", seed=i).session_id for i in range(SESSIONS)
            ]
        acked: dict[str, dict[int, bytes]] = {s: {} for s in sids}
        errors: list[BaseException] = []
        retries = [0]

        def player(sid: str) -> None:
            with WorldClient(info["target"], info["key"], timeout_s=60, retry_s=120) as c:
                try:
                    i = 0
                    while not stop.is_set():
                        got = c.step(sid, ACTIONS[i % len(ACTIONS)])
                        acked[sid][got.step] = got.frame.data
                        i += 1
                except BaseException as e:  # reported by the test
                    errors.append(e)
                retries[0] += c.retries

        threads = [threading.Thread(target=player, args=(s,), daemon=True) for s in sids]
        for t in threads:
            t.start()

        def rec(sid: str) -> dict[str, int]:
            h = r.hgetall(f"ws:tenant-a:{{{sid}}}")
            return {k: int(h.get(k.encode(), -1)) for k in ("step", "archived", "trimmed")}

        def log_bytes() -> int:
            return sum(int(r.memory_usage(f"ws:tenant-a:{{{s}}}:log", samples=0) or 0) for s in sids)

        def until(cond, timeout_s: float, what: str) -> float:
            t0 = time.monotonic()
            while not cond():
                assert time.monotonic() - t0 < timeout_s, f"{what}: not within {timeout_s} s"
                assert not errors, errors
                time.sleep(0.25)
            return time.monotonic() - t0

        # steady state: every session has archived chunks; Redis's steady size is measured meanwhile
        steady: list[int] = []
        until(
            lambda: steady.append(log_bytes()) or all(rec(s)["archived"] >= 3 * CHUNK for s in sids), 120, "archiving"
        )
        t_end = time.monotonic() + 4
        until(lambda: steady.append(log_bytes()) or time.monotonic() > t_end, 10, "steady")
        used_before = int(r.info("memory")["used_memory"])

        # the outage: the S3 server freezes (the archiver's requests hang), the sessions replica is
        # SIGKILLed in that pass, the server is killed, and started again OUTAGE_S after it froze
        s3.signal(signal.SIGSTOP)
        t_out = time.monotonic()
        (old,) = _replica_pids(child.pid)
        time.sleep(1.5)
        claimed = r.zrangebyscore("ws:archive:due", time.time(), "+inf")  # leased: a pass under way
        os.kill(old, signal.SIGKILL)
        time.sleep(max(0.0, FROZEN_S - (time.monotonic() - t_out)))
        s3.signal(signal.SIGKILL)
        peak_tail, peak_bytes, used_peak = 0, 0, 0
        while time.monotonic() - t_out < OUTAGE_S:
            peak_tail = max(peak_tail, *(rec(s)["step"] - rec(s)["archived"] for s in sids))
            peak_bytes = max(peak_bytes, log_bytes())
            used_peak = max(used_peak, int(r.info("memory")["used_memory"]))
            time.sleep(0.25)
        s3.start()
        t_back = time.monotonic()

        # recovery: the tails archived, Redis back to its steady size
        bound = max(steady)

        def recovered() -> bool:
            return all(rec(s)["step"] - rec(s)["archived"] <= 2 * CHUNK for s in sids) and log_bytes() <= 1.25 * bound

        recovery_s = until(recovered, RECOVERY_S, "Redis back to its steady size after the S3 server returned")
        new = _replica_pids(child.pid)
        after = log_bytes()
        used_after = int(r.info("memory")["used_memory"])
        time.sleep(2)  # and the players go on stepping
        stop.set()
        for t in threads:
            t.join(150)
        assert not errors, errors
        until(lambda: r.zcard("ws:archive:due") == 0, 30, "the last full chunks archived")

        # every acknowledged step is there, once, in order, with its frame; no chunk listed twice
        s3c = boto3.client(
            "s3", endpoint_url=s3.endpoint, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t"
        )
        total = 0
        with WorldClient(info["target"], info["key"], timeout_s=60, retry_s=60) as c:
            for sid in sids:
                stored = c.get_session(sid).step
                assert stored >= max(acked[sid]), (sid, stored, max(acked[sid]))
                exported = list(c.export_session(sid, include_frames=True))
                assert [e.step for e in exported] == list(range(stored + 1)), sid
                lost = [n for n, f in acked[sid].items() if exported[n].frame.data != f]
                assert not lost, f"{sid}: acknowledged steps {lost[:8]} differ in the export"
                base = f"faults/sessions/tenant-a/{sid}/"
                man = json.loads(s3c.get_object(Bucket=BUCKET, Key=base + "manifest.json")["Body"].read())
                spans = [(ch["first"], ch["last"]) for ch in man["chunks"]]
                assert spans == [(n, n + CHUNK - 1) for n in range(0, len(spans) * CHUNK, CHUNK)], spans
                keys = [
                    o["Key"]
                    for page in s3c.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=base + "chunks/")
                    for o in page.get("Contents", [])
                ]
                assert sorted(keys) == sorted(f"faults/{ch['key']}" for ch in man["chunks"]), (keys, spans)
                assert spans[-1][1] >= rec(sid)["archived"] > rec(sid)["step"] - CHUNK
                total += stored
        failures = _archive_failures(info["metrics"], 20)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        if child.poll() is None:
            child.stdin.close()
            try:
                child.wait(120)
            except subprocess.TimeoutExpired:
                child.kill()
        s3.stop()
    print(
        f"\narchive faults: {SESSIONS} sessions, {total} steps ({retries[0]} SDK retries), chunk {CHUNK}, "
        f"replica SIGKILLed with {len(claimed)} session(s) claimed (replicas {old} -> {new}), S3 away {OUTAGE_S:.0f} s "
        f"(frozen {FROZEN_S:.0f} s; its restart replayed its log in {t_back - t_out - OUTAGE_S:.1f} s); peak unarchived tail {peak_tail} (bound {TAIL}); sessions' log bytes "
        f"steady <= {bound}, peak {peak_bytes}, {after} after {recovery_s:.1f} s; used_memory {used_before} -> "
        f"{used_peak} -> {used_after}; the new archiver's failed passes {failures}; cluster up in {t_up - t_start:.0f} s, test {time.monotonic() - t_start:.0f} s"
    )
    assert claimed, "the archiver was not in a pass when its replica was killed"
    assert new and old not in new, (old, new)  # Serve started another sessions replica
    assert peak_tail <= TAIL, peak_tail  # the bound held: RESOURCE_EXHAUSTED, not growth
    assert peak_tail == TAIL, f"the outage never filled a tail ({peak_tail}): the bound was not exercised"
    assert retries[0] > 0  # the refused steps were waited out by the SDK (RESOURCE_EXHAUSTED + RetryInfo)
    assert sum(failures.values()) > 0, "the new archiver never met the outage (its lease did not pass it the sessions)"
