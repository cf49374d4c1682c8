"""The ``grpc.health.v1`` messages, built at import time so the client needs no extra package.

The two messages are registered in a private descriptor pool, so this module coexists with
``grpcio-health-checking`` (which registers the same names in the default pool).
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from hubless_client.types import HealthStatus

CHECK_METHOD = "/grpc.health.v1.Health/Check"

_F = descriptor_pb2.FieldDescriptorProto


def _build() -> tuple[type, type]:
    proto = descriptor_pb2.FileDescriptorProto(
        name="hubless_client/grpc_health_v1.proto", package="grpc.health.v1", syntax="proto3"
    )
    request = proto.message_type.add(name="HealthCheckRequest")
    request.field.add(name="service", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    response = proto.message_type.add(name="HealthCheckResponse")
    status_enum = response.enum_type.add(name="ServingStatus")
    for number, name in enumerate(("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")):
        status_enum.value.add(name=name, number=number)
    response.field.add(
        name="status",
        number=1,
        type=_F.TYPE_ENUM,
        label=_F.LABEL_OPTIONAL,
        type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    request_cls, response_cls = (
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{proto.package}.{name}"))
        for name in ("HealthCheckRequest", "HealthCheckResponse")
    )
    return request_cls, response_cls


HealthCheckRequest, HealthCheckResponse = _build()

_STATUS = {
    0: HealthStatus.UNKNOWN,
    1: HealthStatus.SERVING,
    2: HealthStatus.NOT_SERVING,
    3: HealthStatus.SERVICE_UNKNOWN,
}


def encode_request(service: str) -> bytes:
    """Serialised ``HealthCheckRequest``."""
    return HealthCheckRequest(service=service).SerializeToString()


def decode_status(data: bytes) -> HealthStatus:
    """The status in a serialised ``HealthCheckResponse``."""
    return _STATUS.get(HealthCheckResponse.FromString(data).status, HealthStatus.UNKNOWN)
