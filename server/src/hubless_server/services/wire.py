"""Registering servicers so that undecodable requests become INVALID_ARGUMENT, not tracebacks.

The generated ``add_FooServiceServicer_to_server`` functions hand grpc the message class's
``FromString`` as the request deserializer. When a body does not parse (random bytes, a
truncated message, invalid UTF-8 in a string field), grpc logs the DecodeError with a full
traceback and answers UNKNOWN: a cheap way to flood the logs, and the wrong status.

:func:`add_service` registers a servicer from its service descriptor instead, with a
deserializer that never raises: a body that does not parse becomes an
:class:`UndecodableRequest` naming the message type. The servicer's error wrapper
(``services.errors``) answers it with INVALID_ARGUMENT, counts it in
``hubless_undecodable_requests_total`` and logs one line, no traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor, message_factory
from google.protobuf.message import DecodeError, Message

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UndecodableRequest:
    """A request body that is not a valid ``message_type`` message."""

    message_type: str
    size: int
    error: str

    def describe(self) -> str:
        return (
            f"the request body ({self.size} bytes) is not a valid {self.message_type} message; "
            "check that the client uses the hubless.v1 protos of this server"
        )


def safe_deserializer(message_class: type[Message]) -> Callable[[bytes], Any]:
    """``message_class.FromString`` that returns :class:`UndecodableRequest` instead of
    raising."""
    full_name = message_class.DESCRIPTOR.full_name

    def deserialize(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except (DecodeError, ValueError, RuntimeError) as exc:  # upb raises DecodeError
            return UndecodableRequest(full_name, len(data), str(exc)[:200])

    return deserialize


def _handler_factory(method: descriptor.MethodDescriptor) -> Callable[..., grpc.RpcMethodHandler]:
    if method.client_streaming and method.server_streaming:
        return grpc.stream_stream_rpc_method_handler
    if method.client_streaming:
        return grpc.stream_unary_rpc_method_handler
    if method.server_streaming:
        return grpc.unary_stream_rpc_method_handler
    return grpc.unary_unary_rpc_method_handler


def add_service(
    server: grpc.aio.Server, service: descriptor.ServiceDescriptor, servicer: object
) -> None:
    """Register every method of ``service`` on ``server`` with the servicer's method of the
    same name and never-raising request deserializers."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        implementation = getattr(servicer, method.name, None)
        if implementation is None:
            raise TypeError(f"{type(servicer).__name__} does not implement {method.full_name}")
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        handlers[method.name] = _handler_factory(method)(
            implementation,
            request_deserializer=safe_deserializer(request_class),
            response_serializer=response_class.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(service.full_name, handlers)]
    )
    if hasattr(server, "add_registered_method_handlers"):
        server.add_registered_method_handlers(service.full_name, handlers)
