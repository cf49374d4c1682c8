"""What the HTTP door refuses by itself: counted, logged (rate-limited) and, for a peer that
keeps failing the token check, a back-off.

Every refusal (a missing or wrong token, a foreign ``Host`` or ``Origin``, a body too large
or too slow, a wrong ``Content-Type``, a malformed request head) is one count in
``hubless_requests_total{method,code}`` (the gRPC code the refusal stands for) and in
``hubless_refused_requests_total{method,code,reason,via="http"}``. The access log gets one
line per peer address and reason per :data:`LOG_WINDOW_S` seconds, saying how many were held
back since the last one, and at most :data:`LOG_BURST` lines per window in all: a flood of
refused calls costs counter increments, not log volume.

**Back-off**: token failures are counted per address by the transport's
:class:`hubless_server.transport.refusals.Refusals`, the same count gRPC keeps, so an address
has one budget whichever door it uses: past it (more than 20 in 10 s) a call without an
accepted token gets ``429`` (``auth_backoff``, ``Retry-After``: when the address's window
ends) instead of ``401``, and the connection is closed. A call with an accepted token is served: a
proxy or NAT address
shared with a misconfigured client does not lock the others out. Guessing a token is no
cheaper either way; what protects tokens is their length (see docs/security.md).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from hubless_server.observability.metrics import observe_refusal

log = logging.getLogger("hubless_server.access")

LOG_WINDOW_S = 10.0
LOG_BURST = 50
MAX_PEERS = 4096
"""Peer addresses remembered for the log and the back-off (the oldest is forgotten first)."""


class RefusalLog:
    """One access-log line per (peer, reason) per window, at most ``burst`` per window."""

    def __init__(
        self,
        window_s: float = LOG_WINDOW_S,
        burst: int = LOG_BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self.burst = burst
        self._clock = clock
        self._seen: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()
        self._window_start = clock()
        self._lines = 0

    def admit(self, peer: str, reason: str) -> tuple[bool, int]:
        """(log a line now?, refusals held back for this key since its last line)."""
        now = self._clock()
        if now - self._window_start >= self.window_s:
            self._window_start, self._lines = now, 0
        key = (peer, reason)
        last, held = self._seen.get(key, (-self.window_s, 0))
        if now - last < self.window_s or self._lines >= self.burst:
            self._seen[key] = (last, held + 1)
            return False, held + 1
        self._seen[key] = (now, 0)
        self._seen.move_to_end(key)
        while len(self._seen) > MAX_PEERS:
            self._seen.popitem(last=False)
        self._lines += 1
        return True, held


class Refusals:
    """Counts and logs the door's refusals (the token back-off is the transport's, shared
    with gRPC: :class:`hubless_server.transport.refusals.Refusals`)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.log = RefusalLog(clock=clock)

    def refused(
        self, *, method: str, code: str, reason: str, status: int, peer: str, detail: str = ""
    ) -> None:
        """Count one refusal and log it when the rate allows. ``peer`` is the client's
        address in gRPC form (``ipv4:10.0.0.7:41234``)."""
        observe_refusal(method, code, reason, "http")
        log_now, held = self.log.admit(_host_of(peer), reason)
        if not log_now:
            return
        fields: dict[str, object] = {
            "method": method,
            "code": code,
            "reason": reason,
            "status": status,
            "peer": peer,
            "caller": "-",
            "via": "http",
        }
        if held:
            fields["repeated"] = held
        if detail:
            fields["details"] = detail
        repeated = f" (and {held} more from this address since the last line)" if held else ""
        log.info("refused %s %s %s%s", method, code, reason, repeated, extra={"fields": fields})


def _host_of(peer: str) -> str:
    """``ipv4:10.0.0.7:41234`` -> ``ipv4:10.0.0.7``; ``ipv6:[::1]:5`` -> ``ipv6:[::1]``."""
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer
