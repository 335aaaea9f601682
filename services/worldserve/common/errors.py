"""Errors -> gRPC status: one table, one decorator.

Core code raises :class:`WorldserveError` subclasses (they know nothing of gRPC); the RPC layer maps
them to status codes through :data:`STATUS_BY_ERROR`. Serve's gRPC proxy takes no interceptors, so
:func:`grpc_method` wraps each handler: it authenticates nothing itself, but turns every exception
into a status code and a one-line message (never a traceback) and records request metrics.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import grpc

if TYPE_CHECKING:
    from google.protobuf.message import Message

log = logging.getLogger("worldserve")

Metadata = Iterable[tuple[str, str | bytes]]
"""gRPC metadata: (key, value) pairs, the value bytes for a ``-bin`` key."""


class GrpcContext(Protocol):
    """What worldserve uses of a handler's ``grpc_context`` (grpc's ``ServicerContext``, Serve's
    ``RayServegRPCContext``)."""

    def invocation_metadata(self) -> Metadata: ...

    def set_code(self, code: grpc.StatusCode) -> None: ...

    def set_details(self, details: str) -> None: ...

    def set_trailing_metadata(self, trailing_metadata: Sequence[tuple[str, str | bytes]]) -> None: ...


Handler = Callable[..., Any]
"""A Serve gRPC handler method, ``(self, request, *, grpc_context=None)``: it returns a response
message (or an awaitable of one) or is an async generator of them. Requests and responses are
protobuf messages of whichever RPC it answers, so its signature is left open here."""


class WorldserveError(Exception):
    """Base of every error a client may see. The message is shown to the client verbatim.

    Errors cross Serve replicas pickled (raised in a model replica, re-raised at the ingress): a
    subclass whose ``__init__`` takes other arguments than ``args`` still round-trips, attributes
    included (``retry_after_s``, ``quota``), because pickling rebuilds it without calling
    ``__init__``."""

    def __reduce__(self) -> tuple[_Rebuild, tuple[type[WorldserveError], tuple[Any, ...], dict[str, Any]]]:
        return _rebuild, (type(self), self.args, dict(self.__dict__))


def _rebuild(cls: type[WorldserveError], args: tuple[Any, ...], state: dict[str, Any]) -> WorldserveError:
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


_Rebuild = Callable[[type[WorldserveError], tuple[Any, ...], dict[str, Any]], WorldserveError]


class InvalidArgument(WorldserveError, ValueError):
    """The request is malformed or out of range; the message quotes the bad value."""


class NotFound(WorldserveError, KeyError):
    """No such session for this tenant (also answered for another tenant's session)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "not found"


class Unauthenticated(WorldserveError):
    """Missing or unknown API key."""


class Conflict(WorldserveError):
    """A racing write won: the session moved on while this request was computed."""


class FailedPrecondition(WorldserveError):
    """The caller's expected state does not hold (e.g. expected_step differs)."""


class ResourceExhausted(WorldserveError):
    """A queue or limit is full. ``retry_after_s``: when a retry may pass (sent to the client as
    ``google.rpc.RetryInfo`` in the status details); None: waiting does not help."""

    def __init__(self, message: str = "", retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(WorldserveError):
    """A dependency (Redis, another service) cannot be reached; retry later."""


class DataLoss(WorldserveError):
    """Stored steps are missing or corrupt (an archived chunk); the message names the steps."""


class StreamFailed(Exception):
    """Raised out of a streaming handler after its status was set on the gRPC context, so that
    Serve's proxy ends the stream with that status (the message is the one-line details)."""


STATUS_BY_ERROR: dict[type[BaseException], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    Conflict: grpc.StatusCode.ABORTED,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DataLoss: grpc.StatusCode.DATA_LOSS,
    TimeoutError: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def _redis_errors() -> tuple[type[BaseException], ...]:
    try:
        import redis.exceptions as rex
    except ImportError:  # the client SDK has no redis
        return ()
    # unreachable, slow, or between roles: still loading, a demoted primary (READONLY), a replica
    # cut off from its primary (MASTERDOWN), a Redis Cluster slot moving (TRYAGAIN, CLUSTERDOWN)
    return (
        rex.ConnectionError,
        rex.TimeoutError,
        rex.BusyLoadingError,
        rex.ReadOnlyError,
        rex.MasterDownError,
        rex.TryAgainError,
        rex.ClusterDownError,
    )


_REDIS_BETWEEN_ROLES = re.compile(
    r"(?:^|[\s\-(\"'])(?:NOREPLICAS|UNBLOCKED|LOADING|MASTERDOWN|READONLY|TRYAGAIN|CLUSTERDOWN) "
    r"|WAIT cannot be used with replica instances"
)
"""Error replies a Redis gives while it changes role (a failover) -- the same condition as the
typed errors above, arriving as a plain ``ResponseError``: as the reply itself, or wrapped in a
script's error (``Error running script ... -READONLY You can't write ...``)."""


def _redis_between_roles(exc: BaseException) -> bool:
    try:
        import redis.exceptions as rex
    except ImportError:
        return False
    return isinstance(exc, rex.ResponseError) and _REDIS_BETWEEN_ROLES.search(str(exc)) is not None


def _unwrap(exc: BaseException) -> BaseException:
    """An error raised in another Serve replica and re-raised through a deployment handle arrives
    as Ray's ``RayTaskError`` (whose text is a traceback): the original exception is its cause."""
    for _ in range(8):
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException) and type(exc).__name__.startswith("RayTaskError"):
            exc = cause
        else:
            break
    return exc


def _ray_unavailable() -> tuple[type[BaseException], ...]:
    try:
        from ray import exceptions as rx
    except ImportError:  # the client SDK has no ray
        return ()
    return (rx.RayActorError, rx.ActorUnavailableError)


MAX_MESSAGE_CHARS = 400
"""A status message is one line of at most this many characters (an echoed input is cut): a long
one would overflow the reply's metadata and reach the client as a different error."""

_CONTROL = dict.fromkeys(range(32), " ") | {127: " "}


def one_line(msg: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``msg`` on one line (control characters, ANSI escapes included, become spaces), cut to
    ``limit`` characters with a note of how many were left out."""
    msg = msg.translate(_CONTROL)
    if len(msg) <= limit:
        return msg
    cut = len(msg) - limit
    return f"{msg[:limit]}... ({cut} more characters)"


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-safe message (one line, at most ``MAX_MESSAGE_CHARS``
    characters and a note) for an exception."""
    exc = _unwrap(exc)
    if isinstance(exc, _ray_unavailable()):
        return grpc.StatusCode.UNAVAILABLE, "a replica serving this request went away; retry"
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls], one_line(str(exc) or cls.__name__)
    if isinstance(exc, _redis_errors()) or _redis_between_roles(exc):
        return grpc.StatusCode.UNAVAILABLE, "session store unavailable; retry later"
    # Anything else is a bug: log it with its traceback, show the client only an id-free summary.
    log.exception("unexpected error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__})"


STATUS_DETAILS_KEY = "grpc-status-details-bin"
"""Trailing metadata of a ``google.rpc.Status`` with typed details (the gRPC richer error model)."""


def status_details(exc: BaseException, code: grpc.StatusCode, msg: str) -> bytes | None:
    """The serialized ``google.rpc.Status`` for an error that has typed details to give: a
    ``RetryInfo`` (``retry_after_s``) and, for a quota, a ``QuotaFailure`` naming it. None: none."""
    exc = _unwrap(exc)
    retry = getattr(exc, "retry_after_s", None)
    quota = getattr(exc, "quota", None)
    if retry is None and quota is None:
        return None
    from google.protobuf import any_pb2, duration_pb2
    from google.rpc import error_details_pb2, status_pb2

    details = []
    if retry is not None:
        d = duration_pb2.Duration()
        d.FromNanoseconds(max(0, int(retry * 1e9)))
        details.append(error_details_pb2.RetryInfo(retry_delay=d))
    if quota is not None:
        details.append(
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(
                        subject=f"tenant:{getattr(exc, 'tenant', '')}", description=quota
                    )
                ]
            )
        )
    packed = []
    for m in details:
        a = any_pb2.Any()
        a.Pack(m)
        packed.append(a)
    out: bytes = status_pb2.Status(code=code.value[0], message=msg, details=packed).SerializeToString()
    return out


def grpc_method(rpc: str, *, empty: Callable[[], Message] | None = None) -> Callable[[Handler], Handler]:
    """Wrap a Serve gRPC handler (unary or streaming, sync or async).

    The handler must accept a ``grpc_context`` keyword (Serve passes a RayServegRPCContext). On an
    exception the code and message are set on that context and an empty response (``empty()``) is
    returned, or the stream ends. When the handler's object has ``metrics`` (a ServiceMetrics),
    ``metrics.record_rpc(rpc, code_name, seconds)`` is called once per call.
    """

    def finish(
        self: object,
        ctx: GrpcContext | None,
        t0: float,
        code: grpc.StatusCode,
        msg: str | None,
        exc: BaseException | None = None,
    ) -> None:
        if msg is not None and ctx is not None:
            ctx.set_code(code)
            ctx.set_details(msg)
            extra = status_details(exc, code, msg) if exc is not None else None
            if extra is not None:
                ctx.set_trailing_metadata([(STATUS_DETAILS_KEY, extra)])
        metrics = getattr(self, "metrics", None)
        if metrics is not None:
            metrics.record_rpc(rpc, code.name, time.perf_counter() - t0)

    def deco(fn: Handler) -> Handler:
        if inspect.isasyncgenfunction(fn):

            @functools.wraps(fn)
            async def agen(
                self: object, request: object, *, grpc_context: GrpcContext | None = None, **kw: Any
            ) -> AsyncIterator[Any]:
                t0 = time.perf_counter()
                try:
                    async for item in fn(self, request, grpc_context=grpc_context, **kw):
                        yield item
                except Exception as e:
                    code, msg = status_of(e)
                    finish(self, grpc_context, t0, code, msg, e)
                    if grpc_context is None:
                        raise
                    # Serve's proxy passes a stream's code on only with a yielded item or with an
                    # exception raised after the code was set (it then answers with that code and
                    # these details): returning here would end the stream with OK.
                    raise StreamFailed(msg) from None
                finish(self, grpc_context, t0, grpc.StatusCode.OK, None)

            return agen

        @functools.wraps(fn)
        async def unary(self: object, request: object, *, grpc_context: GrpcContext | None = None, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                out = fn(self, request, grpc_context=grpc_context, **kw)
                if inspect.isawaitable(out):
                    out = await out
            except Exception as e:
                code, msg = status_of(e)
                finish(self, grpc_context, t0, code, msg, e)
                return empty() if empty is not None else None
            finish(self, grpc_context, t0, grpc.StatusCode.OK, None)
            return out

        return unary

    return deco
