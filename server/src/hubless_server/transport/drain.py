"""The drain window: after SIGTERM/SIGINT, refuse new hubless RPCs with a retryable status.

:meth:`HublessServer.stop <hubless_server.app.HublessServer.stop>` first turns every health
status NOT_SERVING and :meth:`DrainWindow.start` s; for ``--drain-delay`` seconds the
server keeps its listeners open and keeps accepting connections and calls, but each *new*
``/hubless.v1.`` call ends at once with UNAVAILABLE, ``ErrorInfo`` reason SHUTTING_DOWN and a
``RetryInfo`` of 0 s (retry elsewhere, now), while the calls already in a handler run to the
end. Health and reflection are still answered. Only then does ``grpc.aio``'s ``stop(grace)``
close the listener and send GOAWAY.

Why not ``stop(grace)`` at once: gRPC's own shutdown answers nothing a client can act on. It
cancels the calls its core has received but not yet handed to the application (the client
sees CANCELLED, which is never retried; the soak saw 6 such calls sent just after SIGTERM),
and refuses the rest with UNAVAILABLE without details; and a load balancer that has not yet
seen the pod leave its endpoints keeps sending new connections to a closed port. The drain
window answers every call that reaches the process with the documented, retryable status,
and gives the balancers ``--drain-delay`` seconds to move away (docs/deploy.md).

:class:`~hubless_server.transport.interceptor.HublessInterceptor` checks the window after
the access log has started the call's line and span (a refused call has its access line,
code UNAVAILABLE, and its span) and before the per-caller limit (a refusal takes no slot).
The HTTP door runs the same interceptor, so its calls get 503 with ``Retry-After: 0``.
"""

from __future__ import annotations

import grpc

from hubless_server.core.errors import ShuttingDownError
from hubless_server.services.errors import ErrorScope, abort

PREFIX = "/hubless.v1."


MESSAGE = (
    "the server is shutting down and takes no new calls: retry now, on another replica "
    "(the load balancer picks one)"
)


class DrainWindow:
    """Whether new ``/hubless.v1.`` calls are refused (:meth:`start` was called);
    ``refused`` counts them. A call counts as new until its handler starts: one already
    running is never touched."""

    def __init__(self) -> None:
        self.draining = False
        self.refused = 0

    def start(self) -> None:
        """From now on, refuse new calls."""
        self.draining = True

    async def refuse(self, context: grpc.aio.ServicerContext, scope: ErrorScope) -> None:
        """End a new call with SHUTTING_DOWN (raises)."""
        self.refused += 1
        await abort(context, ShuttingDownError(MESSAGE), scope)
