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

A collector that is down must cost neither the logs nor the shutdown. The exporter retries
each batch with backoff and logs every try (3 lines per batch), and the SDK's shutdown waits
for that to finish: SIGTERM-to-exit grew from 5.6 to 12.2 s with a closed collector port.
So here one export tries for at most :data:`EXPORT_TIMEOUT_S` (unless
``OTEL_EXPORTER_OTLP[_TRACES]_TIMEOUT`` says otherwise), the exporter's own warnings are
replaced by one line a minute (:data:`FAILURE_LOG_INTERVAL_S`) that counts the failed
exports, and the flush at shutdown gets :data:`FLUSH_TIMEOUT_S`, none while the last export
failed (spans still queued are dropped: the collector would not take them).
"""

from __future__ import annotations

import logging
import os
import threading
import time
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

EXPORT_TIMEOUT_S = 5.0
"""How long one batch export (with the exporter's retries) may try (OpenTelemetry: 10 s)."""
FLUSH_TIMEOUT_S = 2.0
"""How long the shutdown waits for the spans not exported yet when the collector answers."""
FAILURE_LOG_INTERVAL_S = 60.0
"""At most one log line per this many seconds about failed exports."""
_EXPORT_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.grpc.exporter",  # each retry and each failure
    "opentelemetry.sdk._shared_internal",  # the batch processor: queue full, export errors
)


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
    own_timeout = not any(
        os.environ.get(name)
        for name in ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")
    )
    otlp = OTLPSpanExporter(endpoint=endpoint, timeout=EXPORT_TIMEOUT_S if own_timeout else None)
    exporter = QuietExporter(otlp, endpoint)
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider, exporter


class _Swallow(logging.Filter):
    """Keeps the exporter's own warnings out of the logs; :class:`QuietExporter` reports
    failures instead, with the last message kept here."""

    def __init__(self) -> None:
        super().__init__()
        self.last = ""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        self.last = record.getMessage().splitlines()[0][:300]
        return False


_SWALLOW = _Swallow()


class QuietExporter:
    """An OTLP span exporter that logs its failures at most once a minute and can be cut
    short (:meth:`abort`) so that the shutdown does not wait for retries to a dead
    collector. The exporter interface of ``opentelemetry.sdk.trace.export.SpanExporter``."""

    def __init__(
        self, inner: Any, endpoint: str, interval_s: float = FAILURE_LOG_INTERVAL_S
    ) -> None:
        self._inner = inner
        self._endpoint = endpoint
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._failed = 0  # failed exports not reported yet
        self._dropped = 0  # their spans
        self._reported_at: float | None = None
        self._closed = False
        self.failing = False  # the last export failed
        for name in _EXPORT_LOGGERS:
            logger = logging.getLogger(name)
            if _SWALLOW not in logger.filters:
                logger.addFilter(_SWALLOW)

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        if self._closed:  # aborted: what is left is dropped, quietly
            return SpanExportResult.FAILURE
        result = self._inner.export(spans)
        with self._lock:
            if result is SpanExportResult.SUCCESS:
                if self.failing and self._reported_at is not None:
                    log.info("trace export to %s works again", self._endpoint)
                self.failing = False
                self._failed = self._dropped = 0
                self._reported_at = None
                return result
            self.failing = True
            if self._closed:  # cut short by abort(): the shutdown's flush ran out of time
                log.warning(
                    "%d span(s) not exported: the OTLP collector at %s did not take them "
                    "within the shutdown's flush",
                    len(spans),
                    self._endpoint,
                )
                return result
            self._failed += 1
            self._dropped += len(spans)
            now = time.monotonic()
            if self._reported_at is None or now - self._reported_at >= self._interval_s:
                log.warning(
                    "cannot export spans to the OTLP collector at %s: %d export(s) of %d "
                    "span(s) failed since the last report, spans dropped (%s); at most one "
                    "such line a minute",
                    self._endpoint,
                    self._failed,
                    self._dropped,
                    _SWALLOW.last or "no detail",
                    extra={"fields": {"failed": self._failed, "dropped_spans": self._dropped}},
                )
                self._reported_at = now
                self._failed = self._dropped = 0
        return result

    def abort(self) -> None:
        """Stop at once: the retry in progress gives up and its call is cancelled; later
        exports fail without trying."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._inner.shutdown()

    def shutdown(self) -> None:
        self.abort()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class Tracing:
    """The tracer provider of one server and what is built from it."""

    def __init__(
        self, provider: Any, owned: bool = False, exporter: QuietExporter | None = None
    ) -> None:
        from opentelemetry import trace

        self.provider = provider
        self._owned = owned
        self._exporter = exporter
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
        provider, exporter = _otlp_provider(endpoint)
        tracing = cls(provider, owned=True, exporter=exporter)
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

    def shutdown(self, flush_timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        """Flush the spans not exported yet (and stop the exporter we started): for at most
        ``flush_timeout_s``, and not at all while the collector fails (the module's
        docstring)."""
        timer = None
        try:
            if self._owned:
                exporter = self._exporter
                if exporter is not None:
                    if exporter.failing:
                        exporter.abort()
                    else:
                        timer = threading.Timer(flush_timeout_s, exporter.abort)
                        timer.daemon = True
                        timer.start()
                self.provider.shutdown()
            else:
                self.provider.force_flush()
        except Exception:  # exporting is best effort; never fail a shutdown for it
            log.warning("flushing the trace exporter failed", exc_info=True)
        finally:
            if timer is not None:
                timer.cancel()


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
