"""hubless.v1.Conversation: Reply (batched) and ReplyStream (piece by piece)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from hubless.v1 import conversation_pb2, conversation_pb2_grpc
from hubless_server.config import Settings
from hubless_server.runtimes.base import ChatItem
from hubless_server.services.common import (
    InvalidArgument,
    ServiceDeps,
    check_finite,
    check_texts,
    deadline_of,
    model_ref,
    server_stream,
    unary,
)

TASK = "conversation"


def chat_item(request: conversation_pb2.ReplyRequest, settings: Settings) -> ChatItem:
    """Validate a ReplyRequest into a ChatItem (server defaults for unset fields)."""
    turns = check_texts(request.turns, settings, what="turns")
    if request.max_new_tokens < 0:
        raise InvalidArgument(
            f"max_new_tokens is {request.max_new_tokens}; it must not be negative (0 = default)"
        )
    if request.max_new_tokens > settings.max_new_tokens:
        raise InvalidArgument(
            f"max_new_tokens is {request.max_new_tokens}; at most {settings.max_new_tokens} "
            "(--max-new-tokens)"
        )
    temperature = request.temperature if request.HasField("temperature") else 0.0
    check_finite("temperature", temperature)
    if temperature < 0:
        raise InvalidArgument(f"temperature is {temperature}; it must be >= 0 (0 = greedy)")
    top_p = request.top_p if request.HasField("top_p") else 1.0
    check_finite("top_p", top_p)
    if not 0 < top_p <= 1:
        raise InvalidArgument(f"top_p is {top_p}; it must be in (0, 1]")
    return ChatItem(
        turns=tuple(turns),
        max_new_tokens=request.max_new_tokens or settings.default_new_tokens,
        temperature=float(temperature),
        top_p=float(top_p),
        seed=request.seed if request.HasField("seed") else None,
    )


def _finish(finished: bool) -> int:
    return (
        conversation_pb2.FINISH_REASON_STOP if finished else conversation_pb2.FINISH_REASON_LENGTH
    )


class ConversationService(conversation_pb2_grpc.ConversationServicer):
    def __init__(self, deps: ServiceDeps) -> None:
        self.deps = deps

    @unary
    async def Reply(
        self, request: conversation_pb2.ReplyRequest, context: grpc.aio.ServicerContext
    ) -> conversation_pb2.ReplyResponse:
        item = chat_item(request, self.deps.settings)
        record = self.deps.resolve(TASK, request.model, 1)
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
    async def ReplyStream(
        self, request: conversation_pb2.ReplyRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[conversation_pb2.ReplyChunk]:
        item = chat_item(request, self.deps.settings)
        record = self.deps.resolve(TASK, request.model, 1)
        assert record.batcher is not None
        (prepared,) = await record.batcher.prepare([item])
        first = True
        pieces = record.batcher.stream(prepared)
        try:
            async for piece in pieces:
                chunk = conversation_pb2.ReplyChunk(text=piece.text)
                if first:
                    chunk.model.CopyFrom(model_ref(record))
                    chunk.history_truncated = prepared.truncated or piece.truncated
                    first = False
                if piece.final:
                    chunk.finish_reason = _finish(piece.finished)
                yield chunk
                if piece.final:
                    return
        finally:
            await pieces.aclose()
        # The runtime ended without a final piece: close the stream properly anyway.
        chunk = conversation_pb2.ReplyChunk(finish_reason=conversation_pb2.FINISH_REASON_STOP)
        if first:
            chunk.model.CopyFrom(model_ref(record))
            chunk.history_truncated = prepared.truncated
        yield chunk
