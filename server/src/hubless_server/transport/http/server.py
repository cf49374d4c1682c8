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
  on rotation; client certificates required under mutual TLS), started per connection by
  :mod:`.connections` (asked for the current context at each handshake) rather than by
  uvicorn, so connections are capped and timed out from ``accept`` on;
- :meth:`_EmbeddedServer.startup` creates the listener with the protocol factory of
  :class:`~.connections.Door` (caps, head timeouts, the sweep), accepting at most
  :data:`ACCEPTS_PER_WAKEUP` connections per wakeup; keep-alive is uvicorn's own
  ``timeout_keep_alive``;
- uvicorn's own error lines (a request head it cannot parse, ...) are throttled to one per
  message a minute: a client cannot make it write a line per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from hubless_server.transport.http.connections import Door
from hubless_server.transport.http.limits import DoorLimits

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
ACCEPTS_PER_WAKEUP = 32
"""Connections accepted per event-loop wakeup (each is admitted, or evicts an idle one,
before the next ones are accepted)."""
UVICORN_LOG_WINDOW_S = 60.0


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that does not install signal handlers and listens through
    :class:`~.connections.Door`."""

    def __init__(self, config: uvicorn.Config, door: Door) -> None:
        super().__init__(config)
        self.door = door

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        factory = self.door.protocol_factory(config, self.server_state, self.lifespan.state)
        self.servers = []
        for sock in sockets or ():
            # asyncio accepts up to ``backlog`` connections per wakeup, before any of them is
            # admitted: a burst of a thousand would take a thousand descriptors at once.
            # Accept a few per wakeup, and keep the kernel's queue deep.
            self.servers.append(
                await loop.create_server(factory, sock=sock, backlog=ACCEPTS_PER_WAKEUP)
            )
            sock.listen(config.backlog)
        self.door.start()
        self.started = True


class _Throttle(logging.Filter):
    """One record per message template per ``window_s``; the next one says how many were
    held back."""

    def __init__(self, window_s: float = UVICORN_LOG_WINDOW_S) -> None:
        super().__init__()
        self.window_s = window_s
        self._seen: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = str(record.msg)[:200]
        now = time.monotonic()
        last, held = self._seen.get(key, (-self.window_s, 0))
        if now - last < self.window_s:
            self._seen[key] = (last, held + 1)
            return False
        if len(self._seen) > 256:
            self._seen.clear()
        self._seen[key] = (now, 0)
        if held and isinstance(record.args, tuple):
            record.msg = f"{record.msg} (%d more in the last minute)"
            record.args = (*record.args, held)
        return True


def _throttle_uvicorn_log() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _Throttle) for f in logger.filters):
        logger.addFilter(_Throttle())


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
        limits: DoorLimits,
        ssl_context: Callable[[], ssl.SSLContext] | None = None,
        grace_s: float = 20.0,
        on_malformed_head: Callable[[str], None] = lambda peer: None,
    ) -> None:
        """``ssl_context``: the current TLS context, asked for at each handshake (None:
        plaintext); ``on_malformed_head(peer)``: a request head uvicorn answered 400."""
        self.app = app
        self.host = host
        self.port = port
        self.limits = limits
        self._ssl = ssl_context
        self._grace_s = grace_s
        self.door = Door(limits, ssl_context, on_malformed_head)
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        try:
            sock = bind(self.host, self.port)
        except OSError as exc:
            raise OSError(f"cannot listen on {self.host}:{self.port} for HTTP: {exc}") from exc
        self.port = sock.getsockname()[1]
        _throttle_uvicorn_log()
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
            timeout_keep_alive=self.limits.keep_alive_s,  # type: ignore[arg-type]
            timeout_graceful_shutdown=max(1, round(self._grace_s)),
        )
        server = self._server = _EmbeddedServer(config, self.door)
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
        scheme = "https" if self._ssl is not None else "http"
        log.info(
            "HTTP on %s://%s:%d",
            scheme,
            self.host,
            self.port,
            extra={"fields": self.limits.log_fields()},
        )
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
        await self.door.stop()
        self._server = self._task = None
