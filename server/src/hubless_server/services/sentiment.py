"""hubless.v1.SentimentService: several models behind one RPC, with a normalised polarity."""

from __future__ import annotations

import grpc

from hubless.v1 import sentiment_pb2, sentiment_pb2_grpc
from hubless_server.runtimes.base import TextItem
from hubless_server.services.common import (
    TaskServicer,
    check_texts,
    deadline_of,
    model_ref,
    truncate_flag,
    unary,
)
from hubless_server.services.emotion import ranked
from hubless_server.services.polarity import polarity_of


class SentimentService(TaskServicer, sentiment_pb2_grpc.SentimentServiceServicer):
    """AnalyzeSentiment: the model's labels plus a polarity comparable across models."""

    task = "sentiment"

    @unary
    async def AnalyzeSentiment(
        self, request: sentiment_pb2.AnalyzeSentimentRequest, context: grpc.aio.ServicerContext
    ) -> sentiment_pb2.AnalyzeSentimentResponse:
        texts = check_texts(request.texts, self.deps.settings)
        truncate = truncate_flag(request.truncation)
        record = self.deps.resolve(self.task, request.model, len(texts))
        assert record.batcher is not None
        outputs = await record.batcher.run(
            [TextItem(text, truncate=truncate) for text in texts], deadline_of(context)
        )
        response = sentiment_pb2.AnalyzeSentimentResponse(model=model_ref(record))
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
