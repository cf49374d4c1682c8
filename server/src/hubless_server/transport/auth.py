"""Bearer tokens: ``--auth-token-file`` and the interceptor that checks every RPC.

The token file holds one token per line; blank lines and ``#`` comments are ignored. It is
re-read when its modification time or size changes (checked at most once a second), so a
rotated Kubernetes secret takes effect without a restart; a file that becomes unreadable or
empty keeps the last good tokens and logs a warning (an operator error must not lock every
caller out, nor let everyone in).

Every RPC needs ``authorization: Bearer <token>`` except ``grpc.health.v1.Health`` (probes)
and server reflection (unless ``--auth-reflection``): :func:`exempt` says which;
:class:`~hubless_server.transport.interceptor.HublessInterceptor` checks. Tokens are compared with
:func:`hmac.compare_digest` against every configured token, so the time taken does not depend
on how much of a token matched. A caller is named in logs and limits by :func:`caller_id`, a
short hash of its token, never the token itself.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hubless_server.core.errors import UnauthenticatedError as UnauthenticatedError

log = logging.getLogger(__name__)

HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIXES = (
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
_CHECK_INTERVAL_S = 1.0


class TokenFileError(ValueError):
    """The token file cannot be used (unreadable, or holds no token)."""


def caller_id(token: str) -> str:
    """A short, stable name for the caller holding ``token`` (first 12 hex of its sha256)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:12]


def parse_tokens(text: str) -> list[str]:
    """Tokens of a token file: one per line, blank lines and ``#`` comments skipped."""
    tokens = []
    for line in text.splitlines():
        token = line.split("#", 1)[0].strip()
        if token:
            tokens.append(token)
    return tokens


class TokenFile:
    """The accepted tokens, re-read when the file changes."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._checked = clock()
        self._stamp = self._file_stamp()
        self._tokens = self._read()
        self.reloads = 0

    def _file_stamp(self) -> tuple[int, int]:
        try:
            st = os.stat(self.path)
        except OSError:
            return (-1, -1)
        return (st.st_mtime_ns, st.st_size)

    def _read(self) -> tuple[tuple[bytes, str], ...]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenFileError(f"--auth-token-file {self.path}: cannot read it ({exc})") from None
        tokens = parse_tokens(text)
        if not tokens:
            raise TokenFileError(
                f"--auth-token-file {self.path}: no token in it (one token per line, "
                "'#' starts a comment)"
            )
        return tuple((t.encode("utf-8"), caller_id(t)) for t in tokens)

    def _maybe_reload(self) -> None:
        now = self._clock()
        if now - self._checked < _CHECK_INTERVAL_S:
            return
        with self._lock:
            self._checked = now
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                tokens = self._read()
            except TokenFileError as exc:
                log.warning(
                    "token file changed but cannot be used; keeping the old tokens: %s", exc
                )
                return
            self._tokens = tokens
            self.reloads += 1
        log.info("auth tokens reloaded", extra={"fields": {"tokens": len(tokens)}})

    @property
    def count(self) -> int:
        return len(self._tokens)

    def accepts(self, token: str) -> bool:
        """Constant-time check of ``token`` against every configured token."""
        return self.caller(token) is not None

    def caller(self, token: str) -> str | None:
        """:func:`caller_id` of ``token`` when it is accepted, else None. Every configured
        token is compared (constant time each), whichever matches; the ids are computed at
        load, not per call."""
        self._maybe_reload()
        candidate = token.encode("utf-8")
        found = None
        for known, caller in self._tokens:  # one tuple, swapped whole on a reload
            if hmac.compare_digest(candidate, known):
                found = caller
        return found


def caller_of(metadata: Any) -> str | None:
    """:func:`caller_id` of the call's bearer token, or None without one."""
    token = bearer_token(metadata)
    return caller_id(token) if token is not None else None


def bearer_token(metadata: Any) -> str | None:
    """The token of an ``authorization: Bearer <token>`` header, or None."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


def exempt(method: str, protect_reflection: bool) -> bool:
    """Methods served without a token: health, and reflection unless ``protect_reflection``."""
    if method.startswith(HEALTH_PREFIX):
        return True
    return not protect_reflection and method.startswith(REFLECTION_PREFIXES)
