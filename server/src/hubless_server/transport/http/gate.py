"""The HTTP door's gate: an ASGI middleware that decides from the request head alone, before
a byte of the body is read, then reads the body within its limits.

In this order, each refusal answered at once with the OpenAI error shape, counted and logged
by :class:`~.refusals.Refusals`:

1. ``Host`` (only when ``--host`` is a loopback address): ``localhost`` or a loopback IP, else
   ``421`` ``host_not_allowed`` (DNS rebinding: a web page whose name resolves to 127.0.0.1
   must not reach a local server);
2. ``Origin``: absent (every non-browser client), or the very ``Host`` of the request, else
   ``403`` ``origin_not_allowed`` (no CORS: a web page on another origin cannot call);
3. the bearer token (``--auth-token-file``; every route but ``/healthz`` and ``/readyz``):
   ``401`` ``unauthenticated``, as the gRPC port answers, or ``429`` ``auth_backoff`` for a
   peer in back-off;
4. ``POST`` needs ``Content-Type: application/json`` (``415`` ``unsupported_media_type``: a
   browser sends ``text/plain`` cross-site without asking first), except an empty body;
5. ``Content-Length`` over the body limit: ``413`` ``request_too_large`` without reading;
6. the body, read within the body timeout (``408`` ``body_timeout``) and counted as it comes
   (a chunked body over the limit: ``413`` as soon as it passes it); a client that hangs up
   meanwhile ends the request quietly.

A refusal that leaves a body unread closes the connection (``Connection: close``). The app
then gets the body in one piece. What escapes the app is answered ``500`` in the JSON shape
(by the app's handler) and logged with its traceback at most once a minute per distinct
error (``services.errors.log_internal``); a client gone mid-answer is not an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import ClientDisconnect

from hubless_server.core.errors import UnauthenticatedError
from hubless_server.services.errors import ErrorScope, log_internal, rpc_error
from hubless_server.transport.auth import TokenFile, bearer_token
from hubless_server.transport.http.dispatch import grpc_peer
from hubless_server.transport.http.errors import HttpError, from_status
from hubless_server.transport.http.limits import DoorLimits
from hubless_server.transport.http.refusals import Refusals
from hubless_server.transport.refusals import FAILURES_ALLOWED, WINDOW_S
from hubless_server.transport.refusals import Refusals as AuthRefusals

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
"""Routes that need no token (probes)."""
MISSING_TOKEN = "this server requires a token: send the header 'Authorization: Bearer <token>'"
WRONG_TOKEN = "the token is not accepted by this server"
JSON_TYPES = frozenset({"application/json"})

Asgi = Callable[..., Any]


@dataclass
class Refusal:
    """One refusal: the answer, and what the metrics and the log say of it."""

    error: HttpError
    reason: str
    close: bool = False

    def body(self) -> bytes:
        return json.dumps(self.error.body(), separators=(",", ":")).encode()


def refusal(
    status: int, code: str, grpc_code: str, message: str, *, close: bool = False
) -> Refusal:
    return Refusal(HttpError(status, message, code, grpc_code), code.upper(), close)


def is_loopback_host(host_header: str) -> bool:
    """A ``Host`` value (``name[:port]``, ``[v6][:port]``) that names this machine:
    ``localhost`` or a loopback address, nothing else (``evil.localhost`` is not)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _origin_netloc(origin: str) -> str | None:
    scheme, sep, rest = origin.strip().partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest:
        return None
    return rest.split("/", 1)[0].lower()


def _has_body(headers: dict[str, str]) -> bool:
    if "transfer-encoding" in headers:
        return True
    length = headers.get("content-length", "0").strip()
    return length != "0" and length != ""


class Gate:
    """The middleware (see the module docstring) around the door's Starlette ``app``."""

    def __init__(
        self,
        app: Asgi,
        *,
        limits: DoorLimits,
        tokens: TokenFile | None,
        loopback_only: bool,
        refusals: Refusals,
        auth_refusals: AuthRefusals,
        method_of: Callable[[str], str],
    ) -> None:
        self.app = app
        self.limits = limits
        self.tokens = tokens
        self.loopback_only = loopback_only
        self.refusals = refusals
        self.auth_refusals = auth_refusals
        self.method_of = method_of

    async def __call__(self, scope: dict[str, Any], receive: Asgi, send: Asgi) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        for key, value in scope.get("headers", ()):
            headers.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
        client = scope.get("client")
        peer = grpc_peer(client[0] if client else None, client[1] if client else None)
        method = self.method_of(scope["path"])
        refused = self._check_head(scope, headers, peer)
        if refused is not None:
            await self._refuse(send, refused, method, peer, _has_body(headers))
            return
        if scope["method"] == "POST":
            body = await self._read_body(receive, headers, send, method, peer)
            if body is None:
                return
            await self._run(scope, _replay(body, receive), send, method, close=False)
        else:
            await self._run(scope, receive, send, method, close=_has_body(headers))

    # ---- the head ---------------------------------------------------------------------

    def _check_head(
        self, scope: dict[str, Any], headers: dict[str, str], peer: str
    ) -> Refusal | None:
        host = headers.get("host", "")
        if self.loopback_only and host and not is_loopback_host(host):
            message = (
                f"Host {host[:80]!r} is not this machine: the server listens on loopback only "
                "and answers only to localhost or a loopback address"
            )
            return refusal(421, "host_not_allowed", "PERMISSION_DENIED", message, close=True)
        origin = headers.get("origin")
        if origin is not None and _origin_netloc(origin) != host.lower():
            message = (
                f"cross-origin request from {origin[:80]!r} refused: this server sends no CORS "
                "headers; call it from a server-side client"
            )
            return refusal(403, "origin_not_allowed", "PERMISSION_DENIED", message)
        if self.tokens is not None and scope["path"] not in OPEN_PATHS:
            refused = self._check_token(headers, peer)
            if refused is not None:
                return refused
        if scope["method"] == "POST" and _has_body(headers):
            media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if media not in JSON_TYPES:
                shown = media or "none"
                message = (
                    f"Content-Type {shown[:80]!r} is not accepted: send the body as JSON with "
                    "'Content-Type: application/json'"
                )
                return refusal(415, "unsupported_media_type", "INVALID_ARGUMENT", message)
        length = headers.get("content-length", "").strip()
        if length.isdigit() and int(length) > self.limits.body_bytes:
            return self._too_large()
        return None

    def _check_token(self, headers: dict[str, str], peer: str) -> Refusal | None:
        assert self.tokens is not None
        token = bearer_token([("authorization", headers.get("authorization", ""))])
        if token is not None and self.tokens.accepts(token):
            return None
        retry = self.auth_refusals.count(peer)  # one budget per address, both doors
        if retry is not None:
            message = (
                f"too many calls without an accepted token from this address (more than "
                f"{FAILURES_ALLOWED} in {WINDOW_S:g} s); retry after {retry:.0f} s with a "
                "valid token"
            )
            result = refusal(429, "auth_backoff", "RESOURCE_EXHAUSTED", message, close=True)
            result.error.retry_after_s = retry
            return result
        status = rpc_error(
            UnauthenticatedError(MISSING_TOKEN if token is None else WRONG_TOKEN),
            ErrorScope(method=""),
        ).to_status()
        error = from_status(status.code, status.details, status.trailing_metadata)
        return Refusal(error, "UNAUTHENTICATED")

    def _too_large(self) -> Refusal:
        limit = self.limits.body_bytes
        message = (
            f"the request body is over {limit} bytes (--max-texts x --max-text-chars x 4 "
            "+ 1 MiB); split the request"
        )
        return refusal(413, "request_too_large", "RESOURCE_EXHAUSTED", message, close=True)

    async def _refuse(
        self, send: Asgi, refused: Refusal, method: str, peer: str, body_unread: bool
    ) -> None:
        error = refused.error
        self.refusals.refused(
            method=method,
            code=error.grpc_code,
            reason=refused.reason,
            status=error.status,
            peer=peer,
        )
        body = refused.body()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        headers += [(k.lower().encode(), v.encode()) for k, v in error.headers().items()]
        if refused.close or body_unread:
            headers.append((b"connection", b"close"))
        with contextlib.suppress(OSError, ClientDisconnect):
            await send({"type": "http.response.start", "status": error.status, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})

    # ---- the body ---------------------------------------------------------------------

    async def _read_body(
        self, receive: Asgi, headers: dict[str, str], send: Asgi, method: str, peer: str
    ) -> bytes | None:
        """The whole body, or None when it was refused (answered) or the client left."""
        chunks: list[bytes] = []
        total = 0
        limit = self.limits.body_bytes
        try:
            async with asyncio.timeout(self.limits.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        log.debug("client %s left while sending its body", peer)
                        return None
                    chunk = message.get("body", b"")
                    total += len(chunk)
                    if total > limit:
                        await self._refuse(send, self._too_large(), method, peer, True)
                        return None
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            message_text = (
                f"the request body did not arrive within {self.limits.body_timeout_s:.0f} s "
                f"({total} bytes received)"
            )
            late = refusal(408, "body_timeout", "DEADLINE_EXCEEDED", message_text, close=True)
            await self._refuse(send, late, method, peer, True)
            return None

    # ---- the app ----------------------------------------------------------------------

    async def _run(
        self, scope: dict[str, Any], receive: Asgi, send: Asgi, method: str, close: bool
    ) -> None:
        state = {"started": False, "complete": False}

        async def tracked_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
                if close:
                    message = {**message, "headers": [*message.get("headers", ()), _CLOSE]}
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                state["complete"] = True
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except (ClientDisconnect, ConnectionError):
            log.debug("client left during %s", method)
        except Exception as exc:  # answered 500 by the app's handler when not started
            log_internal(exc, method)
            if state["started"] and not state["complete"]:
                with contextlib.suppress(Exception):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})


_CLOSE = (b"connection", b"close")


def _replay(body: bytes, receive: Asgi) -> Asgi:
    """A ``receive`` that hands the app the whole body once, then waits for the disconnect."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        message: dict[str, Any] = await receive()
        return message

    return replay
