"""Exceptions raised by the hubless client: one class per gRPC status code that matters, with
the server's machine-readable error details (``google.rpc`` ErrorInfo, BadRequest, RetryInfo).

Two classes are the client's own: :class:`ConnectionFailed` (an ``UNAVAILABLE`` that no
hubless server sent: the connection failed or broke; reason ``UNREACHABLE``), told apart from
the server's own ``UNAVAILABLE`` answers (``MODEL_LOADING``, ``SHUTTING_DOWN``...), which always
carry an ErrorInfo, as openai and httpx tell a connection error from an error response; and
:class:`ClientClosed`, a call on a closed client.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from hubless.v1 import common_pb2

__all__ = [
    "ERROR_DOMAIN",
    "Cancelled",
    "ClientClosed",
    "ConnectionFailed",
    "DeadlineExceeded",
    "ErrorReason",
    "FailedPrecondition",
    "FieldViolation",
    "HublessError",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "from_rpc_error",
]

log = logging.getLogger(__name__)

#: ``ErrorInfo.domain`` of the errors a hubless server returns.
ERROR_DOMAIN = "hubless.v1"

_PREFIX = "ERROR_REASON_"

#: The reason of :class:`ConnectionFailed`: no hubless server answered. The client's own, so
#: never sent by a server and not in the proto.
UNREACHABLE = "UNREACHABLE"

#: Why a call failed: the ``hubless.v1.ErrorReason`` names without their prefix, generated from
#: the stub's enum (``ErrorReason.QUEUE_FULL == "QUEUE_FULL"``), then the client's own
#: ``UNREACHABLE``; compare with :attr:`HublessError.reason`.
ErrorReason = StrEnum(  # type: ignore[misc]
    "ErrorReason",
    [
        *(
            (v.name.removeprefix(_PREFIX), v.name.removeprefix(_PREFIX))
            for v in common_pb2.ErrorReason.DESCRIPTOR.values
        ),
        (UNREACHABLE, UNREACHABLE),
    ],
    module=__name__,
)
ErrorReason.__doc__ = (
    "Machine-readable reason of a hubless error (``ErrorInfo.reason``; ``UNREACHABLE``: no "
    "server answered)."
)

#: The server names truncation modes as the proto does (``TRUNCATION_TRUNCATE``, possibly as
#: ``truncation=TRUNCATION_ERROR``); its messages are shown with this client's spelling.
_PROTO_TRUNCATION = re.compile(r"\b(?:truncation=)?TRUNCATION_(TRUNCATE|ERROR)\b")


def client_spelling(text: str) -> str:
    """``text`` with the proto's truncation names as this client's arguments:
    ``use TRUNCATION_TRUNCATE`` -> ``use truncation="truncate"``."""
    return _PROTO_TRUNCATION.sub(lambda m: f'truncation="{m[1].lower()}"', text)


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of an INVALID_ARGUMENT request, e.g. ``texts[3]``."""

    field: str
    description: str


@dataclass(frozen=True)
class _Details:
    """What :func:`_read_details` found in a failed call's ``grpc-status-details-bin``;
    ``present``: the call carried such details at all (even unreadable ones), so an
    application answered, not the transport."""

    present: bool = False
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    field_violations: list[FieldViolation] = field(default_factory=list)
    retry_delay: float | None = None


def _reason(value: str) -> str:
    """A known reason as its :data:`ErrorReason` member, any other as the plain string."""
    try:
        return ErrorReason(value)
    except ValueError:
        return value


def _unpack(detail: any_pb2.Any, message: Any) -> bool:
    """Unpack ``detail`` into ``message`` if it is of that type; a malformed one is skipped."""
    try:
        return detail.Is(message.DESCRIPTOR) and detail.Unpack(message)
    except Exception:  # a broken detail must never break error handling
        log.debug("skipping malformed %s error detail", message.DESCRIPTOR.full_name)
        return False


def _from_status(status: status_pb2.Status) -> _Details:
    info: error_details_pb2.ErrorInfo | None = None
    violations: list[FieldViolation] = []
    retry_delay: float | None = None
    for detail in status.details:
        error_info = error_details_pb2.ErrorInfo()
        bad_request = error_details_pb2.BadRequest()
        retry_info = error_details_pb2.RetryInfo()
        if _unpack(detail, error_info):
            # Ours first: an ErrorInfo of another domain (a proxy's) only when there is no other.
            if info is None or (info.domain != ERROR_DOMAIN and error_info.domain == ERROR_DOMAIN):
                info = error_info
        elif _unpack(detail, bad_request):
            violations.extend(
                FieldViolation(field=v.field, description=v.description)
                for v in bad_request.field_violations
            )
        elif _unpack(detail, retry_info) and retry_delay is None:
            delay = retry_info.retry_delay
            retry_delay = max(delay.seconds + delay.nanos / 1e9, 0.0)
    return _Details(
        present=True,
        reason=_reason(info.reason) if info is not None else "",
        metadata=dict(info.metadata) if info is not None else {},
        field_violations=violations,
        retry_delay=retry_delay,
    )


def _read_details(error: grpc.RpcError) -> _Details:
    """The rich error details of a failed call, sync (``grpc.Call``) or asyncio
    (``grpc.aio.AioRpcError``, whose ``code()``, ``details()`` and ``trailing_metadata()``
    are plain methods too, so :func:`grpc_status.rpc_status.from_call` reads both). Missing,
    malformed or inconsistent details give empty ones."""
    if not callable(getattr(error, "trailing_metadata", None)):
        return _Details()
    try:
        status = rpc_status.from_call(error)
    except Exception as exc:  # a broken status must never break error handling
        log.debug("ignoring unreadable error details: %s", exc)
        return _Details(present=True)
    return _Details() if status is None else _from_status(status)


class HublessError(Exception):
    """A failed call: the gRPC status ``code`` and the server's ``details``, and what the
    server said in machine-readable form:

    - ``reason``: an :data:`ErrorReason` name such as ``"QUEUE_FULL"`` (``"UNREACHABLE"``
      when no server answered, ``""`` when the error carried none);
    - ``metadata``: the ``ErrorInfo`` metadata, e.g. ``{"model": ..., "limit_value": ...}``;
    - ``field_violations``: the bad fields of an INVALID_ARGUMENT (``texts[3]``...);
    - ``retry_delay``: seconds the server suggests waiting before retrying, or ``None``.

    The original :class:`grpc.RpcError` is kept as ``__cause__`` (and ``rpc_error``).
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        details: str,
        *,
        code: grpc.StatusCode | None = None,
        rpc_error: grpc.RpcError | None = None,
        reason: str = "",
        metadata: dict[str, str] | None = None,
        field_violations: list[FieldViolation] | None = None,
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(details)
        if code is not None:
            self.code = code
        self.details = details
        self.rpc_error = rpc_error
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field_violations: list[FieldViolation] = list(field_violations or [])
        self.retry_delay = retry_delay

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.details}" if self.details else self.code.name
        return f"{text} [{self.reason}]" if self.reason else text


class InvalidArgument(HublessError):
    """The request is malformed (empty texts, unknown label template, input too long...)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(HublessError):
    """The named model (or health service) does not exist on the server."""

    code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(HublessError):
    """The server is overloaded (queue full) or a message exceeds the size limits."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(HublessError):
    """The call did not finish within its timeout."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(HublessError):
    """The server cannot answer now: a model still loading (``MODEL_LOADING``), no model of
    the task (``TASK_UNAVAILABLE``), shutting down (``SHUTTING_DOWN``); or, as the subclass
    :class:`ConnectionFailed`, it could not be reached."""

    code = grpc.StatusCode.UNAVAILABLE


class ConnectionFailed(Unavailable):
    """No hubless server answered (reason ``UNREACHABLE``): the connection could not be made
    (refused, name not resolved, TLS handshake failed), it broke before the answer came (the
    server died), or something in between (a proxy) answered ``UNAVAILABLE`` without hubless's
    error details. A subclass of :class:`Unavailable`, so ``except Unavailable`` catches it."""


class ClientClosed(HublessError):
    """A call on a client that was closed (``close()``, or after its ``with`` block); make a
    new client. Calls still in flight when it closed end with :class:`Cancelled`."""

    code = grpc.StatusCode.CANCELLED


class Cancelled(HublessError):
    """The call was cancelled."""

    code = grpc.StatusCode.CANCELLED


class FailedPrecondition(HublessError):
    """The server is not in a state to answer (e.g. the model failed to load)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(HublessError):
    """The caller may not make this call."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(HublessError):
    """The call carried no valid credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED


class Unimplemented(HublessError):
    """The server does not implement this RPC."""

    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(HublessError):
    """The server failed while answering."""

    code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[HublessError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        ResourceExhausted,
        DeadlineExceeded,
        Unavailable,
        Cancelled,
        FailedPrecondition,
        PermissionDenied,
        Unauthenticated,
        Unimplemented,
        Internal,
    )
}


def from_rpc_error(error: grpc.RpcError) -> HublessError:
    """The :class:`HublessError` subclass matching ``error``'s status code, with the rich
    error details the server attached (never failing on missing or malformed ones)."""
    code_fn = getattr(error, "code", None)
    details_fn = getattr(error, "details", None)
    code = code_fn() if callable(code_fn) else None
    details = details_fn() if callable(details_fn) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    rich = _read_details(error)
    cls = _BY_CODE.get(code, HublessError)
    reason = rich.reason
    readable = callable(getattr(error, "trailing_metadata", None))
    if code is grpc.StatusCode.UNAVAILABLE and readable and not rich.present:
        # A hubless server sends error details with every error: this came from the transport.
        cls, reason = ConnectionFailed, ErrorReason.UNREACHABLE
    return cls(
        client_spelling(details or ""),
        code=code,
        rpc_error=error,
        reason=reason,
        metadata=rich.metadata,
        field_violations=[
            FieldViolation(v.field, client_spelling(v.description)) for v in rich.field_violations
        ],
        retry_delay=rich.retry_delay,
    )
