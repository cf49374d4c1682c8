"""Request bodies of the HTTP door: read within a size limit, parsed with protobuf's JSON
mapping into the gRPC request message.

``json_format.Parse`` on the method's own request type gives HTTP the field names (proto names
or their lowerCamelCase JSON names), types and enums of gRPC. A body that is not such a
message is not refused here: it becomes an :class:`UndecodableJson` and goes to the servicer
like an undecodable gRPC body, so the token check runs first and the answer, the log line and
the ``hubless_undecodable_requests_total`` count are those of gRPC (INVALID_ARGUMENT,
``MALFORMED_REQUEST``), with the parser's complaint in the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from starlette.requests import Request

from hubless_server.core.redact import echo
from hubless_server.services.wire import UndecodableRequest

MAX_BODY_BYTES = 32 * 1024 * 1024
"""The largest request body, as gRPC's ``grpc.max_receive_message_length``."""


class BodyTooLargeError(Exception):
    """The request body is over :data:`MAX_BODY_BYTES`."""


@dataclass(frozen=True)
class UndecodableJson(UndecodableRequest):
    """A JSON body that is not a valid ``message_type``; ``field`` names the offending field
    when known (the error's ``param``)."""

    field: str = ""

    def describe(self) -> str:
        return (
            f"the request body ({self.size} bytes) is not a valid {self.message_type} in JSON: "
            f"{echo(self.error, 200)}"
        )


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The whole body; :class:`BodyTooLargeError` past ``limit`` bytes (read no further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise BodyTooLargeError
        chunks.append(chunk)
    return b"".join(chunks)


def parse_message(body: bytes, message_class: type[Message]) -> Message | UndecodableJson:
    """``body`` (JSON; empty means ``{}``) as a ``message_class``, or why it is not one."""
    full_name = message_class.DESCRIPTOR.full_name
    try:
        text = body.decode("utf-8")
        return json_format.Parse(text if text.strip() else "{}", message_class())
    except (json_format.ParseError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        return UndecodableJson(full_name, len(body), " ".join(str(exc).split())[:300])


def parse_json(body: bytes) -> Any:
    """A JSON body as Python values; ValueError when it is not JSON."""
    import json

    try:
        return json.loads(body.decode("utf-8") if body.strip() else "{}")
    except (UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(str(exc)) from exc
