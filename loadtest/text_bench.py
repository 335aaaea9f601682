"""The text app's latency and batching through the whole stack: `python -m loadtest.text_bench`.

Starts a local cluster (embedded Redis + Ray + Serve, the repository's serve config; run it under
scripts/netns-run) or uses a running one (``--target`` and ``--key``), then over gRPC through
Serve's proxy (TextService.ParsePrompt, ``application: text``):

- latency: ``--n`` parses one after another (distinct held-out prompts: the replica's answer cache
  is not hit), p50 / p95 / p99;
- batching: ``--concurrency`` parses at once, repeated ``--rounds`` times (after one unmeasured
  round): throughput against one at a time (vLLM's continuous batching answers them in one engine
  loop).

Prints one JSON object (also written to ``--out``). ``--model``: the text model folder
(``text_model_path``; default: the shipped weights).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import json
import statistics
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import grpc


def _texts(n: int, salt: str) -> list[str]:
    """``n`` distinct held-out prompts (worldserve.train.text_heldout: templates and vocabulary the
    model never saw in training), a different draw per ``salt``: the replica's answer cache never hits."""
    from worldserve.train.text_heldout import heldout

    seed, out, seen = zlib.crc32(salt.encode()), [], set()
    while len(out) < n:
        for item in heldout(seed=seed, n_prompts=max(n, 50), n_events=0):
            if item.text not in seen and len(out) < n:
                seen.add(item.text)
                out.append(item.text)
        seed += 1
    return out


def _parse(stub, md, text: str) -> tuple[float, str]:
    from worldserve.v1 import text_pb2

    t0 = time.perf_counter()
    try:
        stub.ParsePrompt(text_pb2.ParsePromptRequest(text=text), metadata=md, timeout=60)
        code = "OK"
    except grpc.RpcError as e:
        code = e.code().name
    return time.perf_counter() - t0, code


def measure(target: str, key: str, n: int, concurrency: int, rounds: int) -> dict:
    from worldserve.v1 import text_pb2_grpc

    md = [("application", "text"), ("authorization", f"Bearer {key}")]
    with grpc.insecure_channel(target) as ch:
        stub = text_pb2_grpc.TextServiceStub(ch)
        for t in _texts(3, "warm "):  # first requests: connections, the engine's first batch
            _parse(stub, md, t)
        seq = [_parse(stub, md, t) for t in _texts(n, "seq ")]
        lat = sorted(s for s, _ in seq)
        q = statistics.quantiles(lat, n=100)
        one_rate = len(lat) / sum(lat)
        codes: dict[str, int] = {}
        for _, c in seq:
            codes[c] = codes.get(c, 0) + 1
        with cf.ThreadPoolExecutor(concurrency) as pool:
            # one round unmeasured, as the sequential part's first requests are: the pool's threads,
            # the proxy's and replicas' first concurrent calls
            list(pool.map(lambda t: _parse(stub, md, t), _texts(concurrency, "cwarm ")))
            t0 = time.perf_counter()
            done = 0
            for r in range(rounds):
                texts = _texts(concurrency, f"c{r} ")
                for _, c in pool.map(lambda t: _parse(stub, md, t), texts):
                    codes[c] = codes.get(c, 0) + 1
                    done += 1
            conc_rate = done / (time.perf_counter() - t0)
    return {
        "sequential": {"n": n, "p50_s": q[49], "p95_s": q[94], "p99_s": q[98], "parses_per_s": one_rate},
        "concurrent": {"concurrency": concurrency, "rounds": rounds, "parses_per_s": conc_rate},
        "speedup": conc_rate / one_rate,
        "codes": codes,
    }


@contextlib.contextmanager
def _cluster(model: str) -> Iterator[tuple[str, str]]:
    from worldserve.local import local_cluster

    args = {"torch_threads": 1, **({"text_model_path": model} if model else {})}
    with local_cluster(num_cpus=6, app_args=args, timeout_s=1200) as c:
        yield c.target, c.keys["tenant-a"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="", help="a running cluster's gRPC endpoint (default: start one)")
    ap.add_argument("--key", default="", help="its API key")
    ap.add_argument("--model", default="", help="text model folder for the cluster started here")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default="out/text_bench.json")
    a = ap.parse_args()
    ctx = contextlib.nullcontext((a.target, a.key)) if a.target else _cluster(a.model)
    with ctx as (target, key):
        result = measure(target, key, a.n, a.concurrency, a.rounds)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
