"""Request bodies of the HTTP door (read by :mod:`.gate` within the body limit), parsed with
protobuf's JSON mapping into the gRPC request message, off the event loop when big.

``json_format.Parse`` on the method's own request type gives HTTP the field names (proto names
or their lowerCamelCase JSON names), types and enums of gRPC. A body that is not such a
message is not refused here: it becomes an :class:`UndecodableJson` and goes to the servicer
like an undecodable gRPC body, so the token check runs first and the answer, the log line and
the ``hubless_undecodable_requests_total`` count are those of gRPC (INVALID_ARGUMENT,
``MALFORMED_REQUEST``), with the parser's complaint in the message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from hubless_server.core.redact import echo
from hubless_server.services.wire import UndecodableRequest

T = TypeVar("T")

INLINE_BYTES = 64 * 1024
"""Bodies up to this size are decoded on the event loop (a thread hop costs more)."""
_DECODERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="hubless-http-json")
"""Bigger bodies are decoded here, two at a time, off the event loop."""


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


async def off_loop(decode: Callable[..., T], body: bytes, *args: Any) -> T:
    """``decode(body, *args)``: inline for a small body, else in a decoder thread, so a
    body of several MB does not hold up every other call on the loop while it parses."""
    if len(body) <= INLINE_BYTES:
        return decode(body, *args)
    return await asyncio.get_running_loop().run_in_executor(_DECODERS, decode, body, *args)


def parse_message(body: bytes, message_class: type[Message]) -> Message | UndecodableJson:
    """``body`` (JSON; empty means ``{}``) as a ``message_class``, or why it is not one."""
    full_name = message_class.DESCRIPTOR.full_name
    try:
        text = body.decode("utf-8")
        return json_format.Parse(text if text.strip() else "{}", message_class())
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        return UndecodableJson(full_name, len(body), " ".join(str(exc).split())[:300])


def parse_json(body: bytes) -> Any:
    """A JSON body as Python values; ValueError when it is not JSON."""
    import json

    try:
        return json.loads(body.decode("utf-8") if body.strip() else "{}")
    except (UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(str(exc)) from exc
