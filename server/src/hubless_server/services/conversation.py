"""hubless.v1.ConversationService: Reply (batched) and StreamReply (piece by piece)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from hubless.v1 import conversation_pb2, conversation_pb2_grpc
from hubless_server.core.config import Settings
from hubless_server.inference.batching import PrepareError
from hubless_server.runtimes.base import ChatItem, InputTooLongError
from hubless_server.services.common import (
    TaskServicer,
    check_at_least,
    check_cap,
    check_finite,
    check_texts,
    deadline_of,
    model_ref,
    optional_int,
    server_stream,
    unary,
)
from hubless_server.services.errors import INPUT_TOO_LONG, RequestError

ChatRequest = conversation_pb2.ReplyRequest | conversation_pb2.StreamReplyRequest

# Sampling temperatures the proto allows (0 = greedy). Logits divided by less than 0.01
# overflow to inf and sampling fails (1e-40 did, as INTERNAL). The request carries a float32:
# 0.01 arrives as 0.0099999998, hence the relative slack.
MIN_TEMPERATURE = 0.01
MAX_TEMPERATURE = 100.0
_SLACK = 1e-6


def chat_item(request: ChatRequest, settings: Settings) -> ChatItem:
    """Validate a Reply/StreamReply request into a ChatItem (server defaults for unset
    fields)."""
    turns = check_texts(request.turns, settings, what="turns")
    max_new_tokens = optional_int(request, "max_new_tokens")
    if max_new_tokens is None:
        max_new_tokens = settings.default_new_tokens
    else:
        check_at_least("max_new_tokens", max_new_tokens, 1)
        check_cap("max_new_tokens", max_new_tokens, settings.max_new_tokens, "--max-new-tokens")
    temperature = request.temperature if request.HasField("temperature") else 0.0
    check_finite("temperature", temperature)
    low, high = MIN_TEMPERATURE * (1 - _SLACK), MAX_TEMPERATURE * (1 + _SLACK)
    if temperature != 0 and not low <= temperature <= high:
        raise RequestError(
            "temperature",
            f"temperature is {temperature:g}; it must be 0 (greedy) or between "
            f"{MIN_TEMPERATURE:g} and {MAX_TEMPERATURE:g}",
        )
    top_p = request.top_p if request.HasField("top_p") else 1.0
    check_finite("top_p", top_p)
    if not 0 < top_p <= 1:
        raise RequestError("top_p", f"top_p is {top_p}; it must be in (0, 1]")
    return ChatItem(
        turns=tuple(turns),
        max_new_tokens=max_new_tokens,
        temperature=float(temperature),
        top_p=float(top_p),
        seed=request.seed if request.HasField("seed") else None,
    )


def _finish(finished: bool) -> int:
    return (
        conversation_pb2.FINISH_REASON_STOP if finished else conversation_pb2.FINISH_REASON_LENGTH
    )


class ConversationService(TaskServicer, conversation_pb2_grpc.ConversationServiceServicer):
    """Reply and StreamReply: a chat model's answer to the last turn."""

    task = "conversation"
    items_field = "turns"

    def invalid_item(self, exc: PrepareError, request: Any) -> BaseException:
        """Chat has no truncation option: old turns are dropped, but the last one must fit."""
        cause = exc.cause
        if isinstance(cause, InputTooLongError):
            field = f"turns[{max(len(request.turns) - 1, 0)}]"
            return RequestError(
                field,
                f"the last turn ({field}) is {cause.tokens} tokens; with this max_new_tokens "
                f"the model's context leaves room for at most {cause.limit}: shorten the turn "
                "or ask for fewer new tokens",
                INPUT_TOO_LONG,
                metadata={"tokens": str(cause.tokens), "max_input_tokens": str(cause.limit)},
            )
        return super().invalid_item(exc, request)

    @unary
    async def Reply(
        self, request: conversation_pb2.ReplyRequest, context: grpc.aio.ServicerContext
    ) -> conversation_pb2.ReplyResponse:
        item = chat_item(request, self.deps.settings)
        record = self.deps.resolve(self.task, request.model, 1)
        assert record.batcher is not None
        (output,) = await record.batcher.run([item], deadline_of(context))
        return conversation_pb2.ReplyResponse(
            text=output.text,
            tokens=output.tokens,
            finish_reason=_finish(output.finished),
            history_truncated=output.truncated,
            model=model_ref(record),
        )

    @server_stream
    async def StreamReply(
        self, request: conversation_pb2.StreamReplyRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[conversation_pb2.StreamReplyResponse]:
        item = chat_item(request, self.deps.settings)
        record = self.deps.resolve(self.task, request.model, 1)
        assert record.batcher is not None
        (prepared,) = await record.batcher.prepare([item])
        first = True
        tokens = 0
        pieces = record.batcher.stream(prepared)
        try:
            async for piece in pieces:
                tokens = max(tokens, piece.tokens)
                message = conversation_pb2.StreamReplyResponse(text=piece.text, tokens=tokens)
                if first:
                    message.model.CopyFrom(model_ref(record))
                    message.history_truncated = prepared.truncated or piece.truncated
                    first = False
                if piece.final:
                    message.finish_reason = _finish(piece.finished)
                yield message
                if piece.final:
                    return
        finally:
            await pieces.aclose()
        # The runtime ended without a final piece: close the stream properly anyway.
        message = conversation_pb2.StreamReplyResponse(
            finish_reason=conversation_pb2.FINISH_REASON_STOP, tokens=tokens
        )
        if first:
            message.model.CopyFrom(model_ref(record))
            message.history_truncated = prepared.truncated
        yield message
