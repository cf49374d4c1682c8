"""The ``/metrics`` endpoint, served from the server's event loop.

``prometheus_client.start_http_server`` runs a thread per connection with no timeout in the
same process: 1,000 slow connections grew the server to 1,144 threads and stalled gRPC for
~40 s. This endpoint instead lives on the asyncio loop that already serves gRPC, so a
connection costs a coroutine, not a thread, and it is bounded on every side:

- at most ``max_connections`` open at once; a connection beyond that is closed at once;
- the request line and headers must arrive within ``read_timeout_s`` and fit in
  ``max_request_bytes``; the answer must be taken within ``write_timeout_s``;
- one request per connection (``Connection: close``), ``GET``/``HEAD`` of ``/metrics`` only.

Rendering the exposition text takes well under a millisecond for hubless's metrics, so it runs
inline. The format follows the scrape's ``Accept`` header (``prometheus_client``'s choice):
the Prometheus text format by default, OpenMetrics (with the latency exemplars) when asked
for. An ``ssl.SSLContext`` turns on HTTPS (the same certificates as gRPC).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


class MetricsServer:
    """``GET /metrics`` on ``host:port`` from the running event loop; ``await start()``."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        *,
        ssl_context: ssl.SSLContext | Callable[[], ssl.SSLContext] | None = None,
        max_connections: int = 64,
        read_timeout_s: float = 5.0,
        write_timeout_s: float = 10.0,
        max_request_bytes: int = 8192,
    ) -> None:
        self.host = host
        self.port = port
        self.registry = registry
        self._ssl = ssl_context
        self.max_connections = max_connections
        self.read_timeout_s = read_timeout_s
        self.write_timeout_s = write_timeout_s
        self.max_request_bytes = max_request_bytes
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.refused = 0

    async def start(self) -> int:
        """Listen; returns the bound port (``port`` 0 picks a free one)."""
        context = self._ssl() if callable(self._ssl) else self._ssl
        self._server = await asyncio.start_server(
            self._handle,
            self.host,
            self.port,
            ssl=context,
            limit=self.max_request_bytes,
            ssl_handshake_timeout=self.read_timeout_s if context else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        scheme = "https" if context else "http"
        log.info("metrics on %s://%s:%d/metrics", scheme, self.host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=2.0)
            self._server = None

    @property
    def open_connections(self) -> int:
        return len(self._writers)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._writers) >= self.max_connections:
            self.refused += 1
            writer.close()
            return
        self._writers.add(writer)
        try:
            status, body, content_type, send_body = await self._answer(reader)
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                f"Content-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode("ascii")
            writer.write(head + body if send_body else head)
            await asyncio.wait_for(writer.drain(), timeout=self.write_timeout_s)
        except (TimeoutError, ConnectionError, ssl.SSLError, OSError, asyncio.CancelledError):
            pass  # a slow, broken or hostile peer, or shutdown: drop it, nothing to report
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), timeout=1.0)

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, bytes, str, bool]:
        plain = "text/plain; charset=utf-8"
        try:
            head = await asyncio.wait_for(
                reader.readuntil(b"\r\n\r\n"), timeout=self.read_timeout_s
            )
        except TimeoutError:
            return 408, b"request not received in time\n", plain, True
        except asyncio.LimitOverrunError:
            return 431, b"request headers too large\n", plain, True
        except asyncio.IncompleteReadError as exc:
            raise ConnectionError("peer closed before a full request") from exc
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return 400, b"not an HTTP/1.x request\n", plain, True
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if target != b"/metrics":
            return 404, b"only /metrics is served here\n", plain, True
        if method not in (b"GET", b"HEAD"):
            return 405, b"use GET\n", plain, True
        encode, content_type = choose_encoder(_header(head, b"accept"))
        return 200, encode(self.registry), content_type, method == b"GET"


def _header(head: bytes, name: bytes) -> str:
    """The value of header ``name`` (lower case) in a request head; "" when absent. Repeated
    headers are joined with commas, as HTTP allows for ``Accept``."""
    values = []
    for line in head.split(b"\r\n")[1:]:
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == name:
            values.append(value.strip().decode("latin-1"))
    return ",".join(values)
