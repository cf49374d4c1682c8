"""The drain window: after SIGTERM/SIGINT, refuse new hubless RPCs with a retryable status.

:meth:`HublessServer.stop <hubless_server.app.HublessServer.stop>` first turns every health
status NOT_SERVING and :meth:`DrainInterceptor.start` s; for ``--drain-delay`` seconds the
server keeps its listeners open and keeps accepting connections and calls, but each *new*
``/hubless.v1.`` call ends at once with UNAVAILABLE, ``ErrorInfo`` reason SHUTTING_DOWN and a
``RetryInfo`` of 0 s (retry elsewhere, now), while the calls already in a handler run to the
end. Health and reflection are still answered. Only then does ``grpc.aio``'s ``stop(grace)``
close the listener and send GOAWAY.

Why not ``stop(grace)`` at once: gRPC's own shutdown answers nothing a client can act on. It
cancels the calls its core has received but not yet handed to the application (the client
sees CANCELLED, which is never retried; the soak saw 6 such calls sent just after SIGTERM),
and refuses the rest with UNAVAILABLE without details; and a load balancer that has not yet
seen the pod leave its endpoints keeps sending new connections to a closed port. The drain
window answers every call that reaches the process with the documented, retryable status,
and gives the balancers ``--drain-delay`` seconds to move away (docs/deploy.md).

The interceptor sits inside the access log and tracing (a refused call has its access line,
code UNAVAILABLE, and its span) and outside the per-caller limit (a refusal takes no slot).
The HTTP door runs the same chain, so its calls get 503 with ``Retry-After: 0``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from hubless_server.core.errors import ShuttingDownError
from hubless_server.services.errors import ErrorScope, abort
from hubless_server.transport.wrapping import rewrap

PREFIX = "/hubless.v1."


MESSAGE = (
    "the server is shutting down and takes no new calls: retry now, on another replica "
    "(the load balancer picks one)"
)


class DrainInterceptor(grpc.aio.ServerInterceptor):
    """Refuses new ``/hubless.v1.`` calls once :meth:`start` was called; ``refused`` counts
    them. A call counts as new until its handler starts: one already running is never
    touched."""

    def __init__(self, prefix: str = PREFIX) -> None:
        self._prefix = prefix
        self._draining = False
        self.refused = 0

    @property
    def draining(self) -> bool:
        return self._draining

    def start(self) -> None:
        """From now on, refuse new calls."""
        self._draining = True

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""
        if handler is None or not method.startswith(self._prefix):
            return handler
        return rewrap(
            handler,
            lambda behavior: self._wrap_unary(method, behavior),
            lambda behavior: self._wrap_stream(method, behavior),
        )

    async def _refuse_if_draining(self, method: str, context: grpc.aio.ServicerContext) -> None:
        if not self._draining:
            return
        self.refused += 1
        await abort(context, ShuttingDownError(MESSAGE), ErrorScope(method))

    def _wrap_unary(
        self, method: str, behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self._refuse_if_draining(method, context)
            return await behavior(request, context)

        return wrapper

    def _wrap_stream(
        self,
        method: str,
        behavior: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]],
    ) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await self._refuse_if_draining(method, context)
            async for message in behavior(request, context):
                yield message

        return wrapper
