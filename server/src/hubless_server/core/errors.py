"""Every exception a request can end with, and the status each one maps to: one table.

The batching core, the registry, the runtimes, the interceptors and the servicers raise the
types below; nothing here knows gRPC or torch (importing this module imports neither), so
every layer can raise them. :data:`STATUS` is the one table from exception type to status:
the gRPC code (by name), the ``hubless.v1.ErrorReason`` and the suggested retry delay
(``RetryInfo``). :func:`status_of` looks a type up along its MRO, most specific first, so the
order of the table does not matter. ``hubless_server.services.errors`` turns an exception
into a ``google.rpc.Status`` with details from this table; the HTTP door maps the same status
to HTTP. An exception whose type is not in the table is INTERNAL.

An exception may refine its row: :meth:`HublessError.status` (e.g. a task that is still
loading is MODEL_LOADING, retry in 2 s), :meth:`HublessError.status_metadata` (ErrorInfo
metadata such as the limit it went over) and :attr:`HublessError.status_field` (the
BadRequest field).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hubless.v1 import common_pb2

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

# Suggested retry delays (RetryInfo). A full queue drains within a few batches: at the
# measured ~2-20 ms per batch of 64 short texts on CPU, half a second clears hundreds of items.
QUEUE_FULL_RETRY_S = 0.5
# Loading takes 0.1 s (tiny models) to ~10 s (bart-large from a cold page cache); a client
# polls every 2 s instead of hammering a server that is still reading weights.
MODEL_LOADING_RETRY_S = 2.0
# A draining replica will not come back: retry at once, the load balancer picks another one.
SHUTTING_DOWN_RETRY_S = 0.0
# One in-flight call finishing frees a slot: on CPU a batch takes ~2-20 ms, a chat reply
# seconds, so a short pause is the right first retry.
CALLER_LIMIT_RETRY_S = 0.25

CALLER_LIMIT_FLAG = "--max-caller-concurrency"


@dataclass(frozen=True)
class ErrorStatus:
    """What an error is on the wire: a gRPC code name (``"UNAVAILABLE"``), an ErrorReason
    and, for retryable errors, the suggested delay before a retry."""

    code: str
    reason: int
    retry_after_s: float | None = None


class HublessError(Exception):
    """Base of the errors that end a request with a status from :data:`STATUS`."""

    status_field: str = ""
    """The request field at fault (BadRequest), for INVALID_ARGUMENT."""

    def status(self) -> ErrorStatus:
        """This error's status: its type's row in :data:`STATUS`."""
        found = status_of(type(self))
        assert found is not None, f"{type(self).__name__} has no row in STATUS"
        return found

    def status_metadata(self) -> dict[str, str]:
        """ErrorInfo metadata beyond task and model (a limit's flag and value, ...)."""
        return {}


@dataclass(frozen=True)
class Limit:
    """A server limit a request went over: the flag that sets it and its value."""

    flag: str
    value: int | float


# ---- requests the server refuses as invalid ----------------------------------------------


class RequestError(HublessError):
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

    @property
    def status_field(self) -> str:  # type: ignore[override]
        return self.field

    def status(self) -> ErrorStatus:
        return ErrorStatus("INVALID_ARGUMENT", self.reason)

    def status_metadata(self) -> dict[str, str]:
        meta = dict(self.metadata)
        if self.limit is not None:
            meta["limit"] = self.limit.flag
            meta["limit_value"] = str(self.limit.value)
        return meta


def limit_exceeded(field: str, message: str, flag: str, value: int | float) -> RequestError:
    """A LIMIT_EXCEEDED :class:`RequestError`; ``message`` should name ``flag``."""
    return RequestError(field, message, LIMIT_EXCEEDED, Limit(flag, value))


class InputTooLongError(HublessError, ValueError):
    """An input exceeds the model's maximum and the request asked not to truncate.

    ``field`` is empty when the item's text is too long; it names another field (e.g. a
    zero-shot ``candidate_labels[2]``) when that part alone does not fit, which truncating the
    text cannot fix, and ``message`` then says so."""

    status_field = "texts"

    def __init__(self, tokens: int, limit: int, field: str = "", message: str = "") -> None:
        super().__init__(
            message or f"input is {tokens} tokens long; the model accepts at most {limit}"
        )
        self.tokens = tokens
        self.limit = limit
        self.field = field

    def status_metadata(self) -> dict[str, str]:
        return {"tokens": str(self.tokens), "max_input_tokens": str(self.limit)}


class InvalidItemError(ValueError):
    """A field of a request item this model cannot serve (e.g. ``max_new_tokens`` beyond the
    model's context); ``field`` names it as the item does. The servicer turns it into a
    :class:`RequestError`."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class PrepareError(Exception):
    """``runtime.prepare`` rejected item ``index`` of a request; ``cause`` says why. The
    servicer, which knows the field its items came from, turns it into a RequestError."""

    def __init__(self, index: int, cause: Exception) -> None:
        super().__init__(f"item {index}: {cause}")
        self.index = index
        self.cause = cause


class MalformedRequestError(HublessError):
    """The request body did not parse as the method's request type; ``request`` is the
    placeholder the wire deserializer made (``hubless_server.services.wire``)."""

    def __init__(self, request: Any) -> None:
        super().__init__(request.describe())
        self.request = request

    def status_metadata(self) -> dict[str, str]:
        return {"message_type": self.request.message_type, "bytes": str(self.request.size)}


# ---- models and tasks ---------------------------------------------------------------------


class TaskUnavailableError(HublessError):
    """No model of the task can answer (none installed/loaded, or still loading)."""

    def __init__(self, task: str, message: str, loading: bool = False) -> None:
        super().__init__(message)
        self.task = task
        self.loading = loading

    def status(self) -> ErrorStatus:
        if self.loading:
            return ErrorStatus("UNAVAILABLE", MODEL_LOADING, MODEL_LOADING_RETRY_S)
        return super().status()

    def status_metadata(self) -> dict[str, str]:
        return {"task": self.task}


class TaskDisabledError(TaskUnavailableError):
    """The task is not served here (the operator's ``--tasks``)."""


class ModelNotFoundError(HublessError):
    """The request names a model that is not a loaded model of its task."""


class ModelUnknownError(HublessError):
    """A model name that is no model of a served task (GetModel)."""

    def __init__(self, model: str, message: str) -> None:
        super().__init__(message)
        self.model = model


# ---- the batching core ---------------------------------------------------------------------


class QueueFullError(HublessError):
    """The model's queue cannot take the request's items."""

    def __init__(self, model: str, depth: int, limit: int, wanted: int) -> None:
        super().__init__(
            f"model {model!r} is overloaded: {depth} items queued, limit {limit}, this request "
            f"adds {wanted}; retry with backoff"
        )
        self.model = model
        self.limit = limit

    def status_metadata(self) -> dict[str, str]:
        return {"limit": "--max-queue", "limit_value": str(self.limit)}


class ExpiredError(HublessError):
    """The request's deadline passed while its item waited in the queue."""


class ClosedError(HublessError):
    """The batcher is shutting down."""


# ---- the transport ------------------------------------------------------------------------


class UnauthenticatedError(HublessError):
    """A call without an accepted bearer token (UNAUTHENTICATED, reason UNAUTHENTICATED)."""


class CallerLimitError(HublessError):
    """A caller already has ``limit`` calls in flight."""

    def __init__(self, caller: str, limit: int) -> None:
        super().__init__(
            f"this caller already has {limit} calls in flight, the most this server allows "
            f"({CALLER_LIMIT_FLAG}={limit}): wait for one to finish, or send fewer calls at once"
        )
        self.caller = caller
        self.limit = limit

    def status_metadata(self) -> dict[str, str]:
        return {"limit": CALLER_LIMIT_FLAG, "limit_value": str(self.limit)}


class ShuttingDownError(HublessError):
    """The server is draining: the call was not started (UNAVAILABLE, SHUTTING_DOWN)."""


STATUS: dict[type[HublessError], ErrorStatus] = {
    RequestError: ErrorStatus("INVALID_ARGUMENT", INVALID_FIELD),
    InputTooLongError: ErrorStatus("INVALID_ARGUMENT", INPUT_TOO_LONG),
    MalformedRequestError: ErrorStatus("INVALID_ARGUMENT", MALFORMED_REQUEST),
    ModelNotFoundError: ErrorStatus("NOT_FOUND", MODEL_NOT_FOUND),
    ModelUnknownError: ErrorStatus("NOT_FOUND", MODEL_NOT_FOUND),
    TaskUnavailableError: ErrorStatus("UNAVAILABLE", TASK_UNAVAILABLE),
    TaskDisabledError: ErrorStatus("UNAVAILABLE", TASK_DISABLED),
    QueueFullError: ErrorStatus("RESOURCE_EXHAUSTED", QUEUE_FULL, QUEUE_FULL_RETRY_S),
    CallerLimitError: ErrorStatus("RESOURCE_EXHAUSTED", CALLER_LIMIT, CALLER_LIMIT_RETRY_S),
    UnauthenticatedError: ErrorStatus("UNAUTHENTICATED", UNAUTHENTICATED),
    ExpiredError: ErrorStatus("DEADLINE_EXCEEDED", DEADLINE_EXPIRED),
    ClosedError: ErrorStatus("UNAVAILABLE", SHUTTING_DOWN, SHUTTING_DOWN_RETRY_S),
    ShuttingDownError: ErrorStatus("UNAVAILABLE", SHUTTING_DOWN, SHUTTING_DOWN_RETRY_S),
}
"""Exception type -> status. Every :class:`HublessError` subclass has a row (a test checks)."""


def status_of(cls: type[BaseException]) -> ErrorStatus | None:
    """The status of exception type ``cls``: its own row or its nearest base's; None for a
    type the table does not know (an unexpected error: INTERNAL)."""
    for klass in cls.__mro__:
        found = STATUS.get(klass)  # type: ignore[call-overload]
        if found is not None:
            return found
    return None
