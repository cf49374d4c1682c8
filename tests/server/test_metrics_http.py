"""The event-loop /metrics endpoint: answers, refuses what it should, and cannot be starved."""

from __future__ import annotations

import asyncio
import threading

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from hubless_server.observability.metrics_http import MetricsServer


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("hubless_test_total", "a test counter", registry=registry).inc(3)
    return registry


async def _request(port: int, raw: bytes, timeout: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), timeout=timeout)
    writer.close()
    return data


@pytest.fixture
def run() -> object:
    def runner(coro: object) -> object:
        return asyncio.run(asyncio.wait_for(coro, timeout=60))  # type: ignore[arg-type]

    return runner


def test_get_metrics_and_errors(run) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        server = MetricsServer("127.0.0.1", 0, _registry())
        port = await server.start()
        try:
            ok = await _request(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert ok.startswith(b"HTTP/1.1 200 OK")
            assert b"hubless_test_total 3.0" in ok
            head = await _request(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"hubless_test_total" not in head
            assert (await _request(port, b"GET / HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
            post = await _request(port, b"POST /metrics HTTP/1.1\r\n\r\n")
            assert post.startswith(b"HTTP/1.1 405")
            junk = await _request(port, b"\x16\x03\x01garbage\r\n\r\n")
            assert junk.startswith(b"HTTP/1.1 400")
            huge = await _request(port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000)
            assert huge.startswith(b"HTTP/1.1 431")
        finally:
            await server.stop()

    run(scenario())


def test_openmetrics_with_exemplars_only_when_the_scrape_asks(run) -> None:  # type: ignore[no-untyped-def]
    registry = CollectorRegistry()
    latency = Histogram("hubless_test_seconds", "a test histogram", registry=registry)
    latency.observe(0.2, {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"})
    exemplar = b'# {trace_id="4bf92f3577b34da6a3ce929d0e0e4736"} 0.2'

    async def scenario() -> tuple[bytes, bytes]:
        server = MetricsServer("127.0.0.1", 0, registry)
        port = await server.start()
        try:
            plain = await _request(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            asked = await _request(
                port,
                b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;"
                b"version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n\r\n",
            )
            return plain, asked
        finally:
            await server.stop()

    plain, asked = run(scenario())
    assert b"Content-Type: text/plain; version=0.0.4" in plain and exemplar not in plain
    assert b"Content-Type: application/openmetrics-text; version=1.0.0" in asked
    assert exemplar in asked and asked.rstrip().endswith(b"# EOF")


def test_process_and_runtime_metrics_and_no_created_series() -> None:
    from prometheus_client import generate_latest

    from hubless_server.observability import metrics

    metrics.observe_rpc("EmbeddingsService.Embed", "INVALID_ARGUMENT", 0.01)
    text = generate_latest(metrics.REGISTRY).decode()
    for name in (
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "python_info",
        "python_gc_objects_collected_total",
    ):
        assert f"\n{name}" in text, name
    assert "_created" not in text
    assert "hubless_errors" not in text  # failed RPCs: hubless_requests_total{code!="OK"}
    assert 'hubless_requests_total{code="INVALID_ARGUMENT"' in text


def test_slow_clients_time_out_without_threads(run) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        server = MetricsServer("127.0.0.1", 0, _registry(), read_timeout_s=0.5, max_connections=8)
        port = await server.start()
        threads_before = threading.active_count()
        try:
            slow = [await asyncio.open_connection("127.0.0.1", port) for _ in range(30)]
            for _, writer in slow:
                writer.write(b"GET /metr")  # never finishes the request line
            await asyncio.sleep(0.2)
            # No thread per connection, and no more than the cap held open at once.
            assert threading.active_count() <= threads_before + 1
            assert server.open_connections <= 8
            assert server.refused >= 22
            # Held connections are answered 408 and closed once the read timeout passes.
            # (the refused ones were closed at once; reading them may raise a reset).
            answers = await asyncio.gather(
                *(asyncio.wait_for(r.read(), timeout=5) for r, _ in slow), return_exceptions=True
            )
            timed_out = [
                a for a in answers if isinstance(a, bytes) and a.startswith(b"HTTP/1.1 408")
            ]
            assert len(timed_out) == 8
            for _, writer in slow:
                writer.close()
            ok = await _request(port, b"GET /metrics HTTP/1.1\r\n\r\n")
            assert ok.startswith(b"HTTP/1.1 200")
            assert server.open_connections == 0
        finally:
            await server.stop()

    run(scenario())
