"""Exceptions -> gRPC statuses with ``google.rpc`` details: the error contract, in one place.

The contract is ``hubless.v1.ErrorReason`` (common.proto). Every error status carries the
trailing metadata ``grpc-status-details-bin``: a serialized ``google.rpc.Status`` with the
same code and message and these details:

* ``ErrorInfo``: ``reason`` (the ErrorReason name without ``ERROR_REASON_``), ``domain``
  ``"hubless.v1"``, ``metadata`` with what is known: ``task``, ``model``, and for
  LIMIT_EXCEEDED the flag (``limit``, e.g. ``--max-texts``) and its value (``limit_value``).
* ``BadRequest`` on INVALID_ARGUMENT: one field violation naming the field path
  (``texts[3]``, ``candidate_labels[1]``, ``max_new_tokens``).
* ``RetryInfo`` on RESOURCE_EXHAUSTED (queue full) and on the retryable UNAVAILABLE reasons
  (model loading, shutting down). SHUTTING_DOWN also carries the trailer
  ``grpc-retry-pushback-ms: 1``, which gRPC's own retries obey: a client with a retry policy
  (the Python client's default) tries again at once, through its load balancer's next pick,
  instead of after a random backoff (up to 100 ms for the Python client's first retry).

Validation raises :class:`RequestError` (field path, reason, message, limit); the batching
core, the registry and the runtimes raise their own exceptions, and :func:`rpc_error` maps
them all. A client that reads only the code and message still gets an actionable message.

What goes back to the client never carries more than it needs: a request value echoed in a
message or in ErrorInfo metadata is cut to 64 characters (``hubless_server.core.redact.echo``),
and an unexpected exception is INTERNAL with its type only. The log keeps the detail, but a
traceback at most once a minute per distinct error (:class:`TracebackThrottle`): a request
that keeps failing the same way cannot flood it. A body that does not parse
(:class:`~hubless_server.services.wire.UndecodableRequest`) is INVALID_ARGUMENT MALFORMED_REQUEST
(:func:`reject_undecodable`), one log line, counted in ``hubless_undecodable_requests_total``.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from hubless.v1 import common_pb2
from hubless_server.core.errors import (
    CALLER_LIMIT,
    DEADLINE_EXPIRED,
    INPUT_TOO_LONG,
    INTERNAL,
    INVALID_FIELD,
    LIMIT_EXCEEDED,
    MALFORMED_REQUEST,
    MODEL_LOADING,
    MODEL_NOT_FOUND,
    QUEUE_FULL,
    SHUTTING_DOWN,
    TASK_DISABLED,
    TASK_UNAVAILABLE,
    UNAUTHENTICATED,
    HublessError,
    Limit,
    MalformedRequestError,
    ModelUnknownError,
    RequestError,
    TaskDisabledError,
    limit_exceeded,
)
from hubless_server.core.redact import echo
from hubless_server.observability import metrics
from hubless_server.services.wire import UndecodableRequest

__all__ = [
    "CALLER_LIMIT",
    "DEADLINE_EXPIRED",
    "INPUT_TOO_LONG",
    "INTERNAL",
    "INVALID_FIELD",
    "LIMIT_EXCEEDED",
    "MALFORMED_REQUEST",
    "MODEL_LOADING",
    "MODEL_NOT_FOUND",
    "QUEUE_FULL",
    "SHUTTING_DOWN",
    "TASK_DISABLED",
    "TASK_UNAVAILABLE",
    "UNAUTHENTICATED",
    "ErrorScope",
    "Limit",
    "MalformedRequestError",
    "ModelUnknownError",
    "RequestError",
    "RpcError",
    "TaskDisabledError",
    "abort",
    "limit_exceeded",
    "log_internal",
    "reject_undecodable",
    "rpc_error",
]

log = logging.getLogger(__name__)

DOMAIN = "hubless.v1"

PUSHBACK_KEY = "grpc-retry-pushback-ms"
"""The trailer by which a server tells gRPC's retry logic when to retry (gRFC A6)."""

MESSAGE_LIMIT = 2048
"""Characters of a status message: a last guard, every message is built far shorter."""
TRACEBACK_WINDOW_S = 60.0
"""An unexpected error logs its traceback at most once per this many seconds."""


def reason_name(reason: int) -> str:
    """``ERROR_REASON_QUEUE_FULL`` -> ``"QUEUE_FULL"`` (the ErrorInfo.reason string)."""
    return common_pb2.ErrorReason.Name(reason).removeprefix("ERROR_REASON_")


@dataclass(frozen=True)
class ErrorScope:
    """What the failing RPC was about: its method, the task of its service, the model it
    named (empty: none)."""

    method: str
    task: str = ""
    model: str = ""


@dataclass(frozen=True)
class RpcError:
    """A status and its details, before serialisation."""

    code: grpc.StatusCode
    reason: int
    message: str
    metadata: dict[str, str] = field(default_factory=dict)
    field: str = ""
    retry_after_s: float | None = None

    def to_proto(self) -> status_pb2.Status:
        """The ``google.rpc.Status`` sent in ``grpc-status-details-bin``; metadata values are
        cut short (they may echo the request), and so is the message, as a last guard."""
        message = echo(self.message, MESSAGE_LIMIT)
        metadata = {key: echo(value) for key, value in self.metadata.items()}
        details = [
            error_details_pb2.ErrorInfo(
                reason=reason_name(self.reason), domain=DOMAIN, metadata=metadata
            )
        ]
        if self.code is grpc.StatusCode.INVALID_ARGUMENT:
            bad = error_details_pb2.BadRequest()
            bad.field_violations.add(field=echo(self.field), description=message)
            details.append(bad)
        if self.retry_after_s is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(round(self.retry_after_s * 1e9))
            details.append(error_details_pb2.RetryInfo(retry_delay=delay))
        packed = []
        for detail in details:
            any_detail = any_pb2.Any()
            any_detail.Pack(detail)
            packed.append(any_detail)
        return status_pb2.Status(code=self.code.value[0], message=message, details=packed)

    def to_status(self) -> grpc.Status:
        """Code, message and the trailing metadata carrying the details (and, for
        SHUTTING_DOWN, the retry pushback)."""
        status: grpc.Status = rpc_status.to_status(self.to_proto())
        if self.reason == SHUTTING_DOWN and self.retry_after_s is not None:
            # At least 1 ms: with a pushback of 0 ms grpcio 1.85's core never sends the retry
            # (the call hangs to its deadline; measured), with 1 ms it retries at once.
            pushback = (PUSHBACK_KEY, str(max(1, round(self.retry_after_s * 1000))))
            return _Status(status.code, status.details, (*status.trailing_metadata, pushback))
        return status


class _StatusFields(NamedTuple):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, Any], ...]


class _Status(_StatusFields, grpc.Status):
    """A ``grpc.Status``, as ``rpc_status.to_status`` builds it, with more trailers."""


def rpc_error(exc: BaseException, scope: ErrorScope) -> RpcError:
    """The status of an exception raised while serving ``scope.method``: its row in
    ``hubless_server.core.errors.STATUS``; any other exception is INTERNAL (logged).

    A :class:`~hubless_server.core.errors.PrepareError` must already have been turned into a
    :class:`RequestError` by the servicer (which knows the field its items came from).
    """
    meta = {"task": scope.task} if scope.task else {}
    model = getattr(exc, "model", "") or scope.model
    if model:
        meta["model"] = model
    if isinstance(exc, HublessError):
        status = exc.status()
        meta |= exc.status_metadata()
        return RpcError(
            grpc.StatusCode[status.code],
            status.reason,
            str(exc),
            meta,
            field=exc.status_field,
            retry_after_s=status.retry_after_s,
        )
    log_internal(exc, scope.method)
    return RpcError(
        grpc.StatusCode.INTERNAL,
        INTERNAL,
        f"internal error ({type(exc).__name__}); the server logged the details",
        meta,
    )


async def abort(
    context: grpc.aio.ServicerContext, exc: BaseException, scope: ErrorScope
) -> NoReturn:
    """End the RPC with the status of ``exc`` and its details."""
    status = rpc_error(exc, scope).to_status()
    await context.abort(status.code, status.details, status.trailing_metadata)


def _count_malformed(request: UndecodableRequest, method: str) -> None:
    """Count a body that did not parse in ``hubless_undecodable_requests_total{method}`` and
    log it as one line (no traceback: the parser's complaint is all there is to know)."""
    metrics.UNDECODABLE.labels(method).inc()
    log.warning(
        "undecodable %s request to %s: %s",
        request.message_type,
        method,
        request.error,
        extra={
            "fields": {
                "method": method,
                "message_type": request.message_type,
                "bytes": request.size,
            }
        },
    )


async def reject_undecodable(
    context: grpc.aio.ServicerContext, request: UndecodableRequest, method: str, task: str = ""
) -> NoReturn:
    """End an RPC whose request body did not parse: INVALID_ARGUMENT, MALFORMED_REQUEST."""
    _count_malformed(request, method)
    await abort(context, MalformedRequestError(request), ErrorScope(method, task))


class TracebackThrottle:
    """At most one traceback per distinct error per ``window_s``.

    An error is its type, the first line of its message and where it was raised (the
    innermost frame). :meth:`admit` says whether to log the traceback now and how many
    repeats were held back since the last one; at most ``max_errors`` distinct errors are
    remembered (the oldest is forgotten first).
    """

    def __init__(
        self,
        window_s: float = TRACEBACK_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        max_errors: int = 512,
    ) -> None:
        self.window_s = window_s
        self._clock = clock
        self._max = max_errors
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str, str], tuple[float, int]] = {}

    @staticmethod
    def key(exc: BaseException) -> tuple[str, str, str]:
        lines = str(exc).strip().splitlines()
        frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""
        return type(exc).__qualname__, (lines[0][:200] if lines else ""), where

    def admit(self, exc: BaseException) -> tuple[bool, int]:
        """(log the traceback now?, repeats held back since the last traceback)."""
        key = self.key(exc)
        now = self._clock()
        with self._lock:
            logged_at, held = self._seen.pop(key, (None, 0))
            if logged_at is not None and now - logged_at < self.window_s:
                self._seen[key] = (logged_at, held + 1)
                return False, held + 1
            self._seen[key] = (now, 0)
            while len(self._seen) > self._max:
                del self._seen[next(iter(self._seen))]
            return True, held


_TRACEBACKS = TracebackThrottle()


def log_internal(
    exc: BaseException, method: str, throttle: TracebackThrottle | None = None
) -> None:
    """Log an unexpected error of ``method``: with its traceback the first time, then only the
    count of its repeats, on the next line with a traceback (once ``window_s`` passed)."""
    throttle = throttle or _TRACEBACKS
    log_now, held = throttle.admit(exc)
    if not log_now:
        return
    repeated = f" (repeated {held} times since the last traceback)" if held else ""
    log.error(
        "internal error in %s: %s%s",
        method,
        type(exc).__name__,
        repeated,
        exc_info=exc,
        extra={"fields": {"method": method, "repeated": held}},
    )
