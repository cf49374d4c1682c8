"""OpenTelemetry tracing, off unless ``--otlp-endpoint`` (or ``OTEL_EXPORTER_OTLP_ENDPOINT``).

The packages are optional (``pip install 'hubless-server[otel]'``): nothing here imports
them until tracing is turned on, and a server without them starts as long as it is off.
With tracing on:

- the gRPC server interceptor of ``opentelemetry-instrumentation-grpc`` opens one SERVER span
  per ``hubless.v1`` call (health and reflection are not traced), continuing the caller's
  trace from its ``traceparent`` metadata (W3C trace context; the Python client sends it with
  ``trace_context=True``); HTTP calls get the same span, their ``traceparent`` header being
  metadata too;
- the batching core reports ``hubless.queue_wait``, ``hubless.batch`` and
  ``hubless.predict`` spans through :class:`OtelBatchTracer` (the hook of
  :mod:`hubless_server.observability.batch_trace`);
- the access log line of a traced call carries ``trace_id``;
- spans go to the collector by OTLP/gRPC (``http://collector:4317``), batched in a
  background thread, with the resource ``service.name=hubless-server`` (``OTEL_SERVICE_NAME``
  overrides it); the exporter's own ``OTEL_EXPORTER_OTLP_*`` variables (headers,
  certificates, timeout) apply.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc

from hubless_server.observability.batch_trace import BatchSpan

log = logging.getLogger(__name__)

T = TypeVar("T")

SERVICE_NAME = "hubless-server"
TRACED_PREFIX = "/hubless.v1."
"""Only these methods get a server span (probes and reflection would drown the traces)."""
EXTRA_HINT = "pip install 'hubless-server[otel]'"


class TracingUnavailableError(RuntimeError):
    """Tracing is asked for but the OpenTelemetry packages are not installed."""


def _otlp_provider(endpoint: str) -> Any:
    from importlib import metadata

    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    try:
        version = metadata.version("hubless-server")
    except metadata.PackageNotFoundError:
        version = "unknown"
    resource = Resource.create(
        {
            "service.name": os.environ.get("OTEL_SERVICE_NAME") or SERVICE_NAME,
            "service.version": version,
        }
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


class Tracing:
    """The tracer provider of one server and what is built from it."""

    def __init__(self, provider: Any, owned: bool = False) -> None:
        from opentelemetry import trace

        self.provider = provider
        self._owned = owned
        self._trace = trace
        self.tracer = provider.get_tracer("hubless_server")

    @classmethod
    def from_settings(cls, endpoint: str, provider: Any = None) -> Tracing | None:
        """Tracing to ``endpoint`` (OTLP/gRPC), or with ``provider`` (tests: an SDK provider
        with an in-memory exporter); None when neither is given."""
        if provider is None and not endpoint:
            return None
        try:
            import opentelemetry.instrumentation.grpc
            import opentelemetry.sdk.trace  # noqa: F401
        except ImportError as exc:
            raise TracingUnavailableError(
                f"--otlp-endpoint needs the OpenTelemetry packages ({exc.name} is missing): "
                f"{EXTRA_HINT}"
            ) from None
        if provider is not None:
            return cls(provider)
        tracing = cls(_otlp_provider(endpoint), owned=True)
        log.info("tracing on: spans to %s by OTLP/gRPC", endpoint)
        return tracing

    def server_interceptor(self) -> grpc.aio.ServerInterceptor:
        """The OpenTelemetry gRPC server interceptor (``hubless.v1`` methods only)."""
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        def traced(details: Any) -> bool:
            return str(getattr(details, "method", "") or "").startswith(TRACED_PREFIX)

        interceptor: grpc.aio.ServerInterceptor = aio_server_interceptor(
            tracer_provider=self.provider, filter_=traced
        )
        return interceptor

    def current_trace_id(self) -> str | None:
        """The trace id (32 hex digits) of the current span, None outside a trace."""
        context = self._trace.get_current_span().get_span_context()
        if not context.is_valid:
            return None
        return self._trace.format_trace_id(context.trace_id)

    def batch_tracer(self) -> OtelBatchTracer:
        return OtelBatchTracer(self.tracer)

    def shutdown(self) -> None:
        """Flush the spans not exported yet (and stop the exporter we started)."""
        try:
            if self._owned:
                self.provider.shutdown()
            else:
                self.provider.force_flush()
        except Exception:  # exporting is best effort; never fail a shutdown for it
            log.warning("flushing the trace exporter failed", exc_info=True)


class _OtelBatchSpan:
    def __init__(self, tracer: Any, span: Any, attributes: dict[str, Any]) -> None:
        from opentelemetry import trace

        self._tracer = tracer
        self._span = span
        self._attributes = attributes
        self._context = trace.set_span_in_context(span)

    def wrap(self, fn: Callable[..., T]) -> Callable[..., T]:
        def predict(*args: Any) -> T:
            with self._tracer.start_as_current_span(
                "hubless.predict", context=self._context, attributes=self._attributes
            ):
                return fn(*args)

        return predict

    def end(self, error: BaseException | None = None) -> None:
        if error is not None:
            from opentelemetry.trace import Status, StatusCode

            self._span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        self._span.end()


class _NullSpan:
    def wrap(self, fn: Callable[..., T]) -> Callable[..., T]:
        return fn

    def end(self, error: BaseException | None = None) -> None:
        return None


class OtelBatchTracer:
    """:class:`~hubless_server.observability.batch_trace.BatchTracer` with OpenTelemetry spans."""

    def __init__(self, tracer: Any) -> None:
        from opentelemetry import context, trace

        self._tracer = tracer
        self._context = context
        self._trace = trace

    def capture(self) -> Any:
        if not self._trace.get_current_span().get_span_context().is_valid:
            return None
        return self._context.get_current()

    def queued(self, model: str, parent: Any, items: int, start_ns: int, end_ns: int) -> None:
        span = self._tracer.start_span(
            "hubless.queue_wait",
            context=parent,
            start_time=start_ns,
            attributes={"hubless.model": model, "hubless.items": items},
        )
        span.end(end_time=max(end_ns, start_ns))

    def batch(self, model: str, parents: Sequence[Any], size: int, padded_tokens: int) -> BatchSpan:
        if not parents:  # no traced request in it (warm-up): no span
            return _NullSpan()
        from opentelemetry.trace import Link

        links = [Link(self._trace.get_current_span(p).get_span_context()) for p in parents[1:]]
        attributes = {
            "hubless.model": model,
            "hubless.batch_size": size,
            "hubless.padded_tokens": padded_tokens,
        }
        span = self._tracer.start_span(
            "hubless.batch", context=parents[0], links=links, attributes=attributes
        )
        return _OtelBatchSpan(self._tracer, span, {"hubless.model": model})
