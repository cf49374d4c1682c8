"""``--max-caller-concurrency``: at most N hubless RPCs in flight per caller.

One caller must not take every slot of the queue and the inference gate from the others. A
caller is its bearer token's :func:`~hubless_server.transport.auth.caller_id` when the server
checks tokens (``--auth-token-file``), else the client's IP address (the peer without its
port): a client opening several connections is still one caller, but every client behind one
proxy or NAT address counts as one too, so without tokens size the limit for what sits in
front.

A call over the limit ends at once with RESOURCE_EXHAUSTED, reason CALLER_LIMIT, the limit in
the ErrorInfo metadata and a RetryInfo; it is never queued. Only ``/hubless.v1.`` methods
count: health checks and reflection never do. A call counts from the moment its handler
starts until it returns (a stream: until its last message or its cancellation).
:class:`~hubless_server.transport.interceptor.HublessInterceptor` takes and gives back the
slots.
"""

from __future__ import annotations

import collections

import grpc

from hubless_server.core.errors import CALLER_LIMIT_RETRY_S as CALLER_LIMIT_RETRY_S
from hubless_server.core.errors import CallerLimitError
from hubless_server.services.errors import ErrorScope, abort


def peer_host(peer: str) -> str:
    """The address part of a gRPC peer: ``ipv4:10.0.0.7:41234`` -> ``10.0.0.7``,
    ``ipv6:[::1]:5000`` -> ``::1``; anything else (``unix:...``) as it is."""
    kind, sep, rest = peer.partition(":")
    if not sep or kind not in ("ipv4", "ipv6"):
        return peer
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    return host.strip("[]")


class CallerLimit:
    """Counts the in-flight calls of each caller; :meth:`acquire` says no beyond ``limit``."""

    def __init__(self, limit: int, by_token: bool) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.by_token = by_token
        self._in_flight: collections.Counter[str] = collections.Counter()

    def in_flight(self, caller: str) -> int:
        return self._in_flight[caller]

    def acquire(self, caller: str) -> bool:
        """Take a slot for ``caller``; False (nothing taken) when it has ``limit`` already."""
        if self._in_flight[caller] >= self.limit:
            return False
        self._in_flight[caller] += 1
        return True

    def release(self, caller: str) -> None:
        left = self._in_flight[caller] - 1
        if left <= 0:
            del self._in_flight[caller]
        else:
            self._in_flight[caller] = left

    async def refuse(
        self, caller: str, context: grpc.aio.ServicerContext, scope: ErrorScope
    ) -> None:
        """End a call over the limit with CALLER_LIMIT (raises)."""
        await abort(context, CallerLimitError(caller, self.limit), scope)
