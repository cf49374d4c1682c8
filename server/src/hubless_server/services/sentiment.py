"""hubless.v1.Sentiment: several models behind one RPC, with a normalised polarity."""

from __future__ import annotations

import grpc

from hubless.v1 import sentiment_pb2, sentiment_pb2_grpc
from hubless_server.polarity import polarity_of
from hubless_server.runtimes.base import TextItem
from hubless_server.services.common import (
    ServiceDeps,
    check_texts,
    deadline_of,
    model_ref,
    truncate_flag,
    unary,
)
from hubless_server.services.emotion import ranked

TASK = "sentiment"


class SentimentService(sentiment_pb2_grpc.SentimentServicer):
    def __init__(self, deps: ServiceDeps) -> None:
        self.deps = deps

    @unary
    async def Analyze(
        self, request: sentiment_pb2.AnalyzeRequest, context: grpc.aio.ServicerContext
    ) -> sentiment_pb2.AnalyzeResponse:
        texts = check_texts(request.texts, self.deps.settings)
        truncate = truncate_flag(request.truncation)
        record = self.deps.resolve(TASK, request.model, len(texts))
        assert record.batcher is not None
        outputs = await record.batcher.run(
            [TextItem(text, truncate=truncate) for text in texts], deadline_of(context)
        )
        response = sentiment_pb2.AnalyzeResponse(model=model_ref(record))
        for output in outputs:
            scores = ranked(output)
            polarity, polarity_score = polarity_of(scores)
            result = response.results.add(
                truncated=output.truncated,
                polarity=int(polarity),
                polarity_score=polarity_score,
            )
            if scores:
                result.label, result.score = scores[0]
            for label, score in scores:
                result.scores.add(label=label, score=score)
        return response
