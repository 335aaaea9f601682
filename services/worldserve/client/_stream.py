"""The SDK's server streams: :class:`ResponseStream` (a stream as grpc returns it) and the Rollout
stream that resumes itself after a retryable failure (:class:`_ResumingStream`). ``ResponseStream``
is re-exported by :mod:`worldserve.client`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol, TypeVar

import grpc

from worldserve.client._retry import _backoff
from worldserve.v1 import dynamics_pb2

if TYPE_CHECKING:
    from worldserve.client import _Base

_T_co = TypeVar("_T_co", covariant=True)


class ResponseStream(Protocol[_T_co]):
    """A server stream as grpc returns it: an iterator of responses that can be cancelled."""

    def __iter__(self) -> Iterator[_T_co]: ...

    def __next__(self) -> _T_co: ...

    def cancel(self) -> bool: ...


class _ResumingStream:
    """A Rollout's responses: a refusal with RetryInfo, or UNAVAILABLE, resends the same Rollout
    (same request id) after the delay while ``retry_s`` lasts; the steps that had landed come back
    as recorded and are skipped, so every action is applied once and yielded once. ``cancel()``
    ends it."""

    def __init__(self, client: _Base, open_stream: Callable[[], ResponseStream[dynamics_pb2.StepResponse]]):
        self._client, self._open = client, open_stream
        self._stream = open_stream()
        self._seen = 0
        self._skip = 0
        self._deadline = time.monotonic() + client.retry_s
        self._attempt = 0

    def __iter__(self) -> _ResumingStream:
        return self

    def __next__(self) -> dynamics_pb2.StepResponse:
        while True:
            try:
                item = next(self._stream)
            except grpc.RpcError as e:
                delay = _backoff(e, self._attempt)
                if delay is None or time.monotonic() + delay > self._deadline:
                    raise
                time.sleep(delay)
                self._attempt += 1
                self._client.retries += 1
                self._stream, self._skip = self._open(), self._seen
                continue
            if self._skip:
                self._skip -= 1
                continue
            self._seen += 1
            return item

    def cancel(self) -> None:
        self._stream.cancel()


__all__ = ["ResponseStream"]
