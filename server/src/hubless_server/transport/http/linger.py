"""Lingering close: a refusal sent before the request body was read still reaches the client.

The door answers an oversized or unauthenticated request from its head (413, 401, ...) and
closes without reading the body. Closing a TCP socket with unread data in it makes the kernel
send a reset, and a reset makes the client's kernel drop what it had received and not yet
read: a client that sends its whole body before reading (most HTTP clients) then sees
"connection reset" instead of the answer. As web servers do (nginx's ``lingering_close``),
the door instead shuts its write side after the answer (FIN), then reads and drops what the
client still sends, until the client closes or :data:`LINGER_S` pass, and only then aborts.

Plaintext only: under TLS the rest of the body would have to be decrypted to be dropped, so a
refused TLS connection is still aborted at once (its cost is what the door bounds first).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

LINGER_S = 2.0
"""How long a refused plaintext connection is read and dropped before it is aborted."""


class LingeringTransport:
    """A plaintext transport whose ``close()`` lingers while the request body is unread
    (``unread()`` says so); everything else is the transport's own."""

    def __init__(self, raw: asyncio.Transport, unread: Callable[[], bool]) -> None:
        self._raw = raw
        self._unread = unread
        self.lingering = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def is_closing(self) -> bool:
        return self.lingering or self._raw.is_closing()

    def close(self) -> None:
        raw = self._raw
        if self.lingering or raw.is_closing():
            return
        if not (self._unread() and raw.can_write_eof()):
            raw.close()
            return
        self.lingering = True
        protocol = raw.get_protocol()
        raw.write_eof()  # after the answer still buffered: the client reads it, then EOF
        raw.set_protocol(_Drop(raw, protocol))
        raw.resume_reading()


class _Drop(asyncio.Protocol):
    """Reads and drops until the client closes or :data:`LINGER_S` pass; then the original
    protocol hears that the connection is gone."""

    def __init__(self, raw: asyncio.Transport, protocol: asyncio.BaseProtocol) -> None:
        self._raw = raw
        self._protocol = protocol
        self._timer = asyncio.get_running_loop().call_later(LINGER_S, raw.abort)

    def data_received(self, data: bytes) -> None:
        return None

    def eof_received(self) -> bool:
        self._raw.abort()  # nothing unread is left to reset: the answer was delivered
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()
        self._protocol.connection_lost(exc)
