"""Server reflection under grpc.reflection.v1alpha and grpc.reflection.v1, with real calls."""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from hubless_server.transport.reflection import V1_FILE, V1_SERVICE, v1_file_descriptor
from tests.server.conftest import StartFake
from tests.server.harness import RunningServer

SERVICES = {
    "hubless.v1.EmbeddingsService",
    "hubless.v1.EmotionService",
    "hubless.v1.SentimentService",
    "hubless.v1.ZeroShotService",
    "hubless.v1.SummarizationService",
    "hubless.v1.ConversationService",
    "hubless.v1.ModelsService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
}


def ask_v1alpha(
    server: RunningServer, *requests: reflection_pb2.ServerReflectionRequest
) -> list[reflection_pb2.ServerReflectionResponse]:
    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    return list(stub.ServerReflectionInfo(iter(requests), timeout=5))


def ask_v1(
    server: RunningServer, *requests: reflection_pb2.ServerReflectionRequest
) -> list[reflection_pb2.ServerReflectionResponse]:
    """A raw call on the v1 method path; the messages are wire-identical to v1alpha's."""
    call = server.channel.stream_stream(
        f"/{V1_SERVICE}/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return list(call(iter(requests), timeout=5))


def listed(responses: list[reflection_pb2.ServerReflectionResponse]) -> set[str]:
    return {s.name for r in responses for s in r.list_services_response.service}


def files(
    response: reflection_pb2.ServerReflectionResponse,
) -> list[descriptor_pb2.FileDescriptorProto]:
    out = []
    for raw in response.file_descriptor_response.file_descriptor_proto:
        proto = descriptor_pb2.FileDescriptorProto()
        proto.ParseFromString(raw)
        out.append(proto)
    return out


def test_both_versions_list_every_service(start_fake: StartFake) -> None:
    server = start_fake(["all-minilm-l6-v2"])
    list_services = reflection_pb2.ServerReflectionRequest(list_services="")
    assert listed(ask_v1alpha(server, list_services)) == SERVICES
    assert listed(ask_v1(server, list_services)) == SERVICES


def test_both_versions_describe_a_hubless_service(start_fake: StartFake) -> None:
    server = start_fake(["all-minilm-l6-v2"])
    request = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="hubless.v1.EmbeddingsService"
    )
    for ask in (ask_v1alpha, ask_v1):
        (response,) = ask(server, request)
        names = {f.name for f in files(response)}
        assert "hubless/v1/embeddings.proto" in names
        embeddings = next(f for f in files(response) if f.name == "hubless/v1/embeddings.proto")
        assert [m.name for m in embeddings.service[0].method] == ["Embed"]


def test_v1_reflection_describes_itself(start_fake: StartFake) -> None:
    server = start_fake(["all-minilm-l6-v2"])
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=V1_SERVICE)
    (response,) = ask_v1(server, request)
    (proto,) = files(response)
    assert proto.name == V1_FILE and proto.package == "grpc.reflection.v1"
    method = proto.service[0].method[0]
    assert method.input_type == ".grpc.reflection.v1.ServerReflectionRequest"
    assert method.client_streaming and method.server_streaming


def test_unknown_symbol_is_an_error_response(start_fake: StartFake) -> None:
    server = start_fake(["all-minilm-l6-v2"])
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.such.Symbol")
    (response,) = ask_v1(server, request)
    assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_v1_descriptor_is_v1alpha_renamed() -> None:
    proto = v1_file_descriptor()
    text = str(proto)
    assert "v1alpha" not in text.replace("grpc_reflection_v1alpha", "")
    assert [m.name for m in proto.message_type] == [
        m.name for m in reflection_pb2.DESCRIPTOR.message_types_by_name.values()
    ]
    assert not proto.options.deprecated
