"""hubless.v1.Summarization."""

from __future__ import annotations

import grpc

from hubless.v1 import summarization_pb2, summarization_pb2_grpc
from hubless_server.config import Settings
from hubless_server.runtimes.base import SummarizeItem
from hubless_server.services.common import (
    InvalidArgument,
    ServiceDeps,
    check_non_negative,
    check_texts,
    deadline_of,
    model_ref,
    truncate_flag,
    unary,
)

TASK = "summarization"


def summary_bounds(
    min_length: int, max_length: int, num_beams: int, settings: Settings
) -> tuple[int, int, int]:
    """(min_length, max_length, num_beams) with 0 replaced by the server defaults."""
    check_non_negative(min_length=min_length, max_length=max_length, num_beams=num_beams)
    if max_length > settings.max_new_tokens:
        raise InvalidArgument(
            f"max_length is {max_length}; at most {settings.max_new_tokens} (--max-new-tokens)"
        )
    if num_beams > settings.max_beams:
        raise InvalidArgument(f"num_beams is {num_beams}; at most {settings.max_beams}")
    if max_length and min_length and max_length < min_length:
        raise InvalidArgument(f"max_length ({max_length}) is below min_length ({min_length})")
    resolved_min = min_length or settings.summary_min_length
    resolved_max = max_length or max(settings.summary_max_length, resolved_min)
    if resolved_max > settings.max_new_tokens:
        raise InvalidArgument(
            f"min_length is {min_length}; at most {settings.max_new_tokens} (--max-new-tokens)"
        )
    if resolved_max < resolved_min:
        raise InvalidArgument(
            f"max_length ({resolved_max}) is below min_length ({resolved_min}); raise max_length"
        )
    return resolved_min, resolved_max, num_beams or 1


class SummarizationService(summarization_pb2_grpc.SummarizationServicer):
    def __init__(self, deps: ServiceDeps) -> None:
        self.deps = deps

    @unary
    async def Summarize(
        self, request: summarization_pb2.SummarizeRequest, context: grpc.aio.ServicerContext
    ) -> summarization_pb2.SummarizeResponse:
        settings = self.deps.settings
        texts = check_texts(request.texts, settings)
        min_length, max_length, beams = summary_bounds(
            request.min_length, request.max_length, request.num_beams, settings
        )
        truncate = truncate_flag(request.truncation)
        record = self.deps.resolve(TASK, request.model, len(texts))
        assert record.batcher is not None
        items = [SummarizeItem(text, min_length, max_length, beams, truncate) for text in texts]
        outputs = await record.batcher.run(items, deadline_of(context))
        response = summarization_pb2.SummarizeResponse(model=model_ref(record))
        for output in outputs:
            response.summaries.add(
                text=output.text, truncated=output.truncated, tokens=output.tokens
            )
        return response
