"""A fault-injecting HTTP proxy for fetcher tests (127.0.0.1, threads, stdlib only).

It forwards every request to an upstream hub and, for requests whose path matches a rule's
``match`` (a regular expression), misbehaves the way networks and busy hubs do: answer 429/503
with ``Retry-After``, cut the connection mid-body, flip a byte, or drip bytes slower than the
client's read timeout. Each rule fires ``times`` times (``-1``: always). Every request is
logged (path, Range header, status) so tests can assert what went over the wire.

It sits in front of any upstream (the :class:`~hubless_fakehub.HubMirror` or a real hub), while
:meth:`HubMirror.add_fault <hubless_fakehub.HubMirror.add_fault>` scripts the fake hub itself.
This module's :class:`Fault` is the proxy's rule, not :class:`hubless_fakehub.faults.Fault`.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer"}


@dataclass
class Fault:
    """``kind``: ``status`` | ``cut`` | ``flip`` | ``drip`` | ``delay`` (wait ``stall`` seconds,
    then answer normally)."""

    kind: str
    match: str
    times: int = 1
    status: int = 429
    retry_after: str | None = None
    at: int = 0  # cut/flip: byte offset in the body; drip: bytes sent before stalling
    stall: float = 1.0  # drip: seconds of silence after ``at`` bytes
    fired: int = 0

    def wants(self, path: str) -> bool:
        return re.search(self.match, path) is not None and (
            self.times < 0 or self.fired < self.times
        )


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    status: int
    fault: str | None
    at: float = field(default_factory=time.monotonic)


class FaultProxy:
    """``with FaultProxy(upstream) as proxy: ... proxy.endpoint ... proxy.faults.append(...)``."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.upstream_prefix = parts.path.rstrip("/")
        self.faults: list[Fault] = []
        self.log: list[Request] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.wants(path):
                    fault.fired += 1
                    return fault
        return None

    def record(self, request: Request) -> None:
        with self._lock:
            self.log.append(request)

    def file_requests(self) -> list[Request]:
        """Requests for file contents (``/resolve/``), in order."""
        return [r for r in self.log if "/resolve/" in r.path]


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return None

        def do_HEAD(self) -> None:
            self._forward("HEAD")

        def do_GET(self) -> None:
            self._forward("GET")

        def _forward(self, method: str) -> None:
            fault = proxy.take_fault(self.path)
            rng = self.headers.get("Range")
            if fault is not None and fault.kind == "status":
                proxy.record(Request(method, self.path, rng, fault.status, "status"))
                self.send_response(fault.status)
                if fault.retry_after is not None:
                    self.send_header("Retry-After", fault.retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status, headers, body = self._upstream(method)
            proxy.record(Request(method, self.path, rng, status, fault.kind if fault else None))
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if method == "HEAD":
                return
            if fault is None or status >= 300:
                self.wfile.write(body)
                return
            if fault.kind == "flip":
                at = min(fault.at, len(body) - 1)
                body = body[:at] + bytes([body[at] ^ 0xFF]) + body[at + 1 :]
                self.wfile.write(body)
            elif fault.kind == "cut":
                self.wfile.write(body[: fault.at])
                self._abort()
            elif fault.kind == "delay":
                time.sleep(fault.stall)
                self.wfile.write(body)
            elif fault.kind == "drip":
                self.wfile.write(body[: fault.at])
                self.wfile.flush()
                time.sleep(fault.stall)
                self._abort()
            else:
                raise ValueError(f"unknown fault {fault.kind!r}")

        def _abort(self) -> None:
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

        def _upstream(self, method: str) -> tuple[int, list[tuple[str, str]], bytes]:
            conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=30)
            try:
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in _HOP and k.lower() != "host"
                }
                conn.request(method, proxy.upstream_prefix + self.path, headers=headers)
                response = conn.getresponse()
                body = response.read()
                kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP]
                return response.status, kept, body
            finally:
                conn.close()

    return Handler
