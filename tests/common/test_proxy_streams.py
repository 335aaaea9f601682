"""worldserve.common.proxy_streams over a real gRPC server on loopback (no Ray): a relay shaped
like Serve's proxy (it cancels the replica only on a cancel it sees while waiting for the
replica) behind a client that cancels while the server is blocked writing a message."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import pytest
from waiting import until

from worldserve.common.proxy_streams import add_stream_cancellation, cancel_on_disconnect

MSG = b"x" * (1 << 20)  # 1 MiB: the server's write of the next one waits for the client to read


class Replica:
    """Steps ahead of its consumer (as a Serve replica's streaming method does), into a queue."""

    def __init__(self) -> None:
        self.steps = 0
        self.cancelled = False
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.task = asyncio.ensure_future(self.run())

    async def run(self) -> None:
        try:
            while self.steps < 500:
                self.steps += 1
                self.queue.put_nowait(MSG)
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            self.cancelled = True
            raise


def serve_like_factory(replicas: list[Replica]):
    """A handler factory like Serve's proxy's: each call relays a new Replica's stream."""

    def factory(*, service_method: str, streaming_type: str) -> Any:
        if streaming_type != "unary_stream":

            async def unary(request: bytes, context: Any) -> bytes:
                return request

            return unary

        async def relay(request: bytes, context: Any):
            r = Replica()
            replicas.append(r)
            try:
                while True:
                    try:
                        item = await r.queue.get()
                    except asyncio.CancelledError:
                        r.task.cancel()  # Serve cancels the request on a cancel it sees, and then,
                        context.peer()  # for its access log, reads the call (which must still be there)
                        return
                    yield item
            except BaseException:  # Serve turns anything else (GeneratorExit) into a status
                return

        return relay

    return factory


class ProxyServer:
    """The attribute Serve's gRPC server carries (its service handler factory)."""

    def __init__(self, factory: Any) -> None:
        self.service_handler_factory = factory


async def cancelled_stream(handler: Any) -> None:
    """Serve ``handler`` on loopback; a client reads 2 messages, then cancels."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("t.S", {"Stream": grpc.unary_stream_rpc_method_handler(handler)}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.unary_stream("/t.S/Stream")(b"go")
            for _ in range(2):
                assert len(await call.read()) == len(MSG)
            await asyncio.sleep(0.2)  # the replica runs ahead; the server blocks writing the next message
            call.cancel()
    finally:
        await server.stop(grace=1)


async def test_without_it_a_cancel_during_a_write_leaves_the_replica_running():
    replicas: list[Replica] = []
    relay = serve_like_factory(replicas)(service_method="/t.S/Stream", streaming_type="unary_stream")
    await cancelled_stream(relay)
    await asyncio.sleep(0.3)
    (r,) = replicas
    assert not r.cancelled and not r.task.done()  # the loss this module exists for
    r.task.cancel()


async def test_a_cancel_during_a_write_cancels_the_replica():
    replicas: list[Replica] = []
    server = ProxyServer(serve_like_factory(replicas))
    add_stream_cancellation(None, server)
    add_stream_cancellation(None, server)  # idempotent: wrapped once
    handler = server.service_handler_factory(service_method="/t.S/Stream", streaming_type="unary_stream")
    await cancelled_stream(handler)
    await until(lambda: replicas and replicas[0].cancelled, timeout=5, what="the replica cancelled")
    steps = replicas[0].steps
    await asyncio.sleep(0.2)
    assert replicas[0].steps == steps  # and it takes no more steps


async def test_unary_handlers_pass_through_and_a_finished_stream_is_left_alone():
    replicas: list[Replica] = []
    server = ProxyServer(serve_like_factory(replicas))
    add_stream_cancellation(None, server)
    unary = server.service_handler_factory(service_method="/t.S/U", streaming_type="unary_unary")
    assert await unary(b"a", None) == b"a"

    async def three(request: bytes, context: Any):
        for i in range(3):
            yield bytes([i])

    class Ctx:
        def __init__(self) -> None:
            self.out: list[bytes] = []

        async def write(self, m: bytes) -> None:
            self.out.append(m)

    ctx = Ctx()
    await cancel_on_disconnect(three)(b"", ctx)
    assert ctx.out == [b"\x00", b"\x01", b"\x02"]


def test_a_server_without_the_factory_is_left_alone(caplog: pytest.LogCaptureFixture):
    class Bare:
        pass

    with caplog.at_level(logging.WARNING, logger="worldserve.proxy"):
        add_stream_cancellation(None, Bare())
    assert "service_handler_factory" in caplog.text
