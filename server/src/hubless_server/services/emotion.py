"""hubless.v1.EmotionService."""

from __future__ import annotations

import grpc

from hubless.v1 import emotion_pb2, emotion_pb2_grpc
from hubless_server.runtimes.base import ClassificationOutput, TextItem
from hubless_server.services.common import (
    TaskServicer,
    check_texts,
    deadline_of,
    model_ref,
    truncate_flag,
    unary,
)


def ranked(output: ClassificationOutput) -> list[tuple[str, float]]:
    """The output's (label, probability) pairs, highest first."""
    return sorted(((label, float(score)) for label, score in output.scores), key=lambda p: -p[1])


class EmotionService(TaskServicer, emotion_pb2_grpc.EmotionServiceServicer):
    """DetectEmotion: the labels of each text, highest first."""

    task = "emotion"

    @unary
    async def DetectEmotion(
        self, request: emotion_pb2.DetectEmotionRequest, context: grpc.aio.ServicerContext
    ) -> emotion_pb2.DetectEmotionResponse:
        texts = check_texts(request.texts, self.deps.settings)
        truncate = truncate_flag(request.truncation)
        record = self.deps.resolve(self.task, request.model, len(texts))
        assert record.batcher is not None
        outputs = await record.batcher.run(
            [TextItem(text, truncate=truncate) for text in texts], deadline_of(context)
        )
        response = emotion_pb2.DetectEmotionResponse(model=model_ref(record))
        for output in outputs:
            scores = ranked(output)
            result = response.results.add(truncated=output.truncated)
            if scores:
                result.label, result.score = scores[0]
            for label, score in scores:
                result.scores.add(label=label, score=score)
        return response
