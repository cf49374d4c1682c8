"""Calls refused for their token: counted, logged once in a while per address, backed off.

A call without an accepted bearer token (``--auth-token-file``) ends with UNAUTHENTICATED
before anything else runs and before its body is decoded. Such refusals used to leave no
trace (10,912 wrong-token calls in 5 s: no log line, no metric). Now each one:

- is counted in ``hubless_requests_total`` (and ``hubless_errors_total``, the latency
  histogram) like any call, with its method (``unknown`` for a method this server does not
  serve, so a caller cannot grow the label set) and code (UNAUTHENTICATED, or
  RESOURCE_EXHAUSTED once backed off);
- writes an access line (``hubless_server.access``, fields as every call's, ``caller=-``, no
  token) at most once per address every :data:`WINDOW_S` seconds; the next line of that
  address says how many refusals it did not log (``suppressed``). At most
  :data:`LINES_PER_WINDOW` such lines in all per window, whatever the number of addresses;
- is backed off: an address with more than :data:`FAILURES_ALLOWED` refusals in a window of
  :data:`WINDOW_S` seconds gets RESOURCE_EXHAUSTED, reason UNAUTHENTICATED, with a
  ``RetryInfo`` of the rest of its window, for every further call without an accepted token
  until the window ends. A call with an accepted token is never refused for its address's
  failures: behind a proxy or NAT one misconfigured client must not lock the others out.
  The back-off tells well-behaved clients to stop retrying a bad token and keeps the cost of
  a refused call fixed; it does not slow down guessing (tokens of 16 characters or more do).

An address is the peer's IP (IPv6: its /64, what one host usually holds). The state is
bounded: at most :data:`MAX_ADDRESSES` addresses, the oldest forgotten first.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections.abc import Callable
from time import perf_counter
from typing import Any

import grpc

from hubless_server.core.errors import AuthBackoffError, UnauthenticatedError
from hubless_server.observability.metrics import MethodMetrics
from hubless_server.services.errors import ErrorScope, rpc_error
from hubless_server.transport.access_log import emit, log
from hubless_server.transport.caller_limit import peer_host

FAILURES_ALLOWED = 20
"""Refusals an address may have in a window before it is backed off."""
WINDOW_S = 10.0
"""The window of the back-off and of the one access line per address."""
LINES_PER_WINDOW = 100
"""Access lines of refused calls per window, all addresses together."""
MAX_ADDRESSES = 4096
"""Addresses whose refusals are remembered."""

MISSING_TOKEN = "this server requires a token: send metadata 'authorization: Bearer <token>'"
WRONG_TOKEN = "the token is not accepted by this server"


def address_of(peer: str) -> str:
    """The key of a peer: its IP address; for IPv6 the /64 it is in."""
    host = peer_host(peer)
    if ":" not in host:
        return host
    try:
        return str(ipaddress.IPv6Network(f"{host}/64", strict=False))
    except ValueError:
        return host


class _Address:
    __slots__ = ("failures", "logged", "start", "suppressed")

    def __init__(self, now: float) -> None:
        self.start = now  # of the current window
        self.failures = 0  # in the current window
        self.logged = -math.inf  # when its last access line was written
        self.suppressed = 0  # refusals since that line that wrote none


class Refusals:
    """The refusals of one server: :meth:`handler` answers a refused call."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._addresses: dict[str, _Address] = {}
        self._pruned = -math.inf
        self._lines_start = -math.inf
        self._lines = 0
        self._handlers: dict[tuple[str, bool], grpc.RpcMethodHandler] = {}
        self._statuses = {
            missing: rpc_error(UnauthenticatedError(message), ErrorScope("")).to_status()
            for missing, message in ((True, MISSING_TOKEN), (False, WRONG_TOKEN))
        }
        self._backoff_statuses: dict[int, grpc.Status] = {}

    def handler(self, method: str, missing: bool) -> grpc.RpcMethodHandler:
        """The handler refusing a call to ``method`` (a short name, or ``unknown``) that
        carries no token (``missing``) or one not accepted. Stream-stream with no
        deserializer: it fits any call shape and never decodes the body. Built once per
        method and kind."""
        key = (method, missing)
        handler = self._handlers.get(key)
        if handler is None:
            handler = self._handlers[key] = grpc.stream_stream_rpc_method_handler(
                self._refuse_with(MethodMetrics(method), missing)
            )
        return handler

    def _refuse_with(self, metrics: MethodMetrics, missing: bool) -> Any:
        status = self._statuses[missing]

        async def refuse(requests: Any, context: grpc.aio.ServicerContext) -> None:
            started = perf_counter()
            peer = context.peer()
            backoff, suppressed = self.note(peer)
            answer = status if backoff is None else self._backoff_status(backoff)
            code = answer.code.name
            seconds = perf_counter() - started
            metrics.observe(code, seconds)
            if suppressed is not None and log.isEnabledFor(logging.INFO):
                fields: dict[str, Any] = {
                    "method": metrics.method,
                    "model": "-",
                    "items": 0,
                    "code": code,
                    "ms": round(seconds * 1000, 2),
                    "peer": peer,
                    "caller": "-",
                }
                via = getattr(context, "via", None)
                if isinstance(via, str):
                    fields["via"] = via
                fields["details"] = answer.details
                fields["suppressed"] = suppressed
                emit("rpc %s %s", (metrics.method, code), fields)
            await context.abort(answer.code, answer.details, answer.trailing_metadata)

        return refuse

    def _backoff_status(self, seconds: float) -> grpc.Status:
        whole = max(1, math.ceil(seconds))
        status = self._backoff_statuses.get(whole)
        if status is None:
            error = AuthBackoffError(
                f"too many calls without an accepted token from this address (more than "
                f"{FAILURES_ALLOWED} in {WINDOW_S:g} s): retry in {whole} s with a valid "
                "token ('authorization: Bearer <token>')",
                float(whole),
            )
            status = self._backoff_statuses[whole] = rpc_error(error, ErrorScope("")).to_status()
        return status

    def count(self, peer: str) -> float | None:
        """Count a call without an accepted token from ``peer`` (gRPC form,
        ``ipv4:10.0.0.7:41234``) without logging it: the seconds left of its back-off, None
        when it is not backed off. The HTTP door counts its token failures here, so an
        address has one budget whichever door it knocks on; it logs its refusals itself."""
        return self._count(self._clock(), peer)[1]

    def _count(self, now: float, peer: str) -> tuple[_Address, float | None]:
        key = address_of(peer)
        state = self._addresses.get(key)
        if state is None:
            if len(self._addresses) >= MAX_ADDRESSES:
                self._forget(now)
            state = self._addresses[key] = _Address(now)
        if now - state.start >= WINDOW_S:
            state.start, state.failures = now, 0
        state.failures += 1
        backoff = state.start + WINDOW_S - now if state.failures > FAILURES_ALLOWED else None
        return state, backoff

    def note(self, peer: str) -> tuple[float | None, int | None]:
        """Count a refusal from ``peer``: the seconds left of its back-off (None: not backed
        off), and, when an access line is due, the refusals it did not log since its last
        one (None: no line now)."""
        now = self._clock()
        state, backoff = self._count(now, peer)
        if now - state.logged >= WINDOW_S and self._line_allowed(now):
            suppressed, state.suppressed, state.logged = state.suppressed, 0, now
            return backoff, suppressed
        state.suppressed += 1
        return backoff, None

    def _line_allowed(self, now: float) -> bool:
        if now - self._lines_start >= WINDOW_S:
            self._lines_start, self._lines = now, 0
        if self._lines >= LINES_PER_WINDOW:
            return False
        self._lines += 1
        return True

    def _forget(self, now: float) -> None:
        """Make room: drop the addresses whose window and line are both over (at most once a
        second), then the oldest ones."""
        if now - self._pruned >= 1.0:
            self._pruned = now
            done = [
                key
                for key, state in self._addresses.items()
                if now - state.start >= WINDOW_S and now - state.logged >= WINDOW_S
            ]
            for key in done:
                del self._addresses[key]
        while len(self._addresses) >= MAX_ADDRESSES:
            del self._addresses[next(iter(self._addresses))]
