"""Access log and RPC metrics: one structured line per RPC, via a server interceptor.

Services add what only they know (the model that answered, the number of items) to the
RPC's :class:`~hubless_server.observability.request_info.AccessInfo` with
:func:`~hubless_server.observability.request_info.note`. With ``callers=True`` (the server
checks bearer tokens) each line names the caller by
:func:`~hubless_server.transport.auth.caller_id` of its token, never the token itself;
otherwise ``caller`` is ``-``. With tracing on, ``trace_id`` (a callable, read while the RPC's
span is current) adds the ``trace_id`` field, and the latency histogram's exemplar. A call
that came through the HTTP door (its context says ``via = "http"``) has ``via=http``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from hubless_server.core.redact import echo
from hubless_server.observability.metrics import observe_rpc
from hubless_server.observability.request_info import CURRENT, AccessInfo
from hubless_server.transport.auth import caller_of
from hubless_server.transport.wrapping import rewrap

log = logging.getLogger("hubless_server.access")


def _code_of(context: grpc.aio.ServicerContext, exc: BaseException | None) -> str:
    if isinstance(exc, GeneratorExit):  # the client went away while a stream was open
        return "CANCELLED"
    if isinstance(exc, asyncio.CancelledError):
        remaining = context.time_remaining()
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    code = context.code()
    if code is None:
        return "UNKNOWN" if exc is not None and not isinstance(exc, grpc.aio.AbortError) else "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return str(code)


class AccessLogInterceptor(grpc.aio.ServerInterceptor):
    """Wraps unary-unary and unary-stream handlers of the hubless services."""

    def __init__(
        self,
        prefix: str = "/hubless.v1.",
        callers: bool = False,
        trace_id: Callable[[], str | None] | None = None,
    ) -> None:
        self._prefix = prefix
        self._callers = callers
        self._trace_id = trace_id

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(self._prefix):
            return handler
        short = method.rsplit("/", 2)[-2].rsplit(".", 1)[-1] + "." + method.rsplit("/", 1)[-1]
        caller = "-"
        if self._callers:
            caller = caller_of(handler_call_details.invocation_metadata) or "-"
        return rewrap(
            handler,
            lambda behavior: self._wrap_unary(short, caller, behavior),
            lambda behavior: self._wrap_stream(short, caller, behavior),
        )

    def _wrap_unary(
        self,
        method: str,
        caller: str,
        behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            info = AccessInfo(model=getattr(request, "model", "") or "", caller=caller)
            token = CURRENT.set(info)
            # Read the peer now: once a cancelled call is finalised, the C core may already
            # have freed it, and asking then crashes the process.
            peer = context.peer()
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                return await behavior(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                CURRENT.reset(token)
                self._log(method, info, context, peer, error, time.perf_counter() - started)

        return wrapper

    def _wrap_stream(
        self,
        method: str,
        caller: str,
        behavior: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]],
    ) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            info = AccessInfo(model=getattr(request, "model", "") or "", caller=caller)
            token = CURRENT.set(info)
            # Read the peer now: once a cancelled call is finalised, the C core may already
            # have freed it, and asking then crashes the process.
            peer = context.peer()
            started = time.perf_counter()
            error: BaseException | None = None
            messages = 0
            try:
                async for message in behavior(request, context):
                    messages += 1
                    yield message
            except BaseException as exc:
                error = exc
                raise
            finally:
                with contextlib.suppress(ValueError):  # finalised from another context
                    CURRENT.reset(token)
                self._log(
                    method, info, context, peer, error, time.perf_counter() - started, messages
                )

        return wrapper

    def _log(
        self,
        method: str,
        info: AccessInfo,
        context: grpc.aio.ServicerContext,
        peer: str,
        error: BaseException | None,
        seconds: float,
        messages: int | None = None,
    ) -> None:
        code = _code_of(context, error)
        trace_id = self._trace_id() if self._trace_id is not None else None
        observe_rpc(method, code, seconds, trace_id)
        fields: dict[str, Any] = {
            "method": method,
            "model": echo(info.model) or "-",  # the request's, until a model answers
            "items": info.items,
            "code": code,
            "ms": round(seconds * 1000, 2),
            "peer": peer,
            "caller": info.caller,
        }
        if messages is not None:
            fields["messages"] = messages
        via = getattr(context, "via", None)
        if isinstance(via, str):
            fields["via"] = via
        if trace_id:
            fields["trace_id"] = trace_id
        if code not in ("OK", "CANCELLED") and context.details():
            fields["details"] = context.details()
        log.info("rpc %s %s", method, code, extra={"fields": fields})
