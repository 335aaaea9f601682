"""The cluster's surface through Serve's gRPC proxy: bytes that do not parse as a method's request
answer INVALID_ARGUMENT naming the message (no Python class names), on every method; the proxy does
not offer gRPC server reflection unless the serve config turns it on."""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from worldserve.client import WorldClient
from worldserve.common.servicer import rpc_table
from worldserve.v1 import dynamics_pb2, image_pb2, sessions_pb2, text_pb2

GARBAGE = b"\xff\xff\xff\xff\xff\xff"  # no protobuf message parses from this (field 0 / bad varint)


def _methods():
    """(path, input message name, application, client streaming, server streaming) of every
    worldserve method, and of grpc.health.v1.Health's (answered by every application)."""
    out = []
    for mod in (dynamics_pb2, sessions_pb2, image_pb2, text_pb2):
        for svc in mod.DESCRIPTOR.services_by_name.values():
            for m in svc.methods:
                app = rpc_table()[m.name][1]
                out.append(
                    (f"/{svc.full_name}/{m.name}", m.input_type.full_name, app, m.client_streaming, m.server_streaming)
                )
    for m in health_pb2.DESCRIPTOR.services_by_name["Health"].methods:
        out.append((f"/grpc.health.v1.Health/{m.name}", m.input_type.full_name, "dynamics", False, m.server_streaming))
    return out


@pytest.mark.timeout(300)
def test_unparseable_bytes_answer_invalid_argument_on_every_method(cluster):
    ident = lambda b: b
    methods = _methods()
    assert len(methods) == 18  # 15 worldserve methods (Play bidi-streaming) + Health's Check, Watch, List
    problems = []
    with WorldClient(cluster["target"], cluster["key_a"], timeout_s=60, retry_s=0) as c:
        ch = c.channel
        for path, message, app, client_streaming, server_streaming in methods:
            md = [("application", app), ("authorization", f"Bearer {cluster['key_a']}")]
            try:
                if client_streaming:
                    call = ch.stream_stream(path, request_serializer=ident, response_deserializer=ident)
                    list(call(iter([GARBAGE]), metadata=md, timeout=60))
                elif server_streaming:
                    call = ch.unary_stream(path, request_serializer=ident, response_deserializer=ident)
                    list(call(GARBAGE, metadata=md, timeout=60))
                else:
                    ch.unary_unary(path, request_serializer=ident, response_deserializer=ident)(
                        GARBAGE, metadata=md, timeout=60
                    )
            except grpc.RpcError as e:
                want = f"request could not be parsed as {message}"
                if e.code() != grpc.StatusCode.INVALID_ARGUMENT or e.details() != want or "class" in e.details():
                    problems.append(f"{path}: {e.code().name} {e.details()!r}")
            else:
                problems.append(f"{path}: OK")
        assert not problems, "\n".join(problems)
        # an unauthenticated caller learns nothing about the parse: the key is checked first
        call = ch.unary_unary("/worldserve.v1.DynamicsService/Step", request_serializer=ident)
        with pytest.raises(grpc.RpcError) as err:
            call(GARBAGE, metadata=[("application", "dynamics")], timeout=60)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # the same channel still serves well-formed calls
        assert c.list_models().models


@pytest.mark.timeout(180)
def test_a_play_stream_steps_until_a_message_does_not_parse(cluster):
    """Play's messages are parsed as each arrives: the good one steps, the bad one ends the stream
    with INVALID_ARGUMENT (through Serve's proxy a bad message used to end the stream with OK)."""
    ident = lambda b: b
    with WorldClient(cluster["target"], cluster["key_a"], timeout_s=60, retry_s=0) as c:
        sid = c.create_session(prompt="a red door on the left, grass, day", seed=5).session_id
        good = dynamics_pb2.PlayRequest(session_id=sid, request_id="surface-1")
        good.action.keys.append("right")
        call = c.channel.stream_stream(
            "/worldserve.v1.DynamicsService/Play",
            request_serializer=ident,
            response_deserializer=dynamics_pb2.StepResponse.FromString,
        )
        md = [("application", "dynamics"), ("authorization", f"Bearer {cluster['key_a']}"), ("session_id", sid)]
        got = []
        with pytest.raises(grpc.RpcError) as err:
            for r in call(iter([good.SerializeToString(), GARBAGE]), metadata=md, timeout=60):
                got.append(r.step)
        assert got == [1]
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == "request could not be parsed as worldserve.v1.PlayRequest"
        assert c.get_session(sid).step == 1


def _image(fmt: str, size: int = 64) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.timeout(180)
def test_uploads_decode_only_the_declared_png_jpeg_or_raw(cluster):
    import base64

    import requests

    from worldserve.v1 import common_pb2

    png, jpeg = common_pb2.FRAME_FORMAT_PNG, common_pb2.FRAME_FORMAT_JPEG
    refused = [
        (png, _image("BMP"), "cannot decode image: declared PNG, but its bytes are neither PNG nor JPEG"),
        (png, _image("GIF"), "cannot decode image: declared PNG, but its bytes are neither PNG nor JPEG"),
        (jpeg, _image("PNG"), "cannot decode image: declared JPEG, but its bytes are a PNG"),
        (99, _image("PNG"), "unknown image format 99; expected PNG (1), JPEG (2) or RAW_RGB8 (3)"),
    ]
    with WorldClient(cluster["target"], cluster["key_a"], timeout_s=60, retry_s=0) as c:
        for fmt, data, want in refused:
            with pytest.raises(grpc.RpcError) as err:
                c.create_session(image=common_pb2.Frame(format=fmt, data=data), seed=1)
            assert (err.value.code(), err.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, want)
        assert c.create_session(image=common_pb2.Frame(format=jpeg, data=_image("JPEG")), seed=1).step == 0
    # the web gateway's uploads (base64 PNG or JPEG): declared as what their bytes are
    url, headers = cluster["http"] + "/v1/sessions", {"authorization": f"Bearer {cluster['key_a']}"}
    deadline = time.monotonic() + 60
    while True:  # the HTTP proxy may need a moment for the gateway's route
        try:
            if requests.get(cluster["http"] + "/healthz", timeout=5).status_code == 200:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "web gateway not reachable"
        time.sleep(0.5)
    for fmt, status in (("JPEG", 200), ("PNG", 200), ("GIF", 400), ("TIFF", 400)):
        body = {"image": base64.b64encode(_image(fmt)).decode(), "seed": 2}
        r = requests.post(url, json=body, headers=headers, timeout=60)
        assert r.status_code == status, (fmt, r.text)


@pytest.mark.timeout(120)
def test_server_reflection_is_off_by_default(cluster):
    with grpc.insecure_channel(cluster["target"]) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            list(
                stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=30)
            )
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
