"""The one server interceptor: tokens, tracing, access log, drain window and caller limit.

Each of these used to be an interceptor of its own, and each re-wrapped the method handler of
every call: five new handlers, five closures and three parses of the ``authorization``
metadata per call (hashed twice). :class:`HublessInterceptor` does it all in one place:

- per call, in :meth:`~HublessInterceptor.intercept_service`: the token check
  (:mod:`.auth`; the caller's id is looked up with the token, no hash per call), then the
  handler from gRPC's continuation;
- per method, once: the wrapped handler, cached by method name and the handler gRPC (or the
  HTTP door's table) hands out; it starts the access line (:mod:`.access_log`), checks the drain
  window (:mod:`.drain`), takes a caller slot (:mod:`.caller_limit`), runs the servicer,
  gives the slot back and ends the line with its metrics (children looked up once, the line
  built only when INFO is emitted). The caller's id travels from the token check to the
  handler in a context variable: both run in the call's task, on gRPC and in the HTTP door.

The order of the old chain holds: a call refused for its token runs nothing else (no span, no
slot; its refusal is answered by a shared handler that never decodes the body, and is
counted, logged and backed off by :mod:`.refusals`); the tracing
span (``--otlp-endpoint``; OpenTelemetry's own server interceptor, called from here) wraps the
access line, so the line carries the trace id; a call refused while draining, or over its
caller limit, has its access line and span; a call refused while draining takes no slot.
Health checks and reflection pass through untouched (reflection needs a token with
``--auth-reflection``). The HTTP door runs the same instance
(:mod:`hubless_server.transport.http.dispatch`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from time import perf_counter
from typing import Any

import grpc

from hubless_server.observability.metrics import MethodMetrics
from hubless_server.observability.request_info import CURRENT, AccessInfo
from hubless_server.services.errors import ErrorScope
from hubless_server.transport.access_log import AccessLog, short_name
from hubless_server.transport.auth import TokenFile, bearer_token, exempt
from hubless_server.transport.caller_limit import CallerLimit, peer_host
from hubless_server.transport.drain import PREFIX, DrainWindow
from hubless_server.transport.refusals import Refusals
from hubless_server.transport.wrapping import StreamBehavior, UnaryBehavior, rewrap

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]

_MAX_HANDLERS = 1024
"""Cached wrapped handlers (methods x the tables that serve them: a few dozen)."""

_CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("hubless_caller", default="-")
"""The token caller of the call being set up (set by the token check, read by its handler)."""


class HublessInterceptor(grpc.aio.ServerInterceptor):
    """Everything the transport does around a call; one instance per server, shared by the
    gRPC port and the HTTP door.

    ``tokens``: check bearer tokens (None: no check); ``protect_reflection``: reflection
    needs one too; ``drain``: the drain window; ``caller_limit``: ``--max-caller-concurrency``
    (None: no limit); ``tracing``: OpenTelemetry's server interceptor and the function that
    reads the current trace id (None: no tracing)."""

    def __init__(
        self,
        *,
        tokens: TokenFile | None = None,
        protect_reflection: bool = False,
        drain: DrainWindow | None = None,
        caller_limit: CallerLimit | None = None,
        tracing: grpc.aio.ServerInterceptor | None = None,
        trace_id: Callable[[], str | None] | None = None,
        prefix: str = PREFIX,
    ) -> None:
        self.tokens = tokens
        self.protect_reflection = protect_reflection
        self.drain = drain if drain is not None else DrainWindow()
        self.caller_limit = caller_limit
        self.access = AccessLog(callers=tokens is not None, trace_id=trace_id)
        self._tracing = tracing
        self._prefix = prefix
        self._handlers: dict[
            tuple[str, int], tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]
        ] = {}
        self.refusals = Refusals()

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method or ""
        tokens = self.tokens
        if not method.startswith(self._prefix):  # health, reflection: nothing to wrap
            if tokens is not None and not exempt(method, self.protect_reflection):
                token = bearer_token(handler_call_details.invocation_metadata)
                if token is None or tokens.caller(token) is None:
                    return await self._refused(continuation, handler_call_details, token is None)
            return await continuation(handler_call_details)
        if tokens is not None:
            token = bearer_token(handler_call_details.invocation_metadata)
            caller = tokens.caller(token) if token is not None else None
            if caller is None:
                return await self._refused(continuation, handler_call_details, token is None)
            _CALLER.set(caller)
        if self._tracing is not None:
            return await self._tracing.intercept_service(
                functools.partial(self._handler, continuation), handler_call_details
            )
        handler = await continuation(handler_call_details)  # _handler, inlined
        if handler is None:
            return None
        cached = self._handlers.get((method, id(handler)))
        if cached is not None and cached[0] is handler:
            return cached[1]
        return self._wrap(method, handler)

    async def _refused(
        self, continuation: Continuation, details: grpc.HandlerCallDetails, missing: bool
    ) -> grpc.RpcMethodHandler:
        """The handler refusing a call without an accepted token (:mod:`.refusals`): the
        method is named in its metrics and line only if this server serves it."""
        handler = await continuation(details)  # a lookup: nothing runs, nothing is decoded
        method = short_name(details.method) if handler is not None else "unknown"
        return self.refusals.handler(method, missing)

    async def _handler(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None:
            return None
        method: str = details.method
        cached = self._handlers.get((method, id(handler)))
        if cached is not None and cached[0] is handler:
            return cached[1]
        return self._wrap(method, handler)

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The handler of ``method`` wrapped, built once per handler gRPC (or the HTTP door's
        table) hands out and cached with it (the entry keeps it alive, so its id stays
        its own)."""
        wrapped = rewrap(
            handler,
            functools.partial(self._wrap_unary, method),
            functools.partial(self._wrap_stream, method),
        )
        if len(self._handlers) >= _MAX_HANDLERS:  # handlers made per call: do not grow
            self._handlers.clear()
        self._handlers[(method, id(handler))] = (handler, wrapped)
        return wrapped

    def _wrap_unary(self, method: str, behavior: UnaryBehavior) -> UnaryBehavior:
        scope = ErrorScope(method)
        metrics = MethodMetrics(short_name(method))
        by_token = self.tokens is not None
        drain, limit, access = self.drain, self.caller_limit, self.access

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            # Read the peer now: once a cancelled call is finalised, the C core may already
            # have freed it, and asking then crashes the process.
            peer = context.peer()
            caller = _CALLER.get() if by_token else "-"
            info = AccessInfo(getattr(request, "model", "") or "", 0, caller)
            reset = CURRENT.set(info)
            started = perf_counter()
            error: BaseException | None = None
            slot: str | None = None
            try:
                if drain.draining:
                    await drain.refuse(context, scope)
                if limit is not None:
                    key = caller if by_token else peer_host(peer)
                    if not limit.acquire(key):
                        await limit.refuse(key, context, scope)
                    slot = key
                return await behavior(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                if slot is not None:
                    limit.release(slot)  # type: ignore[union-attr]
                CURRENT.reset(reset)
                access.done(metrics, info, context, peer, error, perf_counter() - started)

        return unary

    def _wrap_stream(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        scope = ErrorScope(method)
        metrics = MethodMetrics(short_name(method))
        by_token = self.tokens is not None
        drain, limit, access = self.drain, self.caller_limit, self.access

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            peer = context.peer()  # now: see the unary wrapper
            caller = _CALLER.get() if by_token else "-"
            info = AccessInfo(getattr(request, "model", "") or "", 0, caller)
            reset = CURRENT.set(info)
            started = perf_counter()
            error: BaseException | None = None
            slot: str | None = None
            messages = 0
            try:
                if drain.draining:
                    await drain.refuse(context, scope)
                if limit is not None:
                    key = caller if by_token else peer_host(peer)
                    if not limit.acquire(key):
                        await limit.refuse(key, context, scope)
                    slot = key
                async for message in behavior(request, context):
                    messages += 1
                    yield message
            except BaseException as exc:
                error = exc
                raise
            finally:
                if slot is not None:
                    limit.release(slot)  # type: ignore[union-attr]
                with contextlib.suppress(ValueError):  # finalised from another context
                    CURRENT.reset(reset)
                access.done(metrics, info, context, peer, error, perf_counter() - started, messages)

        return stream
