"""The null Embeddings server: the floor of serving one sentence over grpc.aio.

A plain ``grpc.aio`` server implementing ``hubless.v1.EmbeddingsService/Embed`` that computes
nothing: it answers every text with the same precomputed 384-float vector (the answer's size is
a real one) and the same ModelRef. The load generator drives it exactly like
``hubless-serve``; its CPU per request is what gRPC, protobuf and asyncio cost in Python, so
hubless's own per-item cost is its CPU per item minus the model's (in-process ONNX Runtime) and
minus this floor.

Requests of any number of texts get as many vectors (the embeddings suite's shapes send 1 and
32 per request). The ``Embedding`` messages are built once per token count and reused, so a
32-text answer costs copies of finished messages, not 32 x 384 Python floats (1.3 ms per
answer that way, ~0.08 ms this way on an AMD EPYC Zen 4): the floor stays a floor.

    python bench/null_server.py --port 50072
"""

from __future__ import annotations

import argparse
import asyncio
import logging

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from hubless.v1 import common_pb2, embeddings_pb2, embeddings_pb2_grpc

DIMENSION = 384


class NullEmbeddings(embeddings_pb2_grpc.EmbeddingsServiceServicer):
    """``Embed``: a fixed vector per text, no model."""

    def __init__(self) -> None:
        self.vector = [((i * 37) % 101) / 101.0 - 0.5 for i in range(DIMENSION)]
        self.ref = common_pb2.ModelRef(name="null", repo_id="null", commit="0" * 40)
        self.by_tokens: dict[int, embeddings_pb2.Embedding] = {}

    def embedding(self, tokens: int) -> embeddings_pb2.Embedding:
        """The fixed vector with this token count, built on first use."""
        found = self.by_tokens.get(tokens)
        if found is None:
            found = embeddings_pb2.Embedding(values=self.vector, tokens=tokens)
            self.by_tokens[tokens] = found
        return found

    async def Embed(
        self, request: embeddings_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> embeddings_pb2.EmbedResponse:
        return embeddings_pb2.EmbedResponse(
            embeddings=[self.embedding(len(text.split())) for text in request.texts],
            dimension=DIMENSION,
            model=self.ref,
        )


async def serve(port: int) -> None:
    server = grpc.aio.server()
    embeddings_pb2_grpc.add_EmbeddingsServiceServicer_to_server(NullEmbeddings(), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    for service in ("", "hubless.v1.EmbeddingsService"):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
