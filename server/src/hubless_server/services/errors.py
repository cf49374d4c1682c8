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
message or in ErrorInfo metadata is cut to 64 characters (``hubless_server.redact.echo``),
and an unexpected exception is INTERNAL with its type only. The log keeps the detail, but a
traceback at most once a minute per distinct error (:class:`TracebackThrottle`): a request
that keeps failing the same way cannot flood it. A body that does not parse
(:class:`~hubless_server.wire.UndecodableRequest`) is INVALID_ARGUMENT MALFORMED_REQUEST
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
from hubless_server import metrics
from hubless_server.auth import UnauthenticatedError
from hubless_server.batching import ClosedError, ExpiredError, QueueFullError
from hubless_server.caller_limit import CALLER_LIMIT_RETRY_S, LIMIT_FLAG, CallerLimitError
from hubless_server.drain import ShuttingDownError
from hubless_server.redact import echo
from hubless_server.registry import ModelNotFoundError, TaskUnavailableError
from hubless_server.runtimes.base import InputTooLongError
from hubless_server.wire import UndecodableRequest

log = logging.getLogger(__name__)

DOMAIN = "hubless.v1"

# Suggested retry delays (RetryInfo). A full queue drains within a few batches: at the
# measured ~2-20 ms per batch of 64 short texts on CPU, half a second clears hundreds of items.
QUEUE_FULL_RETRY_S = 0.5
# Loading takes 0.1 s (tiny models) to ~10 s (bart-large from a cold page cache); a client
# polls every 2 s instead of hammering a server that is still reading weights.
MODEL_LOADING_RETRY_S = 2.0
# A draining replica will not come back: retry at once, the load balancer picks another one.
SHUTTING_DOWN_RETRY_S = 0.0

INVALID_FIELD = common_pb2.ERROR_REASON_INVALID_FIELD
INPUT_TOO_LONG = common_pb2.ERROR_REASON_INPUT_TOO_LONG
LIMIT_EXCEEDED = common_pb2.ERROR_REASON_LIMIT_EXCEEDED
MODEL_NOT_FOUND = common_pb2.ERROR_REASON_MODEL_NOT_FOUND
MODEL_LOADING = common_pb2.ERROR_REASON_MODEL_LOADING
TASK_UNAVAILABLE = common_pb2.ERROR_REASON_TASK_UNAVAILABLE
TASK_DISABLED = common_pb2.ERROR_REASON_TASK_DISABLED
QUEUE_FULL = common_pb2.ERROR_REASON_QUEUE_FULL
DEADLINE_EXPIRED = common_pb2.ERROR_REASON_DEADLINE_EXPIRED
SHUTTING_DOWN = common_pb2.ERROR_REASON_SHUTTING_DOWN
INTERNAL = common_pb2.ERROR_REASON_INTERNAL
CALLER_LIMIT = common_pb2.ERROR_REASON_CALLER_LIMIT
UNAUTHENTICATED = common_pb2.ERROR_REASON_UNAUTHENTICATED
MALFORMED_REQUEST = common_pb2.ERROR_REASON_MALFORMED_REQUEST

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
class Limit:
    """A server limit a request went over: the flag that sets it and its value."""

    flag: str
    value: int | float


class RequestError(Exception):
    """A request field is invalid: ``field`` is its path (``texts[3]``), ``reason`` an
    INVALID_ARGUMENT ErrorReason (INVALID_FIELD, INPUT_TOO_LONG, LIMIT_EXCEEDED), ``limit``
    the limit for LIMIT_EXCEEDED. The message says what is wrong and how to fix it."""

    def __init__(
        self,
        field: str,
        message: str,
        reason: int = INVALID_FIELD,
        limit: Limit | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.reason = reason
        self.limit = limit
        self.metadata = dict(metadata or {})


def limit_exceeded(field: str, message: str, flag: str, value: int | float) -> RequestError:
    """A LIMIT_EXCEEDED :class:`RequestError`; ``message`` should name ``flag``."""
    return RequestError(field, message, LIMIT_EXCEEDED, Limit(flag, value))


class TaskDisabledError(TaskUnavailableError):
    """The task is not served here (the operator's ``--tasks``)."""


class MalformedRequestError(Exception):
    """The request body did not parse as the method's request type."""

    def __init__(self, request: UndecodableRequest) -> None:
        super().__init__(request.describe())
        self.request = request


class ModelUnknownError(Exception):
    """A model name that is no model of a served task (GetModel)."""

    def __init__(self, model: str, message: str) -> None:
        super().__init__(message)
        self.model = model


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
    """The status of an exception raised while serving ``scope.method``.

    A :class:`~hubless_server.batching.PrepareError` must already have been turned into a
    :class:`RequestError` by the servicer (which knows the field its items came from).
    """
    meta = {"task": scope.task} if scope.task else {}
    model = getattr(exc, "model", "") or scope.model
    if model:
        meta["model"] = model
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    unavailable = grpc.StatusCode.UNAVAILABLE
    if isinstance(exc, RequestError):
        meta.update(exc.metadata)
        if exc.limit is not None:
            meta["limit"] = exc.limit.flag
            meta["limit_value"] = str(exc.limit.value)
        return RpcError(invalid, exc.reason, exc.message, meta, field=exc.field)
    if isinstance(exc, MalformedRequestError):
        return _malformed(exc.request, scope.method, meta)
    if isinstance(exc, InputTooLongError):
        meta |= {"tokens": str(exc.tokens), "max_input_tokens": str(exc.limit)}
        return RpcError(invalid, INPUT_TOO_LONG, str(exc), meta, field="texts")
    if isinstance(exc, (ModelNotFoundError, ModelUnknownError)):
        return RpcError(grpc.StatusCode.NOT_FOUND, MODEL_NOT_FOUND, str(exc), meta)
    if isinstance(exc, TaskDisabledError):
        return RpcError(unavailable, TASK_DISABLED, str(exc), meta | {"task": exc.task})
    if isinstance(exc, TaskUnavailableError):
        meta["task"] = exc.task
        if exc.loading:
            return RpcError(
                unavailable, MODEL_LOADING, str(exc), meta, retry_after_s=MODEL_LOADING_RETRY_S
            )
        return RpcError(unavailable, TASK_UNAVAILABLE, str(exc), meta)
    if isinstance(exc, QueueFullError):
        return RpcError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            QUEUE_FULL,
            str(exc),
            meta | {"limit": "--max-queue", "limit_value": str(exc.limit)},
            retry_after_s=QUEUE_FULL_RETRY_S,
        )
    if isinstance(exc, CallerLimitError):
        return RpcError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            CALLER_LIMIT,
            str(exc),
            meta | {"limit": LIMIT_FLAG, "limit_value": str(exc.limit)},
            retry_after_s=CALLER_LIMIT_RETRY_S,
        )
    if isinstance(exc, UnauthenticatedError):
        return RpcError(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED, str(exc), meta)
    if isinstance(exc, ExpiredError):
        return RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, DEADLINE_EXPIRED, str(exc), meta)
    if isinstance(exc, (ClosedError, ShuttingDownError)):
        return RpcError(
            unavailable, SHUTTING_DOWN, str(exc), meta, retry_after_s=SHUTTING_DOWN_RETRY_S
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


def _malformed(request: UndecodableRequest, method: str, meta: dict[str, str]) -> RpcError:
    """INVALID_ARGUMENT MALFORMED_REQUEST for a body that did not parse; counted in
    ``hubless_undecodable_requests_total{method}`` and logged as one line (no traceback:
    the parser's complaint is all there is to know)."""
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
    return RpcError(
        grpc.StatusCode.INVALID_ARGUMENT,
        MALFORMED_REQUEST,
        request.describe(),
        meta | {"message_type": request.message_type, "bytes": str(request.size)},
    )


async def reject_undecodable(
    context: grpc.aio.ServicerContext, request: UndecodableRequest, method: str, task: str = ""
) -> NoReturn:
    """End an RPC whose request body did not parse: INVALID_ARGUMENT, MALFORMED_REQUEST."""
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
