"""A durable S3-compatible server on loopback for the archive fault tests: moto's standalone server
with its request recorder as a write-ahead log, so it can be stopped (SIGSTOP, SIGKILL) and started
again on the same port with the same objects.

moto keeps its objects in memory. Started with ``MOTO_ENABLE_RECORDING``, it appends every request
it receives to a log file before it handles it; started again on the same log, this script replays
the log's writes into a fresh server on a spare port before it opens the real one, so no client
ever sees a half-restored bucket (the same objects, ETags included: moto's ETag is the MD5 of the
bytes, so conditional PUTs replay as they ran). A request the killed server had logged but not
answered lands on replay, as a real S3 PUT whose reply was lost may have.

    python tests/e2e/s3_server.py PORT LOG BUCKET   # prints "ready <endpoint>" once it serves
"""

from __future__ import annotations

import base64
import json
import os
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse


def replay(log: Path, endpoint: str) -> int:
    """Send the log's writes (PUT, POST, DELETE) to ``endpoint``; returns how many."""
    import requests

    n = 0
    for line in log.read_text().splitlines():
        e = json.loads(line)
        if e["method"] not in ("PUT", "POST", "DELETE"):
            continue
        url = urlparse(e["url"])
        body = base64.b64decode(e["body"]) if e.get("body_encoded") else (e.get("body") or b"")
        headers = {k: v for k, v in e["headers"].items() if k.lower() not in ("transfer-encoding", "host")}
        target = f"{endpoint}{url.path}" + (f"?{url.query}" if url.query else "")
        requests.request(e["method"], target, headers=headers, data=body, timeout=30)
        n += 1
    return n


def main(port: int, log: Path, bucket: str) -> None:
    os.environ["MOTO_ENABLE_RECORDING"] = "True"
    os.environ["MOTO_RECORDER_FILEPATH"] = str(log)
    import boto3
    from moto.moto_api import recorder
    from moto.server import ThreadedMotoServer

    if log.exists():  # a restart: the objects back first (the backend is shared in-process)
        recorder.stop_recording()  # the replay is not logged again
        spare = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        spare.start()
        host, p = spare.get_host_and_port()
        replayed = replay(log, f"http://{host}:{p}")
        spare.stop()
        recorder.start_recording()
        print(f"replayed {replayed}", file=sys.stderr, flush=True)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    if not log.exists() or not log.stat().st_size:
        boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t"
        ).create_bucket(Bucket=bucket)
    print(f"ready {endpoint}", flush=True)
    threading.Event().wait()  # until killed


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
