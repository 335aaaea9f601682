"""Fuzzing every RPC against a real local cluster: random well-formed requests (every field drawn
from values a careless or hostile client sends) and random bytes. Bounded (fixed seed, ~100
requests per RPC). No request may answer INTERNAL or UNKNOWN (bytes that are not the request
message answer INVALID_ARGUMENT), no message may leak a traceback or Ray internals, and the cluster
must still serve a normal Step afterwards."""

from __future__ import annotations

import math
import random

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor as FD
from google.protobuf.message_factory import GetMessageClass

from worldserve.client import WorldClient
from worldserve.common.servicer import rpc_table
from worldserve.v1 import dynamics_pb2, image_pb2, sessions_pb2, text_pb2

WELL_FORMED = 60
RANDOM_BYTES = 20
LEAKS = ("Traceback", "ray::", "\x1b[", 'File "', "site-packages", "actor_id", "pid=", '.py"')
MODULES = (dynamics_pb2, sessions_pb2, image_pb2, text_pb2)


def _repeated(f) -> bool:
    flag = getattr(f, "is_repeated", None)  # protobuf >= 6; older: the label
    return bool(flag) if flag is not None else f.label == FD.LABEL_REPEATED


def _methods():
    out = {}
    for mod in MODULES:
        for svc in mod.DESCRIPTOR.services_by_name.values():
            for m in svc.methods:
                out[m.name] = (svc.full_name, m)
    return out


class Fuzzer:
    def __init__(self, rng: random.Random, session_ids: list[str]):
        self.rng = rng
        self.sids = session_ids

    def string(self, name: str) -> str:
        r = self.rng
        pool = [
            "",
            "x",
            "a" * 65,
            "é☃\u0000\n",
            "s_" + "A" * 20,
            "../../etc/passwd",
            "x" * r.choice([100, 5000, 70000]),
            "a red door on the left, grass, day",
            "night falls",
            "right",
            "png",
            "%s%n{}",
        ]
        if "session" in name or name in ("fork_of",):
            pool += self.sids * 4
        if name == "page_token":
            pool += ["eyJ4IjoxfQ==", "MTIzOm5hbg==", "!!!", "0:inf:s_x"]
        if name == "request_id":
            pool += ["r-1", "r-1", "bad id"]
        if name == "model":
            pool += ["platformer", "platformer-fast", "nope"] * 2
        return r.choice(pool)

    def number(self, f) -> float | int:
        r = self.rng
        if f.cpp_type in (f.CPPTYPE_FLOAT, f.CPPTYPE_DOUBLE):
            return r.choice([0.0, 1.0, -1.0, 0.5, 20.0, 1e9, -1e30, math.inf, -math.inf, math.nan, r.uniform(-5, 5)])
        signed = f.cpp_type in (f.CPPTYPE_INT32, f.CPPTYPE_INT64)
        bits = 64 if f.cpp_type in (f.CPPTYPE_INT64, f.CPPTYPE_UINT64) else 32
        top = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
        vals = [0, 1, 2, 3, 7, 64, 256, 4097, 100_000, top] + ([-1, -top - 1] if signed else [])
        return r.choice(vals)

    def fill(self, msg, depth: int = 0) -> None:
        r = self.rng
        for f in msg.DESCRIPTOR.fields:
            if r.random() < 0.3:
                continue
            if f.message_type is not None and f.message_type.GetOptions().map_entry:
                m = getattr(msg, f.name)
                for _ in range(r.choice([0, 1, 2, 3])):
                    k = r.choice(["mouse_x", "mouse_y", "", "x" * 100])
                    vf = f.message_type.fields_by_name["value"]
                    m[k] = self.number(vf) if vf.cpp_type != vf.CPPTYPE_STRING else self.string(k)
                continue
            if _repeated(f):
                n = r.choice([0, 1, 2, 3, 3, 300]) if depth == 0 else r.choice([0, 1, 2])
                for _ in range(n):
                    if f.message_type is not None:
                        if depth < 3:
                            self.fill(getattr(msg, f.name).add(), depth + 1)
                    elif f.type == f.TYPE_STRING:
                        getattr(msg, f.name).append(r.choice(["left", "right", "jump", "up", "jmp", "", "x" * 300]))
                    elif f.type == f.TYPE_BYTES:
                        getattr(msg, f.name).append(r.randbytes(r.choice([0, 8, 100])))
                    else:
                        getattr(msg, f.name).append(self.number(f))
                continue
            if f.message_type is not None:
                if depth < 3:
                    self.fill(getattr(msg, f.name), depth + 1)
            elif f.type == f.TYPE_STRING:
                setattr(msg, f.name, self.string(f.name))
            elif f.type == f.TYPE_BYTES:
                setattr(
                    msg,
                    f.name,
                    r.choice([b"", r.randbytes(16), b"\x89PNG\r\n\x1a\n" + r.randbytes(64), r.randbytes(5000)]),
                )
            elif f.type == f.TYPE_BOOL:
                setattr(msg, f.name, r.random() < 0.5)
            elif f.type == f.TYPE_ENUM:
                setattr(msg, f.name, r.choice([v.number for v in f.enum_type.values] + [99]))
            else:
                setattr(msg, f.name, self.number(f))


def _check(name: str, e: grpc.RpcError, raw: bool) -> str | None:
    code, msg = e.code(), e.details() or ""
    if any(leak in msg for leak in LEAKS) or "\n" in msg:
        return f"{name}: leaky message {code.name} {msg[:300]!r}"
    if code == grpc.StatusCode.INTERNAL:
        return f"{name}: INTERNAL {msg[:300]!r}"
    if code == grpc.StatusCode.UNKNOWN:
        return f"{name}: UNKNOWN {msg[:300]!r}"
    if raw and code == grpc.StatusCode.INVALID_ARGUMENT and "parsed" in msg and "class" in msg:
        return f"{name}: a Python class in {msg[:300]!r}"
    return None


@pytest.mark.timeout(900)
def test_fuzz_every_rpc(cluster):
    rng = random.Random(20261130)
    with WorldClient(cluster["target"], cluster["key_a"], timeout_s=60, retry_s=0) as c:
        sids = [c.create_session(prompt="a red door on the left, grass, day", seed=i).session_id for i in range(3)]
        fz = Fuzzer(rng, sids)
        ch = c.channel
        problems: list[str] = []
        counts: dict[str, int] = {}
        for name, (service, m) in _methods().items():
            app = rpc_table()[name][1]
            path = f"/{service}/{name}"
            ident = lambda b: b
            if m.client_streaming:
                call = ch.stream_stream(path, request_serializer=ident, response_deserializer=ident)
            elif m.server_streaming:
                call = ch.unary_stream(path, request_serializer=ident, response_deserializer=ident)
            else:
                call = ch.unary_unary(path, request_serializer=ident, response_deserializer=ident)
            cls = GetMessageClass(m.input_type)
            for i in range(WELL_FORMED + RANDOM_BYTES):
                raw = i >= WELL_FORMED
                if raw:
                    payloads = [rng.randbytes(rng.choice([1, 3, 17, 200]))]
                else:
                    msgs = []
                    for _ in range(rng.choice([1, 2, 3]) if m.client_streaming else 1):
                        msg = cls()
                        fz.fill(msg)
                        if m.name == "Rollout" and len(msg.actions) > 4 and len(msg.actions) < 300:
                            del msg.actions[4:]  # bounded: long valid rollouts are tested elsewhere
                        msgs.append(msg)
                    payloads = [x.SerializeToString() for x in msgs]
                key = (
                    cluster["key_a"]
                    if rng.random() < 0.85
                    else rng.choice(["", "ws_nope", "Bearer x", cluster["key_b"]])
                )
                md = [("application", app)]
                if key:
                    md.append(("authorization", f"Bearer {key}"))
                if rng.random() < 0.5:
                    md.append(("session_id", rng.choice(sids + ["s_x", ""])))
                try:
                    if m.client_streaming:
                        list(call(iter(payloads), metadata=md, timeout=60))
                    elif m.server_streaming:
                        list(call(payloads[0], metadata=md, timeout=60))
                    else:
                        call(payloads[0], metadata=md, timeout=60)
                except grpc.RpcError as e:
                    counts[e.code().name] = counts.get(e.code().name, 0) + 1
                    p = _check(name, e, raw)
                    if p:
                        problems.append(p)
                else:
                    counts["OK"] = counts.get("OK", 0) + 1
        assert not problems, "\n".join(problems[:20])
        assert counts.get("OK", 0) > 0 and counts.get("INVALID_ARGUMENT", 0) > 0, counts
        # still serving
        s = c.create_session(prompt="a blue box on the right, snow, day", seed=9)
        assert c.step(s.session_id, ["right"]).step == 1
