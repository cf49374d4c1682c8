"""Bearer tokens: ``--auth-token-file`` and the interceptor that checks every RPC.

The token file holds one token per line; blank lines and ``#`` comments are ignored. It is
re-read when its modification time or size changes (checked at most once a second), so a
rotated Kubernetes secret takes effect without a restart; a file that becomes unreadable or
empty keeps the last good tokens and logs a warning (an operator error must not lock every
caller out, nor let everyone in).

Every RPC needs ``authorization: Bearer <token>`` except ``grpc.health.v1.Health`` (probes)
and server reflection (unless ``--auth-reflection``). Tokens are compared with
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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from hubless_server.core.errors import UnauthenticatedError
from hubless_server.services.errors import ErrorScope
from hubless_server.services.errors import abort as abort_with

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

    def _read(self) -> list[bytes]:
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
        return [t.encode("utf-8") for t in tokens]

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
        self._maybe_reload()
        candidate = token.encode("utf-8")
        ok = False
        for known in self._tokens:
            ok |= hmac.compare_digest(candidate, known)
        return ok


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


def _deny(message: str) -> grpc.RpcMethodHandler:
    """A handler that answers UNAUTHENTICATED with the error details of every hubless error
    (ErrorInfo reason UNAUTHENTICATED). It is stream-stream with no deserializer, so it fits
    any call shape and never decodes a body from an unauthenticated caller."""

    async def abort(requests: Any, context: grpc.aio.ServicerContext) -> None:
        await abort_with(context, UnauthenticatedError(message), ErrorScope(method=""))

    return grpc.stream_stream_rpc_method_handler(abort)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Rejects RPCs without an accepted bearer token with UNAUTHENTICATED."""

    def __init__(self, tokens: TokenFile, protect_reflection: bool = False) -> None:
        self.tokens = tokens
        self.protect_reflection = protect_reflection
        self._missing = _deny(
            "this server requires a token: send metadata 'authorization: Bearer <token>'"
        )
        self._wrong = _deny("the token is not accepted by this server")

    def exempt(self, method: str) -> bool:
        if method.startswith(HEALTH_PREFIX):
            return True
        return not self.protect_reflection and method.startswith(REFLECTION_PREFIXES)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method or ""
        if self.exempt(method):
            return await continuation(handler_call_details)
        token = bearer_token(handler_call_details.invocation_metadata)
        if token is None:
            return self._missing
        if not self.tokens.accepts(token):
            return self._wrong
        return await continuation(handler_call_details)
