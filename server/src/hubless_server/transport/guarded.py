"""The standard gRPC services (health, reflection) behind never-raising request deserializers.

grpc's generated registrations (``add_HealthServicer_to_server``, the reflection package's)
parse request bodies with ``FromString``: random bytes sent to ``grpc.health.v1.Health/Check``
or to ``ServerReflectionInfo`` make grpc log a DecodeError traceback and answer UNKNOWN. Here
the same servicers are registered through :func:`hubless_server.services.wire.add_service`, and a
thin
adapter answers a body that does not parse like the hubless services do: INVALID_ARGUMENT
MALFORMED_REQUEST, one log line, ``hubless_undecodable_requests_total``.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from hubless_server.services.errors import reject_undecodable
from hubless_server.services.wire import UndecodableRequest, add_service

HEALTH_DESCRIPTOR = health_pb2.DESCRIPTOR.services_by_name["Health"]


class _GuardedHealth:
    """``grpc.health.v1.Health`` over grpc's asyncio HealthServicer."""

    def __init__(self, inner: HealthServicer) -> None:
        self._inner = inner

    async def Check(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        if isinstance(request, UndecodableRequest):
            await reject_undecodable(context, request, "Health.Check")
        response: health_pb2.HealthCheckResponse = await self._inner.Check(request, context)
        return response

    async def Watch(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        if isinstance(request, UndecodableRequest):
            await reject_undecodable(context, request, "Health.Watch")
        await self._inner.Watch(request, context)

    async def List(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        # grpc's asyncio servicer does not implement List: say so cleanly.
        if isinstance(request, UndecodableRequest):
            await reject_undecodable(context, request, "Health.List")
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "Health/List is not served; use Check or Watch"
        )


def add_health(server: grpc.aio.Server, health: HealthServicer) -> None:
    """Serve ``health`` as ``grpc.health.v1.Health`` on ``server``."""
    add_service(server, HEALTH_DESCRIPTOR, _GuardedHealth(health))


class GuardedReflection:
    """A reflection servicer whose request stream may hold :class:`UndecodableRequest`
    values: the stream is answered up to the first one, which ends it with
    INVALID_ARGUMENT."""

    def __init__(self, inner: Any, method: str = "ServerReflection.ServerReflectionInfo") -> None:
        self._inner = inner
        self._method = method

    async def ServerReflectionInfo(
        self, request_iterator: AsyncIterable[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        bad: list[UndecodableRequest] = []

        async def parsed() -> AsyncIterator[Any]:
            async for request in request_iterator:
                if isinstance(request, UndecodableRequest):
                    bad.append(request)
                    return
                yield request

        async for response in self._inner.ServerReflectionInfo(parsed(), context):
            yield response
        if bad:
            await reject_undecodable(context, bad[0], self._method)
