"""gRPC statuses -> HTTP statuses and OpenAI-style error bodies.

Every error of the HTTP door is the gRPC status the same call would get (built by
``services.errors``, the one place that maps exceptions), read back from its
``google.rpc.Status`` details and answered as::

    HTTP/1.1 404 Not Found
    {"error": {"message": "...", "type": "not_found_error", "code": "model_not_found",
               "param": null, "grpc_code": "NOT_FOUND", "metadata": {"task": "embedding", ...}}}

``message`` is the status message, ``code`` the ``ErrorInfo`` reason in lower case
(``invalid_field``, ``queue_full``, ...), ``param`` the ``BadRequest`` field (``texts[3]``;
``input[3]`` on ``/v1/embeddings``) or null, ``metadata`` the ``ErrorInfo`` metadata. A
``RetryInfo`` becomes a ``Retry-After`` header (whole seconds, rounded up).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
"""The usual gRPC -> HTTP mapping (google.rpc.Code's documented HTTP equivalents)."""

_ERROR_TYPE: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    499: "cancelled_error",
    501: "not_implemented_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


def error_type(status: int) -> str:
    """The OpenAI error ``type`` of an HTTP status."""
    return _ERROR_TYPE.get(status, "server_error")


@dataclass
class HttpError:
    """One error answer: status, body fields and headers."""

    status: int
    message: str
    code: str
    grpc_code: str
    param: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    retry_after_s: float | None = None

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "message": self.message,
            "type": error_type(self.status),
            "code": self.code,
            "param": self.param,
            "grpc_code": self.grpc_code,
        }
        if self.metadata:
            error["metadata"] = self.metadata
        return {"error": error}

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(0, math.ceil(self.retry_after_s)))}


def _status_details(trailing_metadata: Any) -> status_pb2.Status | None:
    for key, value in trailing_metadata or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status()
            try:
                status.ParseFromString(value)
            except Exception:  # a malformed detail must not hide the status itself
                return None
            return status
    return None


def from_status(
    code: grpc.StatusCode, details: str | None, trailing_metadata: Any = ()
) -> HttpError:
    """The HTTP answer of a gRPC status and its ``google.rpc`` details."""
    http = HTTP_STATUS.get(code, 500)
    error = HttpError(
        status=http,
        message=details or code.value[1],
        code=code.name.lower(),
        grpc_code=code.name,
    )
    status = _status_details(trailing_metadata)
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            error.code = info.reason.lower()
            error.metadata = dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields = [v.field for v in bad.field_violations if v.field]
            error.param = fields[0] if fields else None
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            error.retry_after_s = retry.retry_delay.ToNanoseconds() / 1e9
    return error


def plain(status: int, code: str, message: str, param: str | None = None) -> HttpError:
    """An error of the HTTP layer itself (unknown route, body too large, wrong method)."""
    grpc_code = {404: "NOT_FOUND", 405: "UNIMPLEMENTED", 413: "INVALID_ARGUMENT"}.get(
        status, "INVALID_ARGUMENT" if status < 500 else "INTERNAL"
    )
    return HttpError(status, message, code, grpc_code, param)
