"""The SDK's retry rules: which failures are retried and after how long (:func:`_backoff`), and the
server's retry delay of a quota refusal (:func:`retry_after`, from ``google.rpc.RetryInfo`` in the
status details). The clients' retry loops are :class:`worldserve.client._Base`'s. Public names are
re-exported by :mod:`worldserve.client`."""

from __future__ import annotations

import random

import grpc

STATUS_DETAILS_KEY = "grpc-status-details-bin"


def _retry_delay(attempt: int) -> float:
    backoff: float = 0.05 * 2**attempt  # typeshed: int ** int is Any (a negative power is a float)
    return min(1.0, backoff) * (0.5 + random.random())


def retry_after(e: grpc.RpcError) -> float | None:
    """The seconds after which the server says a refused call may pass (``google.rpc.RetryInfo``
    in the status details of a RESOURCE_EXHAUSTED), or None."""
    try:
        md = e.trailing_metadata() or ()
    except Exception:
        return None
    from google.rpc import error_details_pb2, status_pb2

    for k, v in md:
        if k == STATUS_DETAILS_KEY:
            try:
                status = status_pb2.Status.FromString(v)
            except Exception:
                return None
            for d in status.details:
                if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    info = error_details_pb2.RetryInfo()
                    d.Unpack(info)
                    nanos: int = info.retry_delay.ToNanoseconds()  # google.rpc ships no type information
                    return nanos / 1e9
    return None


def _backoff(e: grpc.RpcError, attempt: int, idempotent: bool = True) -> float | None:
    """How long to wait before retrying ``e``, or None: not retryable. RESOURCE_EXHAUSTED with
    RetryInfo: nothing was applied, wait the server's delay. UNAVAILABLE (idempotent calls only):
    the step may have been applied, retry with the same id. ABORTED after a retry: the earlier
    attempt may still be in flight on the server."""
    code = e.code() if hasattr(e, "code") else None
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        delay = retry_after(e)
        return None if delay is None else delay * (1.0 + 0.1 * random.random())
    if idempotent and (code == grpc.StatusCode.UNAVAILABLE or (attempt > 0 and code == grpc.StatusCode.ABORTED)):
        return _retry_delay(attempt)
    return None


__all__ = ["STATUS_DETAILS_KEY", "retry_after"]
