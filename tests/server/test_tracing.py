"""OpenTelemetry tracing over fake runtimes: the server span continues the client's trace, the
batching core's queue-wait, batch and predict spans hang under it, the access log names the
trace; the same for the HTTP door; the server starts without OpenTelemetry when it is off."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hubless.v1 import embeddings_pb2, embeddings_pb2_grpc
from hubless_client import AsyncClient, Client
from hubless_client import tracing as client_tracing
from hubless_server.observability import metrics
from tests.server.fakes import FakeRuntime, fake_factory, make_fake_volume
from tests.server.harness import RunningServer, settings_for
from tests.server.http_calls import call, free_port

EMBED_SPAN = "/hubless.v1.EmbeddingsService/Embed"


@pytest.fixture
def traced(tmp_path: Path) -> Iterator[tuple[RunningServer, InMemorySpanExporter, Any, str]]:
    """A server over fake runtimes tracing into memory, with the HTTP door on."""
    FakeRuntime.reset()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    port = free_port()
    volume = make_fake_volume(tmp_path / "volume", ["all-minilm-l6-v2"])
    settings = settings_for(volume, "--tasks", "embedding", "--http-port", str(port))
    server = RunningServer(settings, fake_factory, tracer_provider=provider)
    try:
        yield server, exporter, provider.get_tracer("test"), f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        FakeRuntime.reset()


def _spans(exporter: InMemorySpanExporter, trace_id: int, names: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        found = {s.name: s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id}
        if names <= set(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def _check_tree(spans: dict[str, ReadableSpan], client_span: Any, items: int) -> None:
    server = spans[EMBED_SPAN]
    assert server.kind is trace.SpanKind.SERVER
    assert server.parent is not None and server.parent.span_id == client_span.span_id
    assert server.attributes["rpc.service"] == "hubless.v1.EmbeddingsService"
    wait, batch, predict = (
        spans["hubless.queue_wait"],
        spans["hubless.batch"],
        spans["hubless.predict"],
    )
    assert wait.parent.span_id == server.context.span_id
    assert wait.attributes == {"hubless.model": "all-minilm-l6-v2", "hubless.items": items}
    assert batch.parent.span_id == server.context.span_id
    assert batch.attributes["hubless.batch_size"] == items
    assert predict.parent.span_id == batch.context.span_id
    assert wait.end_time <= batch.start_time <= predict.start_time <= predict.end_time
    assert predict.end_time <= batch.end_time <= server.end_time


def _access_fields(caplog: pytest.LogCaptureFixture, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while len(caplog.records) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return [r.__dict__["fields"] for r in caplog.records]


def test_grpc_call_spans_and_trace_id_in_the_access_log(
    traced: tuple[RunningServer, InMemorySpanExporter, Any, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, exporter, tracer, _ = traced
    client = Client(f"127.0.0.1:{server.port}", timeout=10, trace_context=True)
    with caplog.at_level(logging.INFO, logger="hubless_server.access"):
        with tracer.start_as_current_span("client") as span:
            client.embed(["one", "two"])
        (fields,) = _access_fields(caplog, 1)
    context = span.get_span_context()
    spans = _spans(
        exporter,
        context.trace_id,
        {EMBED_SPAN, "hubless.queue_wait", "hubless.batch", "hubless.predict"},
    )
    _check_tree(spans, context, items=2)
    assert fields["trace_id"] == trace.format_trace_id(context.trace_id)
    # Health checks are not traced; an untraced call starts its own trace.
    client.wait_until_serving(timeout=10)
    client.embed(["alone"])
    client.close()
    roots = [s for s in exporter.get_finished_spans() if s.name == EMBED_SPAN and not s.parent]
    assert len(roots) == 1
    assert metrics.REGISTRY.get_sample_value(
        "hubless_queue_wait_seconds_count", {"model": "all-minilm-l6-v2"}
    )
    build = [
        s for m in metrics.REGISTRY.collect() if m.name == "hubless_build_info" for s in m.samples
    ]
    assert build and build[0].value == 1 and build[0].labels["python"]


def test_async_client_sends_the_trace_context(
    traced: tuple[RunningServer, InMemorySpanExporter, Any, str],
) -> None:
    server, exporter, tracer, _ = traced

    async def scenario() -> Any:
        async with AsyncClient(
            f"127.0.0.1:{server.port}", timeout=10, trace_context=True
        ) as client:
            with tracer.start_as_current_span("client") as span:
                await client.embed(["one"])
            return span.get_span_context()

    context = asyncio.run(scenario())
    spans = _spans(
        exporter,
        context.trace_id,
        {EMBED_SPAN, "hubless.queue_wait", "hubless.batch", "hubless.predict"},
    )
    _check_tree(spans, context, items=1)


def test_http_call_continues_the_traceparent(
    traced: tuple[RunningServer, InMemorySpanExporter, Any, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, exporter, tracer, base = traced
    with caplog.at_level(logging.INFO, logger="hubless_server.access"):
        with tracer.start_as_current_span("client") as span:
            headers: dict[str, str] = {}
            propagate.inject(headers)
            answer = call("POST", f"{base}/v1/embeddings", {"input": "hi"}, headers=headers)
        assert answer.status == 200
        (fields,) = _access_fields(caplog, 1)
    context = span.get_span_context()
    spans = _spans(
        exporter,
        context.trace_id,
        {EMBED_SPAN, "hubless.queue_wait", "hubless.batch", "hubless.predict"},
    )
    _check_tree(spans, context, items=1)
    assert fields["via"] == "http"
    assert fields["trace_id"] == trace.format_trace_id(context.trace_id)


def test_a_batch_of_two_traced_requests_links_the_second(
    traced: tuple[RunningServer, InMemorySpanExporter, Any, str],
) -> None:
    server, exporter, tracer, _ = traced
    channel = grpc.intercept_channel(server.channel, *client_tracing.interceptors())
    stub = embeddings_pb2_grpc.EmbeddingsServiceStub(channel)
    FakeRuntime.gate = threading.Event()
    with tracer.start_as_current_span("blocker"):
        blocker = stub.Embed.future(embeddings_pb2.EmbedRequest(texts=["b"]), timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(
        getattr(i, "text", "") == "b" for _, batch in FakeRuntime.batches for i in batch
    ):
        time.sleep(0.02)
    futures: list[tuple[Any, Any]] = []
    for name in ("first", "second"):
        with tracer.start_as_current_span(name) as span:
            futures.append((span, stub.Embed.future(embeddings_pb2.EmbedRequest(texts=[name]))))
        time.sleep(0.05)
    FakeRuntime.gate.set()
    blocker.result()
    for _, future in futures:
        future.result()
    first, second = (span.get_span_context() for span, _ in futures)
    spans = _spans(exporter, first.trace_id, {"hubless.batch"})
    batch = spans["hubless.batch"]
    assert batch.attributes["hubless.batch_size"] == 2
    assert [link.context.trace_id for link in batch.links] == [second.trace_id]
    waits = [s for s in exporter.get_finished_spans() if s.name == "hubless.queue_wait"]
    assert {s.context.trace_id for s in waits} >= {first.trace_id, second.trace_id}


def test_settings_read_the_standard_otel_variable(tmp_path: Path) -> None:
    from hubless_server.core.flags import load_settings

    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}
    assert (
        load_settings(["--models-dir", str(tmp_path)], env).otlp_endpoint
        == env["OTEL_EXPORTER_OTLP_ENDPOINT"]
    )
    flag = ["--models-dir", str(tmp_path), "--otlp-endpoint", "http://other:4317"]
    assert load_settings(flag, env).otlp_endpoint == "http://other:4317"
    assert load_settings(["--models-dir", str(tmp_path)], {}).otlp_endpoint == ""


_WITHOUT_OTEL = """
import sys
sys.modules["opentelemetry"] = None  # an import of it fails, as when it is not installed
from hubless_server.observability.tracing import Tracing, TracingUnavailableError
import hubless_server.app, hubless_server.inference.batching, hubless_server.transport.chain
assert Tracing.from_settings("") is None
try:
    Tracing.from_settings("http://collector:4317")
except TracingUnavailableError as exc:
    print(exc)
"""


def test_the_server_needs_no_opentelemetry_while_tracing_is_off() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _WITHOUT_OTEL], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "hubless-server[otel]" in proc.stdout


def test_the_latency_histogram_carries_the_trace_id_as_an_openmetrics_exemplar(
    traced: tuple[RunningServer, InMemorySpanExporter, Any, str],
) -> None:
    from prometheus_client import generate_latest
    from prometheus_client.openmetrics.exposition import generate_latest as openmetrics

    server, _, tracer, _ = traced
    client = Client(f"127.0.0.1:{server.port}", timeout=10, trace_context=True)
    with client, tracer.start_as_current_span("client") as span:
        client.embed(["one"])
    trace_id = trace.format_trace_id(span.get_span_context().trace_id)
    exemplar = f'# {{trace_id="{trace_id}"}}'
    lines = openmetrics(metrics.REGISTRY).decode().splitlines()
    assert any(
        line.startswith("hubless_request_latency_seconds_bucket{")
        and 'method="EmbeddingsService.Embed"' in line
        and exemplar in line
        for line in lines
    )
    assert exemplar not in generate_latest(metrics.REGISTRY).decode()  # the text format


class _DeadExporter:
    """An OTLP exporter stand-in whose collector is down: each export logs what the real one
    logs (two retries, one failure) and fails; with ``hang`` it retries until shut down."""

    def __init__(self, hang: bool = False) -> None:
        self.hang = hang
        self.stopped = threading.Event()
        self.exports = 0

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.exports += 1
        otel = logging.getLogger("opentelemetry.exporter.otlp.proto.grpc.exporter")
        otel.warning("Transient error StatusCode.UNAVAILABLE encountered, retrying in 1s")
        otel.warning("Transient error StatusCode.UNAVAILABLE encountered, retrying in 2s")
        if self.hang:
            self.stopped.wait(60)
        otel.error("Failed to export traces to dead:4317, error code: StatusCode.UNAVAILABLE")
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self.stopped.set()


def _export_log(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith(("opentelemetry", "hubless_server"))
    ]


def test_a_dead_collector_logs_one_line_a_minute(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hubless_server.observability import tracing

    clock = [1000.0]
    monkeypatch.setattr(tracing.time, "monotonic", lambda: clock[0])
    exporter = tracing.QuietExporter(_DeadExporter(), "http://dead:4317")
    with caplog.at_level(logging.INFO):
        for _ in range(5):
            exporter.export([object()])
            clock[0] += 5
        (line,) = _export_log(caplog)
        assert "http://dead:4317" in line.getMessage() and exporter.failing
        assert "StatusCode.UNAVAILABLE" in line.getMessage()  # the exporter's last word
        clock[0] += tracing.FAILURE_LOG_INTERVAL_S
        exporter.export([object(), object()])
        assert len(_export_log(caplog)) == 2
        assert "5 export(s) of 6 span(s) failed" in _export_log(caplog)[1].getMessage()


def test_shutdown_does_not_wait_for_a_dead_collector() -> None:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from hubless_server.observability import tracing

    def tracing_over(dead: _DeadExporter) -> tuple[tracing.Tracing, tracing.QuietExporter]:
        quiet = tracing.QuietExporter(dead, "http://dead:4317")
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(quiet))
        provider.get_tracer("test").start_span("x").end()
        return tracing.Tracing(provider, owned=True, exporter=quiet), quiet

    # An export retrying at shutdown is cut short once the flush time is up.
    hanging = _DeadExporter(hang=True)
    traced, _ = tracing_over(hanging)
    done = threading.Thread(target=traced.shutdown, args=(0.1,))
    done.start()
    done.join(30)  # without the cut, the SDK waits for the retries (its timeout: 30 s)
    assert not done.is_alive() and hanging.stopped.is_set() and hanging.exports == 1

    # After a failed export the shutdown does not try again.
    dead = _DeadExporter()
    traced, quiet = tracing_over(dead)
    quiet.export([object()])
    traced.shutdown()
    assert dead.stopped.is_set() and dead.exports == 1


def test_a_closed_collector_port_costs_the_shutdown_less_than_one_export_try(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The real OTLP exporter against a port nobody listens on: the shutdown's flush gives
    up after ``FLUSH_TIMEOUT_S`` instead of the exporter's retries, and logs one line."""
    from hubless_server.observability import tracing

    traced = tracing.Tracing.from_settings(f"http://127.0.0.1:{free_port()}")
    assert traced is not None
    traced.tracer.start_span("x").end()
    with caplog.at_level(logging.INFO):
        started = time.monotonic()
        traced.shutdown()
        elapsed = time.monotonic() - started
    # the exporter's retries alone (1 s + 2 s + 4 s backoff) took 5.6 s and more before
    assert elapsed < tracing.EXPORT_TIMEOUT_S
    assert len(_export_log(caplog)) <= 1
