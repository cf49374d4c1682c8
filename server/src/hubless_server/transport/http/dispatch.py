"""Calling the gRPC servicers in-process, through the same interceptor chain as gRPC.

The HTTP door implements nothing twice: an HTTP request becomes the gRPC method's request
message, and :class:`Dispatcher` hands it to the very handlers ``grpc.aio`` would run,
wrapped by the very interceptors (tokens, tracing, access log, per-caller limit), with an
:class:`HttpServicerContext` in place of grpc's context. What differs is only the transport:

- ``abort()`` raises :class:`HttpAbort` (a ``grpc.aio.AbortError``, so the servicers' error
  wrappers let it through as they do grpc's) carrying the code, the message and the trailing
  metadata with the ``google.rpc.Status`` details, which :mod:`.errors` turns into an HTTP
  status and an OpenAI-style error body;
- ``invocation_metadata()`` is the HTTP request's headers (``authorization``,
  ``traceparent``, ...), lower-cased like gRPC metadata;
- ``peer()`` is the client address in gRPC's form (``ipv4:10.0.0.7:41234``), so the
  per-caller limit counts an HTTP client like a gRPC one from the same address;
- ``time_remaining()`` counts down to the deadline the request asked for (see
  :data:`TIMEOUT_HEADERS`), or is None like a gRPC call without a deadline.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, NamedTuple

import grpc

TIMEOUT_HEADERS = ("x-hubless-timeout", "x-stainless-read-timeout")
"""Request headers giving the deadline in seconds, first found wins: hubless's own, then the
one the OpenAI SDK sends with its configured read timeout."""


class Metadatum(NamedTuple):
    """One metadata entry, shaped like grpc's (a pair with ``key`` and ``value``)."""

    key: str
    value: str


class _CallDetails(NamedTuple):
    """What an interceptor sees of a call (``grpc.HandlerCallDetails``)."""

    method: str
    invocation_metadata: tuple[Metadatum, ...]


class HttpAbort(grpc.aio.AbortError):
    """A servicer or interceptor ended the call with a status."""

    def __init__(
        self, code: grpc.StatusCode, details: str, trailing_metadata: Sequence[Any] = ()
    ) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.trailing_metadata = tuple(trailing_metadata or ())


def grpc_peer(host: str | None, port: int | None) -> str:
    """An HTTP client address as a gRPC peer string."""
    if not host:
        return "unix:"
    if ":" in host:
        return f"ipv6:[{host}]:{port or 0}"
    return f"ipv4:{host}:{port or 0}"


def deadline_from(headers: Sequence[tuple[str, str]], now: float) -> float | None:
    """The request's deadline in ``loop.time()`` seconds from :data:`TIMEOUT_HEADERS`; a
    missing, unparsable or non-positive value means no deadline."""
    values = dict(headers)
    for name in TIMEOUT_HEADERS:
        raw = values.get(name)
        if raw is None:
            continue
        try:
            seconds = float(raw)
        except ValueError:
            continue
        if 0 < seconds < 1e9:
            return now + seconds
    return None


class HttpServicerContext:
    """A ``grpc.aio.ServicerContext`` for a call that arrived over HTTP."""

    via = "http"
    """Read by the access log (``via=http``)."""

    def __init__(
        self, metadata: Sequence[tuple[str, str]], peer: str, deadline: float | None = None
    ) -> None:
        self._metadata = tuple(Metadatum(k, v) for k, v in metadata)
        self._peer = peer
        self._deadline = deadline
        self._code: grpc.StatusCode | None = None
        self._details: str | None = None
        self._trailing: tuple[Any, ...] = ()

    @property
    def deadline(self) -> float | None:
        return self._deadline

    def invocation_metadata(self) -> tuple[Metadatum, ...]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def peer_identities(self) -> None:
        return None

    def peer_identity_key(self) -> None:
        return None

    def auth_context(self) -> dict[str, Any]:
        return {}

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - asyncio.get_running_loop().time())

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Sequence[Any] = ()
    ) -> None:
        self._code, self._details, self._trailing = code, details, tuple(trailing_metadata or ())
        raise HttpAbort(code, details, trailing_metadata)

    async def abort_with_status(self, status: Any) -> None:
        await self.abort(status.code, status.details, status.trailing_metadata)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str | None:
        return self._details

    def set_trailing_metadata(self, trailing_metadata: Sequence[Any]) -> None:
        self._trailing = tuple(trailing_metadata)

    def trailing_metadata(self) -> tuple[Any, ...]:
        return self._trailing

    async def send_initial_metadata(self, initial_metadata: Sequence[Any]) -> None:
        return None

    async def read(self) -> Any:
        raise RuntimeError("an HTTP call has no request stream")

    async def write(self, message: Any) -> None:
        raise RuntimeError("an HTTP call answers through its handler's return value")

    def set_compression(self, compression: Any) -> None:
        return None

    def disable_next_message_compression(self) -> None:
        return None

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return self._code is not None

    def add_done_callback(self, callback: Callable[..., Any]) -> None:
        return None


class HandlerTable:
    """Collects method handlers the way a grpc server does (``wire.add_service`` registers
    into it), for :class:`Dispatcher` to look up."""

    def __init__(self) -> None:
        self._generic: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(handlers)

    def lookup(self, details: _CallDetails) -> grpc.RpcMethodHandler | None:
        for generic in self._generic:
            handler = generic.service(details)  # type: ignore[arg-type]
            if handler is not None:
                return handler
        return None


class Dispatcher:
    """Runs a method's handler through ``interceptors`` (first = outermost), as grpc.aio's
    server does for a call it received."""

    def __init__(
        self, table: HandlerTable, interceptors: Sequence[grpc.aio.ServerInterceptor]
    ) -> None:
        self._table = table
        self._interceptors = tuple(interceptors)

    async def _handler(self, method: str, context: HttpServicerContext) -> grpc.RpcMethodHandler:
        details = _CallDetails(method, context.invocation_metadata())

        async def run(chain: Iterator[grpc.aio.ServerInterceptor], d: Any) -> Any:
            interceptor = next(chain, None)
            if interceptor is None:
                return self._table.lookup(d)

            async def continuation(next_details: Any) -> Any:
                return await run(chain, next_details)

            return await interceptor.intercept_service(continuation, d)

        handler = await run(iter(self._interceptors), details)
        if handler is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"method {method} is not served")
        return handler  # type: ignore[no-any-return]

    async def unary(self, method: str, request: Any, context: HttpServicerContext) -> Any:
        """The response of a unary method; raises :class:`HttpAbort` for an error status."""
        handler = await self._handler(method, context)
        if handler.unary_unary is not None:
            return await handler.unary_unary(request, context)
        await _run_any(handler, request, context)  # an interceptor's refusal (stream-shaped)
        raise RuntimeError(f"{method}: the handler ended without a response")

    async def stream(
        self, method: str, request: Any, context: HttpServicerContext
    ) -> AsyncIterator[Any]:
        """The responses of a server-streaming method; raises :class:`HttpAbort`."""
        handler = await self._handler(method, context)
        if handler.unary_stream is not None:
            async for message in handler.unary_stream(request, context):
                yield message
            return
        await _run_any(handler, request, context)
        raise RuntimeError(f"{method}: the handler ended without a response")


async def _one(request: Any) -> AsyncIterator[Any]:
    yield request


async def _run_any(handler: grpc.RpcMethodHandler, request: Any, context: Any) -> None:
    """Run a handler of another shape (the token check answers with a stream-stream handler
    that aborts whatever the call); its messages, if any, are dropped."""
    behavior = handler.stream_stream or handler.stream_unary or handler.unary_stream
    if behavior is None:
        return
    arg = request if handler.unary_stream is not None else _one(request)
    result = behavior(arg, context)
    if inspect.isasyncgen(result) or hasattr(result, "__aiter__"):
        async for _ in result:
            pass
    elif isinstance(result, Awaitable):
        await result
