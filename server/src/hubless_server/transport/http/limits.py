"""The HTTP door's limits, computed once from the settings at start.

- **Body size**: ``--max-texts`` texts of ``--max-text-chars`` characters each, at
  :data:`BYTES_PER_CHAR` bytes a character (the most UTF-8 takes), plus
  :data:`BODY_ALLOWANCE` for everything else a request holds (JSON syntax, model name,
  zero-shot labels and template, options). With the defaults: 64 x 20,000 x 4 + 1 MiB =
  6,168,576 bytes (5.9 MiB). A bigger body is refused with ``413`` before it is read: by its
  ``Content-Length``, or when a chunked body passes the limit. A request that is valid under
  the limits fits, unless its text is sent as ``\\uXXXX`` escapes (6 bytes a character) and
  near every limit at once; ``413`` then says to split the request.
- **Timeouts**: a request head must arrive (TLS handshake included) within
  :data:`HEAD_TIMEOUT_S` of the connection opening or of the previous answer, and its body
  within :data:`BODY_TIMEOUT_S` of the head; an idle kept-alive connection is closed after
  :data:`KEEP_ALIVE_S`.
- **Connections**: ``--http-max-connections`` open at once (0: a quarter of the open-files
  limit, between :data:`MIN_CONNECTIONS` and :data:`MAX_AUTO_CONNECTIONS`) and
  ``--http-max-connections-per-peer`` from one client address (0: half of that). A new
  connection over a cap closes the oldest idle one (waiting for a request head), of its
  address first; when none is idle, the new one is refused.
- **Failed tokens**: counted per address with gRPC's (:mod:`hubless_server.transport.refusals`).
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

from hubless_server.core.config import Settings

BYTES_PER_CHAR = 4
"""The most bytes one character takes in UTF-8."""
BODY_ALLOWANCE = 1024 * 1024
"""Bytes allowed on top of the texts: JSON syntax, names, labels, options."""
HEAD_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0
KEEP_ALIVE_S = 5.0
CLOSE_GRACE_S = 5.0
"""A connection the server closes is aborted if it is not gone after this long (an answer
the client does not read, a TLS shutdown it never answers)."""
SWEEP_INTERVAL_S = 0.5
MIN_CONNECTIONS = 64
MAX_AUTO_CONNECTIONS = 4096


def body_limit(settings: Settings) -> int:
    """The largest request body in bytes (see the module docstring)."""
    return settings.max_texts * settings.max_text_chars * BYTES_PER_CHAR + BODY_ALLOWANCE


def open_files_limit() -> int:
    """The soft RLIMIT_NOFILE now (after ``hubless-serve`` raised it to the hard limit)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


@dataclass(frozen=True)
class DoorLimits:
    """Every limit of one HTTP door."""

    body_bytes: int
    max_connections: int
    max_per_peer: int
    head_timeout_s: float = HEAD_TIMEOUT_S
    body_timeout_s: float = BODY_TIMEOUT_S
    keep_alive_s: float = KEEP_ALIVE_S
    close_grace_s: float = CLOSE_GRACE_S

    @classmethod
    def from_settings(cls, settings: Settings, open_files: int | None = None) -> DoorLimits:
        files = open_files if open_files is not None else open_files_limit()
        total = settings.http_max_connections or min(
            MAX_AUTO_CONNECTIONS, max(MIN_CONNECTIONS, files // 4)
        )
        per_peer = settings.http_max_connections_per_peer or max(1, total // 2)
        return cls(body_limit(settings), total, min(per_peer, total))

    def log_fields(self) -> dict[str, float | int]:
        return {
            "max_body_bytes": self.body_bytes,
            "max_connections": self.max_connections,
            "max_connections_per_peer": self.max_per_peer,
            "head_timeout_s": self.head_timeout_s,
            "body_timeout_s": self.body_timeout_s,
            "keep_alive_s": self.keep_alive_s,
        }
