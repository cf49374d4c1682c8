"""hubless.v1.SummarizationService."""

from __future__ import annotations

import grpc

from hubless.v1 import summarization_pb2, summarization_pb2_grpc
from hubless_server.config import Settings
from hubless_server.runtimes.base import SummarizeItem
from hubless_server.services.common import (
    TaskServicer,
    check_at_least,
    check_cap,
    check_texts,
    deadline_of,
    model_ref,
    optional_int,
    truncate_flag,
    unary,
)
from hubless_server.services.errors import RequestError


def summary_bounds(
    request: summarization_pb2.SummarizeRequest, settings: Settings
) -> tuple[int, int, int]:
    """(min_length, max_length, num_beams): explicit values validated, unset fields the
    server defaults (``--summary-min-length``, ``--summary-max-length``, greedy).

    An unset bound never contradicts an explicit one: an explicit min_length above the default
    max_length raises the max to it, an explicit max_length below the default min_length
    lowers the min to it. Both explicit and min above max is an error.
    """
    min_length = optional_int(request, "min_length")
    max_length = optional_int(request, "max_length")
    num_beams = optional_int(request, "num_beams")
    cap = settings.max_new_tokens
    if min_length is not None:
        check_at_least("min_length", min_length, 0)
        check_cap("min_length", min_length, cap, "--max-new-tokens")
    if max_length is not None:
        check_at_least("max_length", max_length, 1)
        check_cap("max_length", max_length, cap, "--max-new-tokens")
    if num_beams is not None:
        check_at_least("num_beams", num_beams, 1)
        check_cap("num_beams", num_beams, settings.max_beams, "--max-beams")
    if min_length is not None and max_length is not None and min_length > max_length:
        raise RequestError(
            "min_length",
            f"min_length ({min_length}) is above max_length ({max_length}); lower min_length "
            "or raise max_length",
        )
    if min_length is None:
        resolved_max = settings.summary_max_length if max_length is None else max_length
        resolved_min = min(settings.summary_min_length, resolved_max)
    else:
        resolved_min = min_length
        resolved_max = (
            max(settings.summary_max_length, min_length) if max_length is None else max_length
        )
    return resolved_min, resolved_max, 1 if num_beams is None else num_beams


class SummarizationService(TaskServicer, summarization_pb2_grpc.SummarizationServiceServicer):
    """Summarize: one summary per text."""

    task = "summarization"

    @unary
    async def Summarize(
        self, request: summarization_pb2.SummarizeRequest, context: grpc.aio.ServicerContext
    ) -> summarization_pb2.SummarizeResponse:
        settings = self.deps.settings
        texts = check_texts(request.texts, settings)
        min_length, max_length, beams = summary_bounds(request, settings)
        truncate = truncate_flag(request.truncation)
        record = self.deps.resolve(self.task, request.model, len(texts))
        assert record.batcher is not None
        items = [SummarizeItem(text, min_length, max_length, beams, truncate) for text in texts]
        outputs = await record.batcher.run(items, deadline_of(context))
        response = summarization_pb2.SummarizeResponse(model=model_ref(record))
        for output in outputs:
            response.summaries.add(
                text=output.text, truncated=output.truncated, tokens=output.tokens
            )
        return response
