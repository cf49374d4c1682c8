"""Errors as a hubless server returns them: a ``google.rpc.Status`` in the
``grpc-status-details-bin`` trailer with an ErrorInfo (domain hubless.v1), a BadRequest for
INVALID_ARGUMENT and a RetryInfo for RESOURCE_EXHAUSTED or retryable UNAVAILABLE; and broken
ones a client must survive; and failed calls made without a server (:class:`FakeCallError`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DETAILS_KEY = "grpc-status-details-bin"

#: Sentiment ``model=`` values whose errors carry broken details.
GARBAGE_DETAILS = "garbage-details"  # INTERNAL, grpc-status-details-bin is not a Status
MISMATCHED_DETAILS = "mismatched-details"  # INTERNAL, the Status says NOT_FOUND
BROKEN_DETAIL = "broken-detail"  # UNAVAILABLE: an undecodable ErrorInfo, a good RetryInfo
FOREIGN_DETAIL = "foreign-detail"  # UNAVAILABLE: a proxy's ErrorInfo before ours


def pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def error_status(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    *,
    metadata: Mapping[str, str] | None = None,
    violations: Sequence[tuple[str, str]] = (),
    retry_delay: float | None = None,
) -> status_pb2.Status:
    """A ``google.rpc.Status`` as the hubless error contract has it: ErrorInfo (domain
    hubless.v1), then BadRequest and RetryInfo when given."""
    details = [
        pack(error_details_pb2.ErrorInfo(reason=reason, domain="hubless.v1", metadata=metadata))
    ]
    if violations:
        details.append(
            pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                        for f, d in violations
                    ]
                )
            )
        )
    if retry_delay is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(round(retry_delay * 1000))
        details.append(pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status_pb2.Status(code=code.value[0], message=message, details=details)


def abort_rich(
    context: grpc.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    reason: str,
    *,
    metadata: Mapping[str, str] | None = None,
    violations: Sequence[tuple[str, str]] = (),
    retry_delay: float | None = None,
) -> NoReturn:
    """Abort with ``code`` and the rich details of :func:`error_status`."""
    status = error_status(
        code, message, reason, metadata=metadata, violations=violations, retry_delay=retry_delay
    )
    context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("unreachable")


def abort_broken(model: str, context: grpc.ServicerContext) -> None:
    """Errors whose details a client must survive (sentiment ``model=`` values)."""
    if model == GARBAGE_DETAILS:
        context.set_trailing_metadata(((DETAILS_KEY, b"\xff\xfe not a google.rpc.Status"),))
        context.abort(grpc.StatusCode.INTERNAL, "garbage details")
    if model == MISMATCHED_DETAILS:
        status = error_status(grpc.StatusCode.NOT_FOUND, "mismatched details", "MODEL_NOT_FOUND")
        context.set_trailing_metadata(((DETAILS_KEY, status.SerializeToString()),))
        context.abort(grpc.StatusCode.INTERNAL, "mismatched details")
    if model == BROKEN_DETAIL:
        status = error_status(
            grpc.StatusCode.UNAVAILABLE, "broken detail", "SHUTTING_DOWN", retry_delay=2.0
        )
        status.details[0].value = b"\xff\xff\xff"
        context.abort_with_status(rpc_status.to_status(status))
    if model == FOREIGN_DETAIL:
        status = error_status(
            grpc.StatusCode.UNAVAILABLE, "foreign detail", "SHUTTING_DOWN", retry_delay=2.0
        )
        foreign = error_details_pb2.ErrorInfo(reason="UPSTREAM_RESET", domain="envoy.example")
        details = [pack(foreign), *status.details]  # a proxy's first: ours must still win
        del status.details[:]
        status.details.extend(details)
        context.abort_with_status(rpc_status.to_status(status))


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str | None) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details


class FakeCallError(FakeRpcError):
    """A failed call with trailing metadata, like ``grpc.Call`` and ``grpc.aio.AioRpcError``."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        trailing: tuple[tuple[str, str | bytes], ...] | None,
    ) -> None:
        super().__init__(code, details)
        self._trailing = trailing

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...] | None:
        return self._trailing


def rich_error(code: grpc.StatusCode, message: str, reason: str, **kwargs) -> FakeCallError:
    status = error_status(code, message, reason, **kwargs)
    return FakeCallError(
        code, message, (("x-other", "1"), (DETAILS_KEY, status.SerializeToString()))
    )
