"""Server reflection under both names: ``grpc.reflection.v1`` and ``grpc.reflection.v1alpha``.

grpcio-reflection (1.85) ships only v1alpha, while current grpcurl, Postman and grpc-go
clients ask v1 first. The two protocols are wire-identical (v1 is v1alpha renamed), so no
reflection code is copied: the v1alpha servicer's handler is registered a second time under
the v1 service name with v1alpha's (de)serializers, and a v1 file descriptor derived from
v1alpha's (same messages, package ``grpc.reflection.v1``) is added to the descriptor pool so
that ``list`` and ``describe`` show the v1 service as well.

Both names parse request bodies with never-raising deserializers
(:mod:`hubless_server.services.wire`):
a body that is not a ``ServerReflectionRequest`` ends the stream with INVALID_ARGUMENT instead
of an UNKNOWN status and a logged traceback
(:class:`hubless_server.transport.guarded.GuardedReflection`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

from hubless_server.services.wire import add_service, safe_deserializer
from hubless_server.transport.guarded import GuardedReflection

log = logging.getLogger(__name__)

V1ALPHA_SERVICE = reflection.SERVICE_NAME
V1_SERVICE = "grpc.reflection.v1.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"
_V1ALPHA_PACKAGE = "grpc.reflection.v1alpha"
_V1_PACKAGE = "grpc.reflection.v1"


def v1_file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """v1alpha's reflection.proto renamed to v1: package, file name, type references and the
    file options of the upstream v1 file (not deprecated)."""
    proto = descriptor_pb2.FileDescriptorProto()
    proto.ParseFromString(reflection_pb2.DESCRIPTOR.serialized_pb)
    old, new = f".{_V1ALPHA_PACKAGE}.", f".{_V1_PACKAGE}."
    proto.name = V1_FILE
    proto.package = _V1_PACKAGE
    for message in proto.message_type:
        for message_field in message.field:
            if message_field.type_name.startswith(old):
                message_field.type_name = new + message_field.type_name.removeprefix(old)
    for service in proto.service:
        for method in service.method:
            method.input_type = new + method.input_type.removeprefix(old)
            method.output_type = new + method.output_type.removeprefix(old)
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    proto.options.ClearField("deprecated")
    return proto


def _add_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    try:
        pool.FindFileByName(V1_FILE)
    except KeyError:
        pool.AddSerializedFile(v1_file_descriptor().SerializeToString())


def enable_reflection(service_names: Sequence[str], server: grpc.aio.Server) -> None:
    """Serve reflection for ``service_names`` (plus both reflection services) under the v1
    and the v1alpha names, from the default descriptor pool."""
    pool = descriptor_pool.Default()
    _add_v1_descriptor(pool)
    names = [*service_names, V1_SERVICE, V1ALPHA_SERVICE]
    servicer = GuardedReflection(reflection.aio.ReflectionServicer(names, pool=pool))
    add_service(server, reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"], servicer)
    handlers = {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=safe_deserializer(reflection_pb2.ServerReflectionRequest),
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1_SERVICE, handlers),))
    log.debug("reflection served as %s and %s", V1_SERVICE, V1ALPHA_SERVICE)
