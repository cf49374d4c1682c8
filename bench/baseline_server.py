"""The one-request-at-a-time baseline: what a hand-written backend typically does.

A plain ``grpc.aio`` server implementing ``hubless.v1.EmbeddingsService`` that calls
``SentenceTransformer.encode`` once per request in a worker thread, with no batching across
requests. The load generator drives it exactly like ``hubless-serve``.

    python bench/baseline_server.py --model-dir DIR --port 50071
"""

from __future__ import annotations

import argparse
import asyncio
import logging

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from sentence_transformers import SentenceTransformer

from hubless.v1 import common_pb2, embeddings_pb2, embeddings_pb2_grpc

log = logging.getLogger("baseline")


class Embeddings(embeddings_pb2_grpc.EmbeddingsServiceServicer):
    """``Embed``: one ``encode`` call per request, in the default thread pool."""

    def __init__(self, model: SentenceTransformer, name: str) -> None:
        self.model = model
        self.ref = common_pb2.ModelRef(name=name, repo_id=name, commit="local")
        self.dim = model.get_sentence_embedding_dimension() or 0

    async def Embed(
        self, request: embeddings_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> embeddings_pb2.EmbedResponse:
        if not request.texts:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "texts is empty")
        normalize = request.normalize if request.HasField("normalize") else True
        vectors = await asyncio.to_thread(
            self.model.encode,
            list(request.texts),
            normalize_embeddings=normalize,
            convert_to_numpy=True,
        )
        return embeddings_pb2.EmbedResponse(
            embeddings=[embeddings_pb2.Embedding(values=v.tolist()) for v in vectors],
            dimension=self.dim,
            model=self.ref,
        )


async def serve(model_dir: str, port: int) -> None:
    """Load the model, then serve until cancelled."""
    model = SentenceTransformer(model_dir, device="cpu", local_files_only=True)
    server = grpc.aio.server()
    embeddings_pb2_grpc.add_EmbeddingsServiceServicer_to_server(
        Embeddings(model, "all-minilm-l6-v2"), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    for service in ("", "hubless.v1.EmbeddingsService"):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    log.info("baseline serving on 127.0.0.1:%d", port)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(serve(args.model_dir, args.port))


if __name__ == "__main__":
    main()
