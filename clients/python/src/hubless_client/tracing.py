"""Trace context propagation: the caller's OpenTelemetry trace continues on the server.

Opt-in, and only with OpenTelemetry installed (``opentelemetry-api``; the client does not
depend on it): ``Client(..., trace_context=True)`` (or ``AsyncClient``) adds these
interceptors, which put the current context into every call's metadata with the configured
OpenTelemetry propagator (W3C ``traceparent`` by default). A server with tracing on
(``--otlp-endpoint``) then makes its spans children of the caller's span. Outside a span
nothing is added. For a channel of your own::

    channel = grpc.intercept_channel(channel, *hubless_client.tracing.interceptors())
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import grpc

HINT = "trace_context=True needs OpenTelemetry: pip install opentelemetry-api"


def available() -> bool:
    """True when the OpenTelemetry API can be imported."""
    try:
        import opentelemetry.propagate  # noqa: F401
    except ImportError:
        return False
    return True


def _inject() -> Callable[[dict[str, str]], None]:
    try:
        from opentelemetry import propagate
    except ImportError as exc:
        raise ImportError(HINT) from exc
    return propagate.inject


def _with_context(metadata: Any, inject: Callable[[dict[str, str]], None]) -> list[Any]:
    carrier: dict[str, str] = {}
    inject(carrier)
    pairs = [(k, v) for k, v in (metadata or ()) if k not in carrier]
    return [*pairs, *carrier.items()]


class _Details(
    collections.namedtuple(
        "_Details",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class TraceContextInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Blocking channels: the current trace context into each call's metadata."""

    def __init__(self) -> None:
        self._inject = _inject()

    def _details(self, details: Any) -> _Details:
        return _Details(
            details.method,
            details.timeout,
            _with_context(details.metadata, self._inject),
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


def _aio_details(details: Any, inject: Callable[[dict[str, str]], None]) -> Any:
    return grpc.aio.ClientCallDetails(
        details.method,
        details.timeout,
        grpc.aio.Metadata(*_with_context(details.metadata, inject)),
        details.credentials,
        details.wait_for_ready,
    )


class AioTraceContextUnary(grpc.aio.UnaryUnaryClientInterceptor):
    """asyncio channels, unary calls."""

    def __init__(self) -> None:
        self._inject = _inject()

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_aio_details(details, self._inject), request)


class AioTraceContextStream(grpc.aio.UnaryStreamClientInterceptor):
    """asyncio channels, server-streaming calls."""

    def __init__(self) -> None:
        self._inject = _inject()

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_aio_details(details, self._inject), request)


def interceptors() -> list[Any]:
    """For ``grpc.intercept_channel``; ImportError without OpenTelemetry."""
    return [TraceContextInterceptor()]


def aio_interceptors() -> list[Any]:
    """For ``grpc.aio.insecure_channel(..., interceptors=...)``; ImportError without
    OpenTelemetry."""
    return [AioTraceContextUnary(), AioTraceContextStream()]
