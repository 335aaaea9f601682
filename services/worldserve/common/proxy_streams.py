"""A stream's cancel always reaches the replica: the first of Serve's ``grpc_servicer_functions``.

Serve's gRPC proxy serves a streaming RPC with an async generator that relays the replica's
stream, and cancels the replica's request (its generator then gets ``asyncio.CancelledError``)
only when the client's cancel reaches that generator while it waits for the replica. gRPC
delivers a client's cancel (or a vanished client: its connection closed) by cancelling the
handler's task wherever it waits, and between two messages it waits in gRPC's own send of the
last one: the relay is then left suspended at its ``yield``, later closed with ``GeneratorExit``,
which the proxy takes for an unexpected error ("Request failed due to unexpected error ...
GeneratorExit" in its log) without cancelling the request. Measured on Ray 2.60: 21 of 40
Rollouts cancelled after 2 frames (20 at a time through one channel) went on stepping their
sessions with nobody listening. The replica cannot see it: a Serve replica runs a streaming
method ahead of its consumer (no backpressure) and Ray goes on running a generator whose caller
dropped it.

:func:`add_stream_cancellation` makes every streaming handler the proxy registers after it a
coroutine that drives Serve's relay one message at a time and writes each message itself: a
cancel that lands in the write (or a failed write) resumes the relay to its next wait on the
replica and cancels it there, so Serve cancels the request as it does for a cancel it sees.
It wraps the proxy's handler factory (an attribute of the server object Serve passes to every
servicer function; no Serve module is imported); where that attribute is missing it logs a
warning and changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

log = logging.getLogger("worldserve.proxy")

RELAY_RESUMES = 1000
"""How many messages already made (the client will never read them) are skipped at most while
resuming the relay to a wait on the replica (Serve's relay waits on every resume: one turn)."""

DRAIN_S = 5.0
"""How long a cancelled relay may take to finish (its status, the proxy's bookkeeping)."""

_WRAPPED = "_worldserve_stream_cancellation"

StreamHandler = Callable[[Any, Any], AsyncIterator[Any]]


async def _cancel_relay(relay: AsyncIterator[Any]) -> None:
    """Resume ``relay`` (suspended at a ``yield``) to its next wait on the replica, and cancel it
    there: the proxy then cancels the replica's request. Then let it finish."""
    for _ in range(RELAY_RESUMES):
        nxt = asyncio.ensure_future(relay.__anext__())
        await asyncio.sleep(0)  # one turn: the relay runs to its wait for the replica's next message,
        # or, with that message already there, returns it
        if not nxt.done():
            nxt.cancel()
            with contextlib.suppress(BaseException):
                await nxt
            break
        if nxt.exception() is not None:  # the relay has ended (StopAsyncIteration): nothing to cancel
            return
    drain = asyncio.ensure_future(_drain(relay))
    _, pending = await asyncio.wait({drain}, timeout=DRAIN_S)
    for t in pending:
        t.cancel()


async def _drain(relay: AsyncIterator[Any]) -> None:
    with contextlib.suppress(BaseException):
        async for _ in relay:
            pass


def cancel_on_disconnect(handler: StreamHandler) -> Callable[[Any, Any], Any]:
    """A gRPC server-streaming handler (``handler(request_or_iterator, context)``, an async
    generator) as a coroutine that writes each message with ``context.write``: however the call
    ends early, ``handler`` is cancelled while it waits (never closed at a ``yield``)."""

    async def stream(request: Any, context: Any) -> None:
        relay = handler(request, context)
        while True:
            # a cancel while waiting here reaches the relay where it waits: Serve cancels the request
            try:
                msg = await relay.__anext__()
            except StopAsyncIteration:
                return
            try:
                await context.write(msg)
            except BaseException:  # the client cancelled or vanished during the write
                # in a task of its own, which this handler outwaits (gRPC may cancel it again): the
                # call must outlive the relay, whose end reads it (a finished call's peer() crashes)
                task = asyncio.ensure_future(_cancel_relay(relay))
                while not task.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.shield(task)
                raise

    stream.__name__ = getattr(handler, "__name__", "stream")
    stream.__qualname__ = getattr(handler, "__qualname__", "stream")
    return stream


def add_stream_cancellation(servicer: object, server: Any) -> None:
    """A ``grpc_servicer_functions`` entry, listed first: the streaming handlers of every service
    registered after it cancel the replica's request whenever the call ends early. Registers no
    service itself; idempotent."""
    del servicer
    factory = getattr(server, "service_handler_factory", None)
    if factory is None:
        log.warning(
            "the gRPC proxy's server has no service_handler_factory: a cancelled stream may run on in its "
            "replica (Serve's proxy loses a cancel that arrives while it sends a message)"
        )
        return
    if getattr(factory, _WRAPPED, False):
        return

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        h = factory(*args, **kwargs)
        return cancel_on_disconnect(h) if inspect.isasyncgenfunction(h) else h

    setattr(wrapped, _WRAPPED, True)
    server.service_handler_factory = wrapped
