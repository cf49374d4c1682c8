"""hubless.v1.SummarizationService."""

from __future__ import annotations

import grpc

from hubless.v1 import summarization_pb2, summarization_pb2_grpc
from hubless_server.core.config import Settings
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
from hubless_server.services.errors import RequestError, limit_exceeded


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


def check_generation_cost(
    request: summarization_pb2.SummarizeRequest,
    texts: int,
    max_length: int,
    num_beams: int,
    settings: Settings,
) -> None:
    """texts x num_beams x max_length, the decoder steps a request may cost, within
    ``--max-generation-tokens``; the BadRequest names the factor to lower (num_beams when
    beam search is on, an explicit max_length, else texts)."""
    cost = texts * num_beams * max_length
    limit = settings.max_generation_tokens
    if cost <= limit:
        return
    if num_beams > 1:
        field = "num_beams"
    elif request.HasField("max_length"):
        field = "max_length"
    else:
        field = "texts"
    fit = limit // (num_beams * max_length)
    how = (
        f"send at most {fit} texts per request, or lower num_beams or max_length"
        if fit
        else f"lower num_beams or max_length (num_beams x max_length at most {limit})"
    )
    raise limit_exceeded(
        field,
        f"texts x num_beams x max_length is {texts} x {num_beams} x {max_length} = {cost} "
        f"tokens to generate; at most {limit} per request (--max-generation-tokens): {how}",
        "--max-generation-tokens",
        limit,
    )


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
        check_generation_cost(request, len(texts), max_length, beams, settings)
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
