"""Requests as bytes: worldserve's own servicer registrations leave a request unparsed, and the
ingress (``rpc``) parses it after authenticating, answering INVALID_ARGUMENT naming the message."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2

from worldserve.common import wire
from worldserve.common.errors import InvalidArgument, StreamFailed
from worldserve.common.servicer import ServiceBase, rpc
from worldserve.v1 import dynamics_pb2, dynamics_pb2_grpc, image_pb2, sessions_pb2, text_pb2

GARBAGE = b"\xff\xff\xff\xff\xff\xff"


class _Ctx:
    def __init__(self, ok: bool = True):
        self.code = self.details = None
        self.ok = ok

    def set_code(self, c):
        self.code = c

    def set_details(self, d):
        self.details = d


def test_parse_request():
    req = dynamics_pb2.StepRequest(session_id="s_1", request_id="r")
    assert wire.parse_request(dynamics_pb2.StepRequest, req.SerializeToString()) == req
    assert wire.parse_request(dynamics_pb2.StepRequest, req) is req  # a deployment handle's caller
    for bad in (GARBAGE, "text", 3, dynamics_pb2.PlayRequest()):
        with pytest.raises(InvalidArgument) as err:
            wire.parse_request(dynamics_pb2.StepRequest, bad)
        assert str(err.value) == "request could not be parsed as worldserve.v1.StepRequest"


class _Svc(ServiceBase):
    service = "dynamics"

    @rpc("Step", empty=dynamics_pb2.StepResponse)
    async def Step(self, request, tenant, grpc_context=None):
        return dynamics_pb2.StepResponse(step=len(request.session_id))

    @rpc("Play", empty=dynamics_pb2.StepResponse)
    async def Play(self, request_stream, tenant, grpc_context=None):
        async for msg in request_stream:
            yield dynamics_pb2.StepResponse(step=len(msg.session_id))


@pytest.fixture
def svc():
    s = _Svc({})
    s.tenant = lambda ctx: "t" if ctx.ok else s.keys.authenticate([])  # type: ignore[method-assign]
    return s


async def test_the_ingress_parses_bytes_after_authenticating(svc):
    ctx = _Ctx()
    ok = dynamics_pb2.StepRequest(session_id="s_123").SerializeToString()
    assert (await svc.Step(ok, grpc_context=ctx)).step == 5 and ctx.code is None
    assert await svc.Step(GARBAGE, grpc_context=ctx) == dynamics_pb2.StepResponse()
    assert ctx.code == grpc.StatusCode.INVALID_ARGUMENT
    assert ctx.details == "request could not be parsed as worldserve.v1.StepRequest"
    ctx = _Ctx(ok=False)  # no key: the caller learns nothing about the request
    await svc.Step(GARBAGE, grpc_context=ctx)
    assert ctx.code == grpc.StatusCode.UNAUTHENTICATED


async def test_a_client_stream_is_parsed_message_by_message(svc):
    async def stream():
        yield dynamics_pb2.PlayRequest(session_id="s_1").SerializeToString()
        yield GARBAGE
        yield dynamics_pb2.PlayRequest(session_id="s_never").SerializeToString()

    ctx, got = _Ctx(), []
    with pytest.raises(StreamFailed, match="^request could not be parsed as worldserve.v1.PlayRequest$"):
        async for r in svc.Play(stream(), grpc_context=ctx):
            got.append(r.step)
    assert got == [3] and ctx.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_health_parses_its_request(svc):
    ctx = _Ctx()
    ok = health_pb2.HealthCheckRequest(service="x").SerializeToString()
    assert (await svc.Check(ok, grpc_context=ctx)).status == health_pb2.HealthCheckResponse.SERVING
    assert (await svc.Check(GARBAGE, grpc_context=ctx)).status == health_pb2.HealthCheckResponse.UNKNOWN
    assert ctx.code == grpc.StatusCode.INVALID_ARGUMENT
    assert ctx.details == "request could not be parsed as grpc.health.v1.HealthCheckRequest"
    with pytest.raises(StreamFailed):
        [r async for r in svc.Watch(GARBAGE, grpc_context=_Ctx())]
    listed = await svc.List(health_pb2.HealthListRequest().SerializeToString(), grpc_context=_Ctx())
    assert listed.statuses[""].status == health_pb2.HealthCheckResponse.SERVING
    ctx = _Ctx()
    await svc.List(GARBAGE, grpc_context=ctx)
    assert ctx.details == "request could not be parsed as grpc.health.v1.HealthListRequest"


class _Recorder:
    """A plain grpc servicer: every method answers the length of the request it was handed."""

    def __init__(self):
        self.seen = []

    async def Step(self, request, context):
        self.seen.append(request)
        return dynamics_pb2.StepResponse(step=len(request))

    def __getattr__(self, name):
        async def other(request, context):  # registered, not called here
            raise NotImplementedError(name)

        return other


async def test_the_registrations_hand_the_servicer_bytes_and_serialize_its_answer():
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    rec = _Recorder()
    wire.add_DynamicsServiceServicer_to_server(rec, server)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            req = dynamics_pb2.StepRequest(session_id="s_1", request_id="r-1")
            out = await dynamics_pb2_grpc.DynamicsServiceStub(ch).Step(req, timeout=10)
        assert rec.seen == [req.SerializeToString()] and out.step == len(req.SerializeToString())
    finally:
        await server.stop(None)


class _Server:
    """What the registration functions use of a server: the handlers they register."""

    def __init__(self):
        self.generic, self.registered = [], {}

    def add_generic_rpc_handlers(self, handlers):
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service, handlers):
        self.registered[service] = handlers


def test_every_method_of_every_service_is_registered_without_a_request_deserializer():
    server = _Server()
    for add in (
        wire.add_ImageServiceServicer_to_server,
        wire.add_SessionServiceServicer_to_server,
        wire.add_DynamicsServiceServicer_to_server,
        wire.add_TextServiceServicer_to_server,
        wire.add_HealthServicer_to_server,
    ):
        add(_Recorder(), server)
    want = {
        svc.full_name: {m.name: m for m in svc.methods}
        for mod in (image_pb2, sessions_pb2, dynamics_pb2, text_pb2, health_pb2)
        for svc in mod.DESCRIPTOR.services_by_name.values()
    }
    assert set(server.registered) == set(want) and len(server.generic) == 5
    for service, handlers in server.registered.items():
        assert set(handlers) == set(want[service])
        for name, h in handlers.items():
            m = want[service][name]
            assert h.request_deserializer is None and h.response_serializer is not None
            assert (h.request_streaming, h.response_streaming) == (m.client_streaming, m.server_streaming)
