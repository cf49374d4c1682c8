"""Bearer tokens: ``--auth-token-file`` and the checks of every RPC.

The token file holds one token per line. A line whose first non-blank character is ``#`` is
a comment, and blank lines are skipped; a ``#`` anywhere else belongs to the token
(``delta#Zk9...`` is one token), and a token holds no whitespace, so a comment after a token
is an error, not a shorter token. Every token must be at least :data:`MIN_TOKEN_CHARS`
printable ASCII characters (it travels in a header). A file that breaks a rule is refused
with its path and line number: at start (``hubless-serve`` exits 2) and at a re-read (the
previous tokens stay, an error is logged).

The file is re-read when its modification time, size or inode changes (checked at most once a
second), so a rotated Kubernetes secret takes effect without a restart. A file being written
is never used in part: its content must end with a newline (a last line without one is a
write in progress: the previous tokens stay until it ends), and a read during which the file
changed is dropped and done again at the next check. A file that becomes unreadable or empty
keeps the last good tokens too (an operator error must not lock every caller out, nor let
everyone in).

Every RPC needs ``authorization: Bearer <token>`` except ``grpc.health.v1.Health`` (probes)
and server reflection (unless ``--auth-reflection``): :func:`exempt` says which;
:class:`~hubless_server.transport.interceptor.HublessInterceptor` checks. Tokens are compared
with :func:`hmac.compare_digest` against every configured token, so the time taken does not
depend on how much of a token matched. A caller is named in logs and limits by
:func:`caller_id`, a short hash of its token, never the token itself.
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


MIN_TOKEN_CHARS = 16
"""The shortest token accepted: shorter ones are guessable (``openssl rand -hex 32`` makes
one of 64)."""


class TokenFileError(ValueError):
    """The token file cannot be used (unreadable, holds no token, or a line breaks a rule)."""


class TokenFileIncomplete(TokenFileError):
    """The file's last line does not end with a newline: it is still being written."""


def caller_id(token: str) -> str:
    """A short, stable name for the caller holding ``token`` (first 12 hex of its sha256)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:12]


def parse_tokens(text: str, source: str = "the token file") -> list[str]:
    """Tokens of a token file's ``text`` (see the module's rules); :class:`TokenFileError`
    naming ``source`` and the line for a line that breaks one, never echoing the token."""
    if text and not text.endswith("\n"):
        lines = text.count("\n") + 1
        raise TokenFileIncomplete(
            f"{source}: line {lines}, the last, does not end with a newline: the file is "
            "still being written, or was saved without one (add it)"
        )
    tokens = []
    for number, line in enumerate(text.split("\n")[:-1], 1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        where = f"{source}: line {number}"
        if any(c.isspace() for c in token):
            raise TokenFileError(
                f"{where}: a token cannot contain spaces; '#' starts a comment only at the "
                "start of a line (put the comment on a line of its own)"
            )
        if not (token.isascii() and token.isprintable()):
            raise TokenFileError(
                f"{where}: a token must be printable ASCII (it is sent in a header)"
            )
        if len(token) < MIN_TOKEN_CHARS:
            raise TokenFileError(
                f"{where}: the token has {len(token)} characters, fewer than the "
                f"{MIN_TOKEN_CHARS} required (make one with `openssl rand -hex 32`)"
            )
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

    def _file_stamp(self) -> tuple[int, int, int]:
        try:
            st = os.stat(self.path)
        except OSError:
            return (-1, -1, -1)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self) -> tuple[tuple[bytes, str], ...]:
        source = f"--auth-token-file {self.path}"
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenFileError(f"{source}: cannot read it ({exc})") from None
        tokens = parse_tokens(text, source)
        if not tokens:
            raise TokenFileError(
                f"{source}: no token in it (one token per line, a line starting with '#' is "
                "a comment)"
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
            try:
                tokens = self._read()
            except TokenFileIncomplete as exc:
                self._stamp = stamp  # read again once it changes (the write goes on)
                log.warning("token file not complete yet; keeping the old tokens: %s", exc)
                return
            except TokenFileError as exc:
                self._stamp = stamp
                log.error("token file changed but cannot be used; keeping the old tokens: %s", exc)
                return
            if self._file_stamp() != stamp:
                return  # changed while read: read it again at the next check
            self._stamp = stamp
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
