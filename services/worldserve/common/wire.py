"""The gRPC services as Serve's gRPC proxy registers them, requests left as bytes.

Serve's proxy calls each ``grpc_servicer_functions`` entry of the serve config with a stand-in
servicer and keeps the method handlers it registers, request deserializer included: with the
generated ``add_*Servicer_to_server`` functions, bytes that do not parse as the request message fail
inside grpc, before any worldserve code runs, and the client gets UNKNOWN with
``Unexpected <class 'google.protobuf.message.DecodeError'>``. The functions here register the same
methods with no request deserializer: the proxy passes the request's bytes on to the ingress
replica, where :func:`worldserve.common.servicer.rpc` authenticates the caller, then parses them
with :func:`parse_request` (INVALID_ARGUMENT "request could not be parsed as worldserve.v1.<Message>"
otherwise). Responses are serialized as the generated functions do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from worldserve.common.errors import InvalidArgument

if TYPE_CHECKING:
    from google.protobuf.descriptor import ServiceDescriptor
    from google.protobuf.message import Message

M = TypeVar("M", bound="Message")


def parse_request(cls: type[M], request: object) -> M:
    """``request`` as a ``cls`` message: bytes from the proxy are parsed; a message (a deployment
    handle's caller, a test) is passed through."""
    if isinstance(request, cls):
        return request
    if not isinstance(request, (bytes, bytearray, memoryview)):
        raise InvalidArgument(f"request could not be parsed as {cls.DESCRIPTOR.full_name}")
    from google.protobuf.message import DecodeError

    try:
        return cls.FromString(bytes(request))
    except (DecodeError, RecursionError, ValueError):
        raise InvalidArgument(f"request could not be parsed as {cls.DESCRIPTOR.full_name}") from None


async def parse_stream(cls: type[M], requests: AsyncIterator[object]) -> AsyncIterator[M]:
    """A client stream's requests, each parsed by :func:`parse_request` as it arrives."""
    async for request in requests:
        yield parse_request(cls, request)


def add_service(service: ServiceDescriptor, servicer: object, server: grpc.Server | grpc.aio.Server) -> None:
    """Register every method of ``service`` on ``server``, calling ``servicer.<Method>`` with the
    request's bytes and serializing the response message it returns."""
    from google.protobuf.message_factory import GetMessageClass

    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for m in service.methods:
        serialize: Callable[[Any], bytes] = GetMessageClass(m.output_type).SerializeToString
        fn = getattr(servicer, m.name)
        if m.client_streaming and m.server_streaming:
            handlers[m.name] = grpc.stream_stream_rpc_method_handler(fn, response_serializer=serialize)
        elif m.client_streaming:
            handlers[m.name] = grpc.stream_unary_rpc_method_handler(fn, response_serializer=serialize)
        elif m.server_streaming:
            handlers[m.name] = grpc.unary_stream_rpc_method_handler(fn, response_serializer=serialize)
        else:
            handlers[m.name] = grpc.unary_unary_rpc_method_handler(fn, response_serializer=serialize)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


def add_ImageServiceServicer_to_server(servicer: object, server: grpc.Server | grpc.aio.Server) -> None:
    """``worldserve.v1.ImageService``, requests as bytes (see the module docstring)."""
    from worldserve.v1 import image_pb2

    add_service(image_pb2.DESCRIPTOR.services_by_name["ImageService"], servicer, server)


def add_SessionServiceServicer_to_server(servicer: object, server: grpc.Server | grpc.aio.Server) -> None:
    """``worldserve.v1.SessionService``, requests as bytes (see the module docstring)."""
    from worldserve.v1 import sessions_pb2

    add_service(sessions_pb2.DESCRIPTOR.services_by_name["SessionService"], servicer, server)


def add_DynamicsServiceServicer_to_server(servicer: object, server: grpc.Server | grpc.aio.Server) -> None:
    """``worldserve.v1.DynamicsService``, requests as bytes (see the module docstring)."""
    from worldserve.v1 import dynamics_pb2

    add_service(dynamics_pb2.DESCRIPTOR.services_by_name["DynamicsService"], servicer, server)


def add_TextServiceServicer_to_server(servicer: object, server: grpc.Server | grpc.aio.Server) -> None:
    """``worldserve.v1.TextService``, requests as bytes (see the module docstring)."""
    from worldserve.v1 import text_pb2

    add_service(text_pb2.DESCRIPTOR.services_by_name["TextService"], servicer, server)


def add_HealthServicer_to_server(servicer: object, server: grpc.Server | grpc.aio.Server) -> None:
    """``grpc.health.v1.Health`` (answered by every application), requests as bytes."""
    from grpc_health.v1 import health_pb2

    add_service(health_pb2.DESCRIPTOR.services_by_name["Health"], servicer, server)
