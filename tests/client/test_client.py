"""The SDK's retries against a real gRPC server on loopback (plain grpcio, no cluster)."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from worldserve.client import WorldClient
from worldserve.v1 import common_pb2, dynamics_pb2 as pb, dynamics_pb2_grpc


class Flaky(dynamics_pb2_grpc.DynamicsServiceServicer):
    """Answers the first ``fail`` calls with ``code``, then steps (once per request id)."""

    def __init__(self, fail: int, code=grpc.StatusCode.UNAVAILABLE):
        self.fail, self.code = fail, code
        self.seen: list[str] = []
        self.landed: dict[str, int] = {}

    def Step(self, request, context):
        self.seen.append(request.request_id)
        step = self.landed.setdefault(request.request_id, len(self.landed) + 1)  # applied on the first call
        if len(self.seen) <= self.fail:
            context.abort(self.code, "session store unavailable; retry later")
        return pb.StepResponse(session_id=request.session_id, step=step)


@pytest.fixture
def serve():
    servers = []

    def start(servicer):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        dynamics_pb2_grpc.add_DynamicsServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for s in servers:
        s.stop(0)


def test_a_step_answered_unavailable_is_retried_with_the_same_request_id(serve):
    flaky = Flaky(fail=2)
    with WorldClient(serve(flaky), "k", timeout_s=5, retry_s=10) as c:
        r = c.step("s_1", ["right"])
        assert r.step == 1 and c.retries == 2
        assert len(flaky.seen) == 3 and len(set(flaky.seen)) == 1 and len(flaky.seen[0]) == 32
        c.step("s_1", ["right"], request_id="mine")
        assert flaky.seen[-1] == "mine" and flaky.landed == {flaky.seen[0]: 1, "mine": 2}


def test_other_codes_and_an_exhausted_budget_are_not_retried(serve):
    with WorldClient(serve(Flaky(fail=1, code=grpc.StatusCode.INVALID_ARGUMENT)), "k", timeout_s=5) as c:
        with pytest.raises(grpc.RpcError) as e:
            c.step("s_1", ["right"])
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and c.retries == 0
    with WorldClient(serve(Flaky(fail=1000)), "k", timeout_s=5, retry_s=0.3) as c:
        with pytest.raises(grpc.RpcError) as e:
            c.step("s_1", ["right"])
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and 1 <= c.retries < 10


class FlakyBatch(dynamics_pb2_grpc.DynamicsServiceServicer):
    """The first StepBatch answers its second item UNAVAILABLE; later ones step every item."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def StepBatch(self, request, context):
        self.calls.append([s.request_id for s in request.steps])
        out = []
        for i, s in enumerate(request.steps):
            if len(self.calls) == 1 and i == 1:
                out.append(pb.StepResult(error=common_pb2.ErrorStatus(code=grpc.StatusCode.UNAVAILABLE.value[0],
                                                                        message="session store unavailable")))
            else:
                out.append(pb.StepResult(ok=pb.StepResponse(session_id=s.session_id, step=1)))
        return pb.StepBatchResponse(results=out)


def test_step_batch_items_answered_unavailable_are_retried_alone_with_their_ids(serve):
    flaky = FlakyBatch()
    with WorldClient(serve(flaky), "k", timeout_s=5, retry_s=10) as c:
        r = c.step_batch([pb.StepRequest(session_id=f"s_{i}") for i in range(3)])
    assert [x.WhichOneof("result") for x in r.results] == ["ok", "ok", "ok"]
    assert len(flaky.calls) == 2 and flaky.calls[1] == [flaky.calls[0][1]] and c.retries == 1
