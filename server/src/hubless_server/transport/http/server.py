"""``--http-port``: uvicorn serving the HTTP door on the server's own event loop.

Why uvicorn and Starlette: both are small, widely used and maintained, pure-Python over h11,
and run inside an existing asyncio loop; the door then shares the loop, the batching queues
and the servicers with gRPC, in one process. uvicorn is used as a library:

- the listening socket is bound here (``--http-port 0`` picks a free port, known at once,
  and a port in use fails the start like the gRPC port does);
- ``lifespan="off"``, ``loop="none"`` (the running loop), no uvicorn logging config and no
  uvicorn access log (the gRPC access log writes one line per call, ``via=http``);
- :class:`_EmbeddedServer` leaves the process's signals alone: ``uvicorn.Server.serve`` would
  take SIGINT/SIGTERM over and re-raise them when it ends, while ``hubless-serve`` owns them
  (its drain stops this server too);
- ``proxy_headers=False``: the client is the TCP peer, as for gRPC (an ``X-Forwarded-For``
  must not choose the caller of the per-caller limit);
- TLS with the ``ssl.SSLContext`` of the gRPC certificate (``TLSFiles.ssl_context``, renewed
  on rotation; client certificates required under mutual TLS).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import uvicorn

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that does not install signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv6 for an address with ``:``)."""
    host = host.strip("[]")
    if ":" in host:
        return socket.create_server(
            (host, port), family=socket.AF_INET6, dualstack_ipv6=host == "::", backlog=2048
        )
    return socket.create_server((host, port), family=socket.AF_INET, backlog=2048)


class HttpServer:
    """The ASGI ``app`` on ``host:port``; ``await start()`` returns the bound port."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        grace_s: float = 20.0,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._ssl = ssl_context
        self._grace_s = grace_s
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        try:
            sock = bind(self.host, self.port)
        except OSError as exc:
            raise OSError(f"cannot listen on {self.host}:{self.port} for HTTP: {exc}") from exc
        self.port = sock.getsockname()[1]
        context = self._ssl
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            loop="none",
            http="h11",
            ws="none",
            log_config=None,
            log_level="warning",
            access_log=False,
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=max(1, round(self._grace_s)),
            ssl_context_factory=(lambda _config, _default: context) if context else None,
        )
        server = self._server = _EmbeddedServer(config)
        self._task = asyncio.get_running_loop().create_task(
            server.serve(sockets=[sock]), name="hubless-http"
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while not server.started:
            if self._task.done():
                sock.close()
                self._task.result()  # raises what failed the start
                raise OSError(f"the HTTP server on port {self.port} did not start")
            if loop.time() > deadline:
                await self.stop()
                raise OSError(f"the HTTP server on port {self.port} did not start in time")
            await asyncio.sleep(0.01)
        scheme = "https" if context else "http"
        log.info("HTTP on %s://%s:%d", scheme, self.host, self.port)
        return self.port

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish within the grace period, then close
        what is left."""
        server, task = self._server, self._task
        if server is None or task is None:
            return
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=self._grace_s + 5)
        except (TimeoutError, Exception):
            server.force_exit = True
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self._server = self._task = None
