"""Hostile bytes never reach a traceback: a body that does not parse is INVALID_ARGUMENT
MALFORMED_REQUEST on every service (health and reflection included), one log line, counted;
an unexpected error logs its traceback at most once a minute."""

from __future__ import annotations

import logging

import grpc
import pytest
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from hubless_server.observability import metrics
from hubless_server.services import errors
from hubless_server.services.errors import TracebackThrottle, log_internal
from hubless_server.transport.reflection import V1_SERVICE
from tests.server.conftest import StartFake
from tests.server.fakes import FakeRuntime
from tests.server.raw_calls import METHODS, Records, call_raw
from tests.server.rich_errors import details_of

# The shapes that used to answer UNKNOWN with a logged DecodeError traceback.
BAD_BODIES = {
    "invalid-utf8": b"\x0a\x02\xff\xfe",  # texts[0] (or name) = 2 bytes that are not UTF-8
    "truncated": b"\x0a\x10abc",  # a length of 16, 3 bytes follow
    "bad-varint": b"\x10" + b"\xff" * 11,  # a varint longer than 10 bytes
    "end-group": b"\x0c",  # an end-group tag with no group
}


def undecodable(request: type[Message]) -> list[bytes]:
    """The bodies of :data:`BAD_BODIES` that ``request`` cannot parse (a wrong wire type for
    a known field number is kept as an unknown field, so a few do parse for some types)."""
    bad = []
    for body in BAD_BODIES.values():
        try:
            request.FromString(body)
        except DecodeError:
            bad.append(body)
    return bad


def undecodable_count(method: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "hubless_undecodable_requests_total", {"method": method}
    )
    return value or 0.0


def test_every_method_answers_undecodable_bodies_with_invalid_argument(
    start_fake: StartFake,
) -> None:
    server = start_fake()
    sent = 0
    with Records() as logs:
        for method in METHODS:
            label = method.path.split("/")[1].rsplit(".", 1)[-1] + "." + method.name
            before = undecodable_count(label)
            bodies = undecodable(method.request)
            assert len(bodies) >= 3, method.path
            sent += len(bodies)
            for body in bodies:
                outcome = call_raw(server.channel, method, body)
                assert outcome.code is grpc.StatusCode.INVALID_ARGUMENT, (method.path, body)
                assert outcome.error is not None
                details = details_of(outcome.error)
                assert details.reason == "MALFORMED_REQUEST"
                type_name = method.request.DESCRIPTOR.full_name
                assert type_name in outcome.error.details()  # type: ignore[attr-defined]
                assert details.info.metadata["message_type"] == type_name
                assert details.info.metadata["bytes"] == str(len(body))
            assert undecodable_count(label) == before + len(bodies)
    assert not logs.tracebacks()
    lines = [r for r in logs.records if r.getMessage().startswith("undecodable ")]
    assert len(lines) == sent  # one line per request
    assert all(r.levelno == logging.WARNING and "\n" not in r.getMessage() for r in lines)
    health = health_pb2_grpc.HealthStub(server.channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1  # SERVING


def test_health_and_reflection_reject_garbage_without_a_traceback(start_fake: StartFake) -> None:
    server = start_fake(["all-minilm-l6-v2"])
    channel = server.channel
    with Records() as logs:
        unary = {
            "/grpc.health.v1.Health/Check": health_pb2.HealthCheckRequest,
            "/grpc.health.v1.Health/List": health_pb2.HealthListRequest,
        }
        for path, request in unary.items():
            for body in undecodable(request):
                with pytest.raises(grpc.RpcError) as info:
                    channel.unary_unary(path)(body, timeout=5)
                assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
                assert details_of(info.value).reason == "MALFORMED_REQUEST"
        for body in undecodable(health_pb2.HealthCheckRequest):
            with pytest.raises(grpc.RpcError) as info:
                for _ in channel.unary_stream("/grpc.health.v1.Health/Watch")(body, timeout=5):
                    pass
            assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
            for service in ("grpc.reflection.v1alpha.ServerReflection", V1_SERVICE):
                call = channel.stream_stream(f"/{service}/ServerReflectionInfo")
                good = reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()
                with pytest.raises(grpc.RpcError) as info:
                    list(call(iter([good, body]), timeout=5))
                assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
                assert "grpc.reflection.v1alpha.ServerReflectionRequest" in (
                    info.value.details()  # type: ignore[attr-defined]
                )
    assert not logs.tracebacks()
    assert undecodable_count("Health.Check") >= len(BAD_BODIES)
    assert undecodable_count("ServerReflection.ServerReflectionInfo") >= 2 * len(BAD_BODIES)
    # still healthy, and valid calls still work
    health = health_pb2_grpc.HealthStub(channel)
    embeddings = health_pb2.HealthCheckRequest(service="hubless.v1.EmbeddingsService")
    assert health.Check(embeddings, timeout=5).status == 1  # SERVING
    with pytest.raises(grpc.RpcError) as info:
        health.List(health_pb2.HealthListRequest(), timeout=5)
    assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
    call = channel.stream_stream(
        f"/{V1_SERVICE}/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    (answer,) = call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {s.name for s in answer.list_services_response.service}
    assert "hubless.v1.EmbeddingsService" in names


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _raise(message: str) -> BaseException:
    try:
        raise RuntimeError(message)
    except RuntimeError as exc:
        return exc


def test_traceback_throttle_logs_each_distinct_error_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock()
    throttle = TracebackThrottle(window_s=60, clock=clock)
    caplog.set_level(logging.ERROR, logger="hubless_server.services.errors")

    def logged() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "hubless_server.services.errors"]

    same = [_raise("tensor has nan\nmore detail") for _ in range(4)]  # one line: same where
    for exc in same:
        log_internal(exc, "EmbeddingsService.Embed", throttle)
    assert len(logged()) == 1 and logged()[0].exc_info
    log_internal(_raise("another bug"), "EmbeddingsService.Embed", throttle)
    assert len(logged()) == 2  # a different message is a different error
    clock.now += 61
    log_internal(same[0], "EmbeddingsService.Embed", throttle)
    assert len(logged()) == 3
    last = logged()[-1]
    assert last.exc_info and "repeated 3 times" in last.getMessage()
    log_internal(same[0], "EmbeddingsService.Embed", throttle)
    assert len(logged()) == 3
    assert TracebackThrottle.key(same[0])[:2] == ("RuntimeError", "tensor has nan")


def test_throttle_forgets_the_oldest_error_beyond_its_size() -> None:
    throttle = TracebackThrottle(window_s=60, clock=_Clock(), max_errors=2)
    first, second, third = _raise("a"), _raise("b"), _raise("c")
    assert throttle.admit(first) == (True, 0)
    assert throttle.admit(second) == (True, 0)
    assert throttle.admit(third) == (True, 0)  # "a" is forgotten
    assert throttle.admit(first) == (True, 0)
    assert throttle.admit(third) == (False, 1)


def test_a_repeated_internal_error_logs_one_traceback(
    start_fake: StartFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(errors, "_TRACEBACKS", TracebackThrottle())
    server = start_fake(["all-minilm-l6-v2"])
    embed = next(m for m in METHODS if m.name == "Embed")
    body = embed.request(texts=["crash"]).SerializeToString()  # the fake runtime raises
    with Records() as logs:
        for _ in range(5):
            outcome = call_raw(server.channel, embed, body)
            assert outcome.code is grpc.StatusCode.INTERNAL
            assert outcome.error is not None and details_of(outcome.error).reason == "INTERNAL"
    internal = [r for r in logs.tracebacks() if r.name == "hubless_server.services.errors"]
    assert len(internal) == 1
    assert "RuntimeError" in internal[0].getMessage()
    assert FakeRuntime.batches  # it did run
