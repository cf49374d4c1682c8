"""Read the google.rpc details of a failed call (the ErrorReason contract in common.proto)."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass
class Details:
    """The details of one error status; None where the status carries no such detail."""

    code: grpc.StatusCode
    info: error_details_pb2.ErrorInfo
    bad_request: error_details_pb2.BadRequest | None
    retry: error_details_pb2.RetryInfo | None

    @property
    def reason(self) -> str:
        return self.info.reason

    @property
    def fields(self) -> list[str]:
        if self.bad_request is None:
            return []
        return [v.field for v in self.bad_request.field_violations]


def details_of(error: grpc.RpcError) -> Details:
    """Decode ``grpc-status-details-bin``; fails the test when it is missing or inconsistent."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, f"no grpc-status-details-bin on {error.code()}: {error.details()}"
    assert status.code == error.code().value[0] and status.message == error.details()
    info = bad = retry = None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
    assert info is not None, "every error carries an ErrorInfo"
    assert info.domain == "hubless.v1"
    return Details(error.code(), info, bad, retry)
