"""The SDK's retries against a real gRPC server on loopback (plain grpcio, no cluster)."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from worldserve.client import WorldClient
from worldserve.v1 import common_pb2, dynamics_pb2_grpc
from worldserve.v1 import dynamics_pb2 as pb


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
                out.append(
                    pb.StepResult(
                        error=common_pb2.ErrorStatus(
                            code=grpc.StatusCode.UNAVAILABLE.value[0], message="session store unavailable"
                        )
                    )
                )
            else:
                out.append(pb.StepResult(ok=pb.StepResponse(session_id=s.session_id, step=1)))
        return pb.StepBatchResponse(results=out)


def test_step_batch_items_answered_unavailable_are_retried_alone_with_their_ids(serve):
    flaky = FlakyBatch()
    with WorldClient(serve(flaky), "k", timeout_s=5, retry_s=10) as c:
        r = c.step_batch([pb.StepRequest(session_id=f"s_{i}") for i in range(3)])
    assert [x.WhichOneof("result") for x in r.results] == ["ok", "ok", "ok"]
    assert len(flaky.calls) == 2 and flaky.calls[1] == [flaky.calls[0][1]] and c.retries == 1


class OverQuota(dynamics_pb2_grpc.DynamicsServiceServicer):
    """Refuses the first ``fail`` calls as a quota does: RESOURCE_EXHAUSTED, with a RetryInfo of
    ``delay_s`` in the status details unless ``delay_s`` is None."""

    def __init__(self, fail: int, delay_s: float | None):
        self.fail, self.delay_s = fail, delay_s
        self.times: list[float] = []

    def Step(self, request, context):
        import time

        from worldserve.common.errors import STATUS_DETAILS_KEY, status_details
        from worldserve.common.quotas import QuotaExceeded

        self.times.append(time.monotonic())
        if len(self.times) <= self.fail:
            msg = "quota steps_per_s exceeded for tenant 't'"
            if self.delay_s is not None:
                e = QuotaExceeded("steps_per_s", "t", msg, retry_after_s=self.delay_s)
                context.set_trailing_metadata(
                    [(STATUS_DETAILS_KEY, status_details(e, grpc.StatusCode.RESOURCE_EXHAUSTED, msg))]
                )
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, msg)
        return pb.StepResponse(session_id=request.session_id, step=1)


def test_a_quota_refusal_is_retried_after_the_servers_delay(serve):
    from worldserve.client import retry_after

    q = OverQuota(fail=2, delay_s=0.2)
    with WorldClient(serve(q), "k", timeout_s=5, retry_s=5) as c:
        assert c.step("s_1", ["right"]).step == 1 and c.retries == 2
        assert q.times[1] - q.times[0] >= 0.2 and q.times[2] - q.times[1] >= 0.2  # waited as told
    with WorldClient(serve(OverQuota(fail=1, delay_s=None)), "k", timeout_s=5, retry_s=5) as c:
        with pytest.raises(grpc.RpcError) as e:  # no RetryInfo: waiting would not help
            c.step("s_1", ["right"])
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and c.retries == 0 and retry_after(e.value) is None
    with WorldClient(serve(OverQuota(fail=5, delay_s=2.0)), "k", timeout_s=5, retry_s=1.0) as c:
        with pytest.raises(grpc.RpcError) as e:  # the delay is beyond the retry budget: answered at once
            c.step("s_1", ["right"])
        assert c.retries == 0 and 2.0 <= retry_after(e.value) < 2.01
