"""``--max-caller-concurrency``: at most N hubless RPCs in flight per caller.

One caller must not take every slot of the queue and the inference gate from the others. A
caller is its bearer token's :func:`~hubless_server.transport.auth.caller_id` when the server checks
tokens (``--auth-token-file``), else the client's IP address (the peer without its port): a
client opening several connections is still one caller, but every client behind one proxy or
NAT address counts as one too, so without tokens size the limit for what sits in front.

A call over the limit ends at once with RESOURCE_EXHAUSTED, reason CALLER_LIMIT, the limit in
the ErrorInfo metadata and a RetryInfo; it is never queued. Only ``/hubless.v1.`` methods
count: health checks and reflection never do. A call counts from the moment its handler
starts until it returns (a stream: until its last message or its cancellation).
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from hubless_server.core.errors import CALLER_LIMIT_RETRY_S as CALLER_LIMIT_RETRY_S
from hubless_server.core.errors import CallerLimitError
from hubless_server.services.errors import ErrorScope, abort
from hubless_server.transport.auth import caller_of
from hubless_server.transport.wrapping import rewrap


def peer_host(peer: str) -> str:
    """The address part of a gRPC peer: ``ipv4:10.0.0.7:41234`` -> ``10.0.0.7``,
    ``ipv6:[::1]:5000`` -> ``::1``; anything else (``unix:...``) as it is."""
    kind, sep, rest = peer.partition(":")
    if not sep or kind not in ("ipv4", "ipv6"):
        return peer
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    return host.strip("[]")


class CallerLimitInterceptor(grpc.aio.ServerInterceptor):
    """Counts the in-flight calls of each caller and refuses those beyond ``limit``."""

    def __init__(self, limit: int, by_token: bool, prefix: str = "/hubless.v1.") -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.by_token = by_token
        self._prefix = prefix
        self._in_flight: collections.Counter[str] = collections.Counter()

    def in_flight(self, caller: str) -> int:
        return self._in_flight[caller]

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""
        if handler is None or not method.startswith(self._prefix):
            return handler
        token_caller = (
            caller_of(handler_call_details.invocation_metadata) if self.by_token else None
        )
        return rewrap(
            handler,
            lambda behavior: self._wrap_unary(method, token_caller, behavior),
            lambda behavior: self._wrap_stream(method, token_caller, behavior),
        )

    def _caller(self, token_caller: str | None, context: grpc.aio.ServicerContext) -> str:
        if token_caller is not None:
            return token_caller
        return peer_host(context.peer() or "")

    async def _acquire(self, method: str, caller: str, context: grpc.aio.ServicerContext) -> None:
        if self._in_flight[caller] >= self.limit:
            await abort(context, CallerLimitError(caller, self.limit), ErrorScope(method))
        self._in_flight[caller] += 1

    def _release(self, caller: str) -> None:
        self._in_flight[caller] -= 1
        if self._in_flight[caller] <= 0:
            del self._in_flight[caller]

    def _wrap_unary(
        self,
        method: str,
        token_caller: str | None,
        behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            caller = self._caller(token_caller, context)
            await self._acquire(method, caller, context)
            try:
                return await behavior(request, context)
            finally:
                self._release(caller)

        return wrapper

    def _wrap_stream(
        self,
        method: str,
        token_caller: str | None,
        behavior: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]],
    ) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            caller = self._caller(token_caller, context)
            await self._acquire(method, caller, context)
            try:
                async for message in behavior(request, context):
                    yield message
            finally:
                self._release(caller)

        return wrapper
