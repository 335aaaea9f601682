"""What every Serve ingress deployment shares: config, tenants, metrics, health, error mapping.

Serve's gRPC proxy calls a deployment method named like the RPC with the request message and a
``grpc_context`` keyword. Handlers stay thin (authenticate -> validate -> convert -> delegate) and
carry :func:`rpc`, which maps exceptions to status codes through one table and records metrics.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2

from worldserve.common.auth import KeyRing
from worldserve.common.config import Config
from worldserve.common.errors import (
    GrpcContext,
    Handler,
    InvalidArgument,
    Metadata,
    StreamFailed,
    Unauthenticated,
    grpc_method,
)
from worldserve.common.metrics import ServiceMetrics
from worldserve.common.quotas import Quotas
from worldserve.common.wire import parse_request, parse_stream

if TYPE_CHECKING:
    from google.protobuf.message import Message

KEYS_RECHECK_S = 5.0
"""How often a replica looks for a changed key file (new keys, changed quotas)."""

APPS = {
    "worldserve.v1.DynamicsService": "dynamics",
    "worldserve.v1.SessionService": "sessions",
    "worldserve.v1.ImageService": "image",
    "worldserve.v1.TextService": "text",
}
"""gRPC service -> the Serve application that answers it (the ``application`` metadata)."""


@functools.cache
def rpc_table() -> dict[str, tuple[str, str, bool, type[Message]]]:
    """RPC method name -> (service, application, server-streaming, response class), for every
    worldserve service (method names are unique across them)."""
    from worldserve.v1 import dynamics_pb2, image_pb2, sessions_pb2, text_pb2

    out: dict[str, tuple[str, str, bool, type[Message]]] = {}
    for mod in (dynamics_pb2, sessions_pb2, image_pb2, text_pb2):
        for svc in mod.DESCRIPTOR.services_by_name.values():
            for m in svc.methods:
                out[m.name] = (svc.name, APPS[svc.full_name], m.server_streaming, GetMessageClass(m.output_type))
    return out


@functools.cache
def request_types() -> dict[str, tuple[type[Message], bool]]:
    """RPC method name -> (request class, client-streaming), for every worldserve service."""
    from worldserve.v1 import dynamics_pb2, image_pb2, sessions_pb2, text_pb2

    out: dict[str, tuple[type[Message], bool]] = {}
    for mod in (dynamics_pb2, sessions_pb2, image_pb2, text_pb2):
        for svc in mod.DESCRIPTOR.services_by_name.values():
            for m in svc.methods:
                out[m.name] = (GetMessageClass(m.input_type), m.client_streaming)
    return out


class ServiceBase:
    service: str = ""

    def __init__(self, config: dict[str, Any] | None = None):
        logging.getLogger("worldserve").setLevel(logging.INFO)
        self.config = Config.load(config)
        self.keys = KeyRing.load(self.config.api_keys_file or None)
        path = self.config.api_keys_file
        self._keys_mtime = os.path.getmtime(path) if path and os.path.exists(path) else None
        self._keys_checked = time.monotonic()
        self._quotas: dict[str, Quotas] = {}
        self.metrics = ServiceMetrics(self.service)

    def tenant(self, grpc_context: GrpcContext | None) -> str:
        return self.tenant_of(grpc_context.invocation_metadata() if grpc_context is not None else [])

    def tenant_of(self, md: Metadata) -> str:
        """The tenant of ``authorization`` metadata (gRPC's, or an HTTP header as a pair)."""
        try:
            return self.keys.authenticate(md)
        except Unauthenticated:
            if not self._reload_keys():
                raise
            return self.keys.authenticate(md)

    def quotas(self, tenant: str) -> Quotas:
        """The tenant's quotas: the config's defaults with its overrides from the key file (a
        changed file is picked up within ``KEYS_RECHECK_S``)."""
        now = time.monotonic()
        if now - self._keys_checked > KEYS_RECHECK_S:
            self._keys_checked = now
            self._reload_keys()
        q = self._quotas.get(tenant)
        if q is None:
            q = self._quotas[tenant] = Quotas.parse(self.keys.quotas.get(tenant) or {}, self.config.quotas)
        return q

    def _reload_keys(self) -> bool:
        """Pick up keys added to the key file since start (checked on an unknown key, and every
        ``KEYS_RECHECK_S`` for quota changes)."""
        path = self.config.api_keys_file
        if not path or not os.path.exists(path) or os.path.getmtime(path) == self._keys_mtime:
            return False
        self._keys_mtime = os.path.getmtime(path)
        try:
            self.keys = KeyRing.load(path)
        except (OSError, ValueError) as e:  # a half-written or broken file: keep the keys we have
            logging.getLogger("worldserve").warning("key file %s not reloaded: %s", path, e)
            return False
        self._quotas.clear()
        return True

    def __getattr__(self, name: str) -> Handler:
        """A worldserve RPC of another application (the client named the wrong ``application``):
        answered UNIMPLEMENTED naming the application that serves it."""
        spec = rpc_table().get(name) if not name.startswith("_") else None
        if spec is None or spec[1] == self.service:
            raise AttributeError(name)
        svc, app, streaming, response = spec
        msg = (
            f"{svc}.{name} is served by application {app!r}, not {self.service!r}: send the metadata application: {app}"
        )

        def refuse(grpc_context: GrpcContext | None) -> None:
            if grpc_context is not None:
                grpc_context.set_code(grpc.StatusCode.UNIMPLEMENTED)
                grpc_context.set_details(msg)
            self.metrics.record_rpc(name, "UNIMPLEMENTED", 0.0)

        if streaming:

            async def stream(request: object, grpc_context: GrpcContext | None = None) -> AsyncIterator[Message]:
                refuse(grpc_context)
                raise StreamFailed(msg)
                yield  # an async generator, like the RPC it stands in for

            return stream

        async def unary(request: object, grpc_context: GrpcContext | None = None) -> Message:
            refuse(grpc_context)
            return response()

        return unary

    # grpc.health.v1.Health, answered per application (the `application` metadata picks the app).
    # A replica answers once Serve routes to it, i.e. once it is up: always SERVING. No key needed.
    @staticmethod
    def _health_parses(cls: type[Message], request: object, grpc_context: GrpcContext | None) -> bool:
        try:
            parse_request(cls, request)
        except InvalidArgument as e:
            if grpc_context is not None:
                grpc_context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
                grpc_context.set_details(str(e))
            return False
        return True

    async def Check(
        self, request: health_pb2.HealthCheckRequest | bytes, grpc_context: GrpcContext | None = None
    ) -> health_pb2.HealthCheckResponse:
        if not self._health_parses(health_pb2.HealthCheckRequest, request, grpc_context):
            return health_pb2.HealthCheckResponse()
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    async def List(
        self, request: health_pb2.HealthListRequest | bytes, grpc_context: GrpcContext | None = None
    ) -> health_pb2.HealthListResponse:
        if not self._health_parses(health_pb2.HealthListRequest, request, grpc_context):
            return health_pb2.HealthListResponse()
        serving = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
        return health_pb2.HealthListResponse(statuses={"": serving})

    async def Watch(
        self, request: health_pb2.HealthCheckRequest | bytes, grpc_context: GrpcContext | None = None
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        out = await self.Check(request, grpc_context=grpc_context)
        if out.status != health_pb2.HealthCheckResponse.SERVING:
            raise StreamFailed("request could not be parsed as grpc.health.v1.HealthCheckRequest")
        yield out


def rpc(name: str, *, empty: Callable[[], Message] | None = None) -> Callable[[Handler], Handler]:
    """A Serve gRPC handler ``fn(self, request, tenant, grpc_context=None)``: the caller's tenant
    is resolved here, once (UNAUTHENTICATED otherwise), then the request's bytes (Serve's proxy
    passes them unparsed, see :mod:`worldserve.common.wire`) are parsed as the RPC's message
    (INVALID_ARGUMENT otherwise; a client stream's as each arrives), all inside
    :func:`grpc_method`, which maps every exception to a status code through one table and records
    the request's metrics."""
    request_cls, client_streaming = request_types().get(name, (None, False))

    def parse(request: Any) -> Any:
        if request_cls is None:
            return request
        if client_streaming:
            return parse_stream(request_cls, request)
        return parse_request(request_cls, request)

    def deco(fn: Handler) -> Handler:
        handler: Handler
        if inspect.isasyncgenfunction(fn):

            async def stream(
                self: ServiceBase, request: object, *, grpc_context: GrpcContext | None = None
            ) -> AsyncIterator[Any]:
                tenant = self.tenant(grpc_context)
                async for item in fn(self, parse(request), tenant, grpc_context=grpc_context):
                    yield item

            handler = stream
        else:

            async def unary(self: ServiceBase, request: object, *, grpc_context: GrpcContext | None = None) -> Any:
                tenant = self.tenant(grpc_context)
                out = fn(self, parse(request), tenant, grpc_context=grpc_context)
                return await out if inspect.isawaitable(out) else out

            handler = unary
        handler.__name__, handler.__qualname__, handler.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
        return grpc_method(name, empty=empty)(handler)

    return deco
