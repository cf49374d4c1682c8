"""Every hubless.v1 method as a raw call: request bodies as bytes, whatever they hold."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
from google.protobuf import message_factory
from google.protobuf.message import Message

from hubless.v1 import models_pb2
from hubless_server.core.tasks import TASK_SPECS


@dataclass(frozen=True)
class Method:
    """One RPC: its path, request class and whether the server streams the answer."""

    path: str
    request: type[Message]
    streaming: bool

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def _methods() -> tuple[Method, ...]:
    services = [spec.service for spec in TASK_SPECS]
    services.append(models_pb2.DESCRIPTOR.services_by_name["ModelsService"])
    return tuple(
        Method(
            f"/{service.full_name}/{method.name}",
            message_factory.GetMessageClass(method.input_type),
            method.server_streaming,
        )
        for service in services
        for method in service.methods
    )


METHODS = _methods()
"""Every unary method and StreamReply of the hubless.v1 services."""
BY_NAME = {method.name: method for method in METHODS}


@dataclass(frozen=True)
class Outcome:
    """How a call ended: its code and, for an error, the error (for its details)."""

    code: grpc.StatusCode
    error: grpc.RpcError | None = None


def call_raw(channel: grpc.Channel, method: Method, body: bytes, timeout: float = 10) -> Outcome:
    """Send ``body`` as the request of ``method``; a stream is read to its end."""
    try:
        if method.streaming:
            for _ in channel.unary_stream(method.path)(body, timeout=timeout):
                pass
        else:
            channel.unary_unary(method.path)(body, timeout=timeout)
    except grpc.RpcError as error:
        return Outcome(error.code(), error)  # type: ignore[attr-defined]
    return Outcome(grpc.StatusCode.OK)


class Records(logging.Handler):
    """Keeps every log record (from any thread) while attached to the root logger."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def tracebacks(self) -> list[logging.LogRecord]:
        """Records that carry a traceback: logged with exc_info, or grpc's own
        "Unexpected ... raised by servicer method" lines."""
        return [
            r
            for r in self.records
            if r.exc_info
            or "Traceback (most recent call last)" in r.getMessage()
            or "raised by servicer method" in r.getMessage()
        ]

    def __enter__(self) -> Records:
        root = logging.getLogger()
        self._level = root.level
        root.addHandler(self)
        root.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        root.removeHandler(self)
        root.setLevel(self._level)
