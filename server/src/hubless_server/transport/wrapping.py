"""One way to wrap a gRPC method handler: what every interceptor of the chain shares.

An interceptor that acts around a call (drain, caller limit, access log) builds a new handler
of the same shape, with the same (de)serializers, around the behaviour it was given:
:func:`rewrap` does that once, for the two shapes hubless serves (unary-unary and
unary-stream); any other shape is returned as it is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
StreamBehavior = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


def rewrap(
    handler: grpc.RpcMethodHandler,
    unary: Callable[[UnaryBehavior], UnaryBehavior],
    stream: Callable[[StreamBehavior], StreamBehavior],
) -> grpc.RpcMethodHandler:
    """``handler`` with its behaviour wrapped by ``unary`` (unary-unary) or ``stream``
    (unary-stream), keeping its request deserializer and response serializer."""
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            unary(handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            stream(handler.unary_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler
