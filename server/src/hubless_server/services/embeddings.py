"""hubless.v1.EmbeddingsService."""

from __future__ import annotations

import grpc
import numpy as np

from hubless.v1 import embeddings_pb2, embeddings_pb2_grpc
from hubless_server.runtimes.base import TextItem
from hubless_server.services.common import (
    TaskServicer,
    check_texts,
    deadline_of,
    model_ref,
    truncate_flag,
    unary,
)
from hubless_server.services.packing import merge_floats

_VALUES_FIELD = embeddings_pb2.Embedding.DESCRIPTOR.fields_by_name["values"].number


class EmbeddingsService(TaskServicer, embeddings_pb2_grpc.EmbeddingsServiceServicer):
    """Embed: one vector per text."""

    task = "embedding"

    @unary
    async def Embed(
        self, request: embeddings_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> embeddings_pb2.EmbedResponse:
        texts = check_texts(request.texts, self.deps.settings)
        truncate = truncate_flag(request.truncation)
        normalize = request.normalize if request.HasField("normalize") else True
        record = self.deps.resolve(self.task, request.model, len(texts))
        assert record.batcher is not None
        items = [TextItem(text, truncate=truncate, normalize=normalize) for text in texts]
        outputs = await record.batcher.run(items, deadline_of(context))
        response = embeddings_pb2.EmbedResponse(model=model_ref(record))
        for output in outputs:
            values = np.asarray(output.vector, dtype=np.float32).reshape(-1)
            response.dimension = values.shape[0]
            embedding = response.embeddings.add(truncated=output.truncated, tokens=output.tokens)
            merge_floats(embedding, _VALUES_FIELD, values)
        return response
