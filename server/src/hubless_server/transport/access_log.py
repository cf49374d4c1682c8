"""Access log and RPC metrics: one structured line and one set of metric updates per RPC.

:class:`~hubless_server.transport.interceptor.HublessInterceptor` calls :meth:`AccessLog.done`
when a ``hubless.v1`` call ends (its status, latency, the model that answered). Services add
what only they know (the model that answered, the number of items) to the RPC's
:class:`~hubless_server.observability.request_info.AccessInfo` with
:func:`~hubless_server.observability.request_info.note`. With ``callers=True`` (the server checks
bearer tokens) each line names the caller by :func:`~hubless_server.transport.auth.caller_id` of
its token, never the token itself; otherwise ``caller`` is ``-``. With tracing on,
``trace_id`` (a callable, read while the RPC's span is current) adds the ``trace_id`` field and the
latency histogram's
exemplar. A call that came through the HTTP door (its context says ``via = "http"``) has
``via=http``.

The metrics are counted whatever the log level; the line's fields are built only when the
``hubless_server.access`` logger emits INFO, and the record is made without the stack walk
``logging`` does to name the calling function (see :func:`emit`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import grpc

from hubless_server.core.redact import echo
from hubless_server.observability.metrics import MethodMetrics
from hubless_server.observability.request_info import AccessInfo

log = logging.getLogger("hubless_server.access")


def short_name(method: str) -> str:
    """``/hubless.v1.EmbeddingsService/Embed`` -> ``EmbeddingsService.Embed``: the ``method``
    of log lines and metric labels."""
    service, _, name = method.rpartition("/")
    return service.rpartition(".")[2] + "." + name


def code_of(context: grpc.aio.ServicerContext, exc: BaseException | None) -> str:
    """The status code name a call ended with, from its context and what it raised."""
    if isinstance(exc, GeneratorExit):  # the client went away while a stream was open
        return "CANCELLED"
    if isinstance(exc, asyncio.CancelledError):
        remaining = context.time_remaining()
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    code = context.code()
    if code is None:
        return "UNKNOWN" if exc is not None and not isinstance(exc, grpc.aio.AbortError) else "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return str(code)


class AccessLog:
    """Ends a call: its metrics, then its line (only when INFO is emitted)."""

    def __init__(
        self, callers: bool = False, trace_id: Callable[[], str | None] | None = None
    ) -> None:
        self.callers = callers
        self._trace_id = trace_id

    def done(
        self,
        metrics: MethodMetrics,
        info: AccessInfo,
        context: grpc.aio.ServicerContext,
        peer: str,
        error: BaseException | None,
        seconds: float,
        messages: int | None = None,
    ) -> None:
        code = code_of(context, error)
        trace_id = self._trace_id() if self._trace_id is not None else None
        metrics.observe(code, seconds, trace_id)
        if not log.isEnabledFor(logging.INFO):
            return
        method = metrics.method
        fields: dict[str, Any] = {
            "method": method,
            "model": echo(info.model) or "-",  # the request's, until a model answers
            "items": info.items,
            "code": code,
            "ms": round(seconds * 1000, 2),
            "peer": peer,
            "caller": info.caller,
        }
        if messages is not None:
            fields["messages"] = messages
        via = getattr(context, "via", None)
        if isinstance(via, str):
            fields["via"] = via
        if trace_id:
            fields["trace_id"] = trace_id
        if code not in ("OK", "CANCELLED") and context.details():
            fields["details"] = context.details()
        emit("rpc %s %s", (method, code), fields)


def emit(message: str, args: tuple[Any, ...], fields: dict[str, Any]) -> None:
    """``log.info(message, *args, extra={"fields": fields})`` without the caller lookup
    (a walk up the stack per record that no format of ours prints): one access line is
    written per call."""
    log.handle(
        log.makeRecord(
            log.name, logging.INFO, __file__, 0, message, args, None, None, {"fields": fields}
        )
    )
