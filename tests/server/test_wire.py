"""Safe request decoding: a body that does not parse reaches the servicer as a value, never
as an exception inside grpc (which would answer UNKNOWN and log a traceback)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from hubless.v1 import embeddings_pb2
from hubless_server.services.wire import UndecodableRequest, add_service, safe_deserializer

EMBED = "/hubless.v1.EmbeddingsService/Embed"
SERVICE = embeddings_pb2.DESCRIPTOR.services_by_name["EmbeddingsService"]


def test_safe_deserializer_parses_and_reports() -> None:
    parse = safe_deserializer(embeddings_pb2.EmbedRequest)
    ok = parse(embeddings_pb2.EmbedRequest(texts=["a"]).SerializeToString())
    assert isinstance(ok, embeddings_pb2.EmbedRequest) and list(ok.texts) == ["a"]
    bad_utf8 = b"\x0a\x02\xff\xfe"  # field 1 (texts), 2 bytes that are not UTF-8
    for body in (bad_utf8, b"\xff\xff\xff\xff\xff", b"\x0a\x10abc"):
        result = parse(body)
        assert isinstance(result, UndecodableRequest)
        assert result.message_type == "hubless.v1.EmbedRequest"
        assert "hubless.v1.EmbedRequest" in result.describe()


class _Servicer:
    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def Embed(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.seen.append(request)
        if isinstance(request, UndecodableRequest):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.describe())
        return embeddings_pb2.EmbedResponse(dimension=len(request.texts))


def test_add_service_routes_undecodable_bodies_to_the_servicer() -> None:
    servicer = _Servicer()

    async def scenario() -> None:
        server = grpc.aio.server()
        add_service(server, SERVICE, servicer)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                raw = channel.unary_unary(EMBED)
                good = embeddings_pb2.EmbedRequest(texts=["a", "b"]).SerializeToString()
                reply = embeddings_pb2.EmbedResponse.FromString(await raw(good, timeout=5))
                assert reply.dimension == 2
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await raw(b"\x0a\x02\xff\xfe", timeout=5)
                assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
                assert "hubless.v1.EmbedRequest" in (info.value.details() or "")
        finally:
            await server.stop(0)

    asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    assert isinstance(servicer.seen[-1], UndecodableRequest)


def test_add_service_refuses_a_servicer_missing_a_method() -> None:
    async def scenario() -> None:
        server = grpc.aio.server()
        with pytest.raises(TypeError, match=r"does not implement hubless\.v1\.EmbeddingsService"):
            add_service(server, SERVICE, object())

    asyncio.run(scenario())
