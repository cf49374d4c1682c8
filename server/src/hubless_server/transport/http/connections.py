"""The HTTP door's connections: caps, idle eviction, head timeouts and TLS handshakes.

uvicorn's h11 protocol closes a kept-alive connection that stays silent, and nothing else: a
connection that sends nothing, or half a request head, or never finishes a TLS handshake
stays open, and enough of them exhaust the process's file descriptors (then gRPC and the
health port fail too). Here every accepted TCP connection is tracked from ``accept``:

- :class:`ConnectionTracker` admits it under the caps (total and per peer address): a new
  connection over a cap aborts the oldest *idle* connection (waiting for a request head), of
  its own address first; when none is idle the new one is refused (plaintext: a ``503`` and
  close; TLS: aborted before the handshake). A request in progress is never evicted.
- a sweep every :data:`~.limits.SWEEP_INTERVAL_S` aborts connections waiting longer than the
  head timeout for a request head (counted from the accept, the TLS handshake included, or
  from the previous answer), whatever they trickle in, and connections whose close the client
  never completes (a TLS shutdown left unanswered).
- TLS is started per connection (:meth:`asyncio.loop.start_tls`) after admission, so a
  connection is tracked, capped and timed out during its handshake too; the handshake's own
  timeout is the head timeout.

Aborting (not closing) frees the descriptor at once. Each close the server decides is
counted in ``hubless_http_connections_closed_total{reason}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from hubless_server.observability import metrics
from hubless_server.transport.http.dispatch import grpc_peer
from hubless_server.transport.http.limits import SWEEP_INTERVAL_S, DoorLimits
from hubless_server.transport.http.linger import LingeringTransport

log = logging.getLogger(__name__)

_REFUSED_BODY = (
    b'{"error":{"message":"too many open connections; retry","type":"service_unavailable_error",'
    b'"code":"connection_limit","param":null,"grpc_code":"UNAVAILABLE"}}'
)
REFUSED_ANSWER = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"retry-after: 1\r\nconnection: close\r\ncontent-length: "
    + str(len(_REFUSED_BODY)).encode()
    + b"\r\n\r\n"
    + _REFUSED_BODY
)
"""What a plaintext connection over a cap gets (none idle to close for it)."""


@dataclass(eq=False)
class Connection:
    """One accepted TCP connection."""

    raw: asyncio.Transport
    """The TCP transport: aborting it frees the descriptor."""
    peer: str
    waiting_since: float | None
    """Waiting for a request head since then; None while a request is in progress."""
    closing_since: float | None = None
    protocol: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class ConnectionTracker:
    """The open connections of one door, their caps and timeouts."""

    def __init__(self, limits: DoorLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._all: dict[Connection, None] = {}
        self._idle: OrderedDict[Connection, None] = OrderedDict()
        self._idle_by_peer: dict[str, OrderedDict[Connection, None]] = {}
        self._by_peer: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._all)

    def tracks(self, conn: Connection) -> bool:
        return conn in self._all

    def peers(self) -> dict[str, int]:
        return dict(self._by_peer)

    def admit(self, raw: asyncio.Transport) -> Connection | None:
        """Track a new connection; None when it must be refused (over a cap, none idle)."""
        peer = peer_host(raw)
        if self._by_peer[peer] >= self.limits.max_per_peer and not self._evict_oldest(
            self._idle_by_peer.get(peer), "evicted_peer"
        ):
            self._count("refused")
            return None
        if len(self._all) >= self.limits.max_connections and not self._evict_oldest(
            self._idle, "evicted_total"
        ):
            self._count("refused")
            return None
        conn = Connection(raw, peer, None)
        self._all[conn] = None
        self._by_peer[peer] += 1
        self.set_idle(conn)
        metrics.HTTP_CONNECTIONS.set(len(self._all))
        return conn

    def set_idle(self, conn: Connection) -> None:
        """``conn`` now waits for a request head (its head timeout starts now)."""
        if conn not in self._all:
            return
        conn.waiting_since = self._clock()
        self._idle[conn] = None
        self._idle.move_to_end(conn)
        peer_idle = self._idle_by_peer.setdefault(conn.peer, OrderedDict())
        peer_idle[conn] = None
        peer_idle.move_to_end(conn)

    def set_busy(self, conn: Connection) -> None:
        """``conn`` has a request in progress: never evicted nor timed out here."""
        conn.waiting_since = None
        self._unidle(conn)

    def closed(self, conn: Connection) -> None:
        """``conn`` is gone (idempotent)."""
        if conn not in self._all:
            return
        del self._all[conn]
        self._unidle(conn)
        self._by_peer[conn.peer] -= 1
        if self._by_peer[conn.peer] <= 0:
            del self._by_peer[conn.peer]
        metrics.HTTP_CONNECTIONS.set(len(self._all))

    def _unidle(self, conn: Connection) -> None:
        self._idle.pop(conn, None)
        peer_idle = self._idle_by_peer.get(conn.peer)
        if peer_idle is not None:
            peer_idle.pop(conn, None)
            if not peer_idle:
                del self._idle_by_peer[conn.peer]

    def _evict_oldest(self, idle: OrderedDict[Connection, None] | None, reason: str) -> bool:
        if not idle:
            return False
        oldest = next(iter(idle))
        self.abort(oldest, reason)
        return True

    def abort(self, conn: Connection, reason: str) -> None:
        """Close ``conn`` at once (descriptor freed) and forget it."""
        self._count(reason)
        self.closed(conn)
        with contextlib.suppress(Exception):
            conn.raw.abort()

    def sweep(self) -> None:
        """Abort connections past the head timeout, and closes that do not finish."""
        now = self._clock()
        head = self.limits.head_timeout_s
        while self._idle:
            oldest = next(iter(self._idle))
            if oldest.waiting_since is None or now - oldest.waiting_since <= head:
                break
            self.abort(oldest, "head_timeout")
        for conn in list(self._all):
            if not conn.raw.is_closing():
                continue
            if conn.closing_since is None:
                conn.closing_since = now
            elif now - conn.closing_since > self.limits.close_grace_s:
                self.abort(conn, "close_timeout")

    def abort_all(self) -> None:
        for conn in list(self._all):
            self.closed(conn)
            with contextlib.suppress(Exception):
                conn.raw.abort()

    @staticmethod
    def _count(reason: str) -> None:
        metrics.HTTP_CONNECTIONS_CLOSED.labels(reason).inc()


def peer_host(transport: asyncio.BaseTransport) -> str:
    """The client's IP address (without port)."""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple | list) and peer:
        return str(peer[0])
    return str(peer or "")


class DoorProtocol(H11Protocol):
    """uvicorn's h11 protocol, tracked: admitted under the caps (plaintext), and telling the
    tracker when a request starts (busy) and when its answer is done (idle again)."""

    door: Door

    def __init__(self, *args: Any, conn: Connection | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tracked = conn
        self._refused = False
        self._early: list[bytes] | None = []
        """TLS data that arrived with the end of the handshake, before ``start_tls``
        returned the transport (then ``connection_made``)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if self.tracked is None:  # plaintext: admitted here; TLS: by TlsHandshake
            conn = self.door.tracker.admit(transport)
            if conn is None:
                self._refused = True
                transport.write(REFUSED_ANSWER)
                transport.close()
                return
            self.tracked = conn
        self.tracked.protocol = self
        if transport.get_extra_info("sslcontext") is None and transport.can_write_eof():
            # a refusal answered before the body was read must still reach the client
            transport = LingeringTransport(  # type: ignore[assignment]
                transport, lambda: self.conn.their_state is h11.SEND_BODY
            )
        super().connection_made(transport)
        early, self._early = self._early, None
        if early:
            self.data_received(b"".join(early))

    def data_received(self, data: bytes) -> None:
        if self._early is not None:
            self._early.append(data)
            return
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.tracked is not None:
            self.door.tracker.closed(self.tracked)
        if self._refused or self.transport is None:
            return
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        if self.flow is not None:
            super().pause_writing()

    def resume_writing(self) -> None:
        if self.flow is not None:
            super().resume_writing()

    def handle_events(self) -> None:
        super().handle_events()
        self._sync()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        conn = self.tracked
        if (
            conn is not None
            and self.transport is not None
            and self.transport.is_closing()
            and not getattr(self.transport, "lingering", False)
            and self.conn.their_state is h11.SEND_BODY
            and not conn.raw.get_write_buffer_size()
        ):
            # Answered and closing with the body still coming (a refusal): abort now. A TLS
            # close would read and decrypt the rest while it waits for the client's
            # close_notify; the answer is already handed to the kernel.
            self.door.tracker.closed(conn)
            conn.raw.abort()
            return
        self._sync()

    def send_400_response(self, msg: str) -> None:
        """A request head h11 cannot parse (uvicorn answers 400 and closes): counted."""
        host, port = self.client if self.client else (None, None)
        self.door.malformed_head(grpc_peer(host, port))
        super().send_400_response(msg)

    def _sync(self) -> None:
        conn = self.tracked
        if conn is None or self.transport is None or self.transport.is_closing():
            return
        busy = self.cycle is not None and not self.cycle.response_complete
        if busy and conn.waiting_since is not None:
            self.door.tracker.set_busy(conn)
        elif not busy and conn.waiting_since is None:
            self.door.tracker.set_idle(conn)


class TlsHandshake(asyncio.Protocol):
    """The protocol of a TLS connection until its handshake is done: admitted at once, then
    :meth:`asyncio.loop.start_tls` with the door's current certificate, then the h11
    protocol takes the TLS transport."""

    def __init__(self, door: Door, make_protocol: Callable[[Connection], DoorProtocol]) -> None:
        self.door = door
        self._make_protocol = make_protocol
        self._conn: Connection | None = None
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw: asyncio.Transport = transport  # type: ignore[assignment]
        raw.pause_reading()  # the ClientHello waits in the kernel for start_tls
        conn = self.door.tracker.admit(raw)
        if conn is None:
            raw.abort()
            return
        self._conn = conn
        self._task = asyncio.get_running_loop().create_task(self._handshake(raw, conn))

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection closed before start_tls took it over."""
        if self._conn is not None:
            self.door.tracker.closed(self._conn)
        if self._task is not None:
            self._task.cancel()

    async def _handshake(self, raw: asyncio.Transport, conn: Connection) -> None:
        protocol = self._make_protocol(conn)
        loop = asyncio.get_running_loop()
        limits = self.door.tracker.limits
        try:
            tls = await loop.start_tls(
                raw,
                protocol,
                self.door.ssl_context(),
                server_side=True,
                ssl_handshake_timeout=limits.head_timeout_s,
                ssl_shutdown_timeout=limits.close_grace_s,
            )
        except (OSError, ssl.SSLError, TimeoutError, ValueError, RuntimeError):
            tls = None
        if tls is None or raw.is_closing():
            if self.door.tracker.tracks(conn):
                self.door.tracker.abort(conn, "tls_handshake")
            return
        protocol.connection_made(tls)  # type: ignore[arg-type]


class Door:
    """The HTTP door's connection side: the tracker, the protocol factory for uvicorn's
    server, the sweep task and the hook for malformed request heads."""

    def __init__(
        self,
        limits: DoorLimits,
        ssl_context: Callable[[], ssl.SSLContext] | None,
        malformed_head: Callable[[str], None],
    ) -> None:
        self.tracker = ConnectionTracker(limits)
        self._ssl = ssl_context
        self.malformed_head = malformed_head
        self._sweeper: asyncio.Task[None] | None = None

    def ssl_context(self) -> ssl.SSLContext:
        assert self._ssl is not None
        return self._ssl()

    def protocol_factory(
        self, config: Any, server_state: Any, app_state: dict[str, Any]
    ) -> Callable[[], asyncio.Protocol]:
        """What ``loop.create_server`` calls per accepted connection."""
        protocol_class = type("HublessDoorProtocol", (DoorProtocol,), {"door": self})

        def make(conn: Connection | None = None) -> DoorProtocol:
            return protocol_class(
                config=config, server_state=server_state, app_state=app_state, conn=conn
            )

        if self._ssl is None:
            return make
        return lambda: TlsHandshake(self, make)

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(
            self._sweep(), name="hubless-http-sweep"
        )

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                self.tracker.sweep()
            except Exception:  # the sweep must never end
                log.exception("HTTP connection sweep failed")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        self.tracker.abort_all()
