"""Exceptions raised by the hubless client: one class per gRPC status code that matters."""

from __future__ import annotations

import grpc

__all__ = [
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
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


class HublessError(Exception):
    """A failed call: the gRPC status ``code`` and the server's ``details``.

    The original :class:`grpc.RpcError` is kept as ``__cause__`` (and ``rpc_error``).
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        details: str,
        *,
        code: grpc.StatusCode | None = None,
        rpc_error: grpc.RpcError | None = None,
    ) -> None:
        super().__init__(details)
        if code is not None:
            self.code = code
        self.details = details
        self.rpc_error = rpc_error

    def __str__(self) -> str:
        return f"{self.code.name}: {self.details}" if self.details else self.code.name


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
    """The server cannot be reached, or no model of the task is loaded."""

    code = grpc.StatusCode.UNAVAILABLE


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
    """The :class:`HublessError` subclass matching ``error``'s status code."""
    code_fn = getattr(error, "code", None)
    details_fn = getattr(error, "details", None)
    code = code_fn() if callable(code_fn) else None
    details = details_fn() if callable(details_fn) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    cls = _BY_CODE.get(code, HublessError)
    return cls(details or "", code=code, rpc_error=error)
