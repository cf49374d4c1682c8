"""The drain window (``--drain-delay``): on stop, health turns NOT_SERVING and new hubless
calls get UNAVAILABLE/SHUTTING_DOWN with a 0 s RetryInfo while the calls in flight finish;
no call ever ends CANCELLED. Fake runtimes, real sockets."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from hubless.v1 import (
    conversation_pb2,
    conversation_pb2_grpc,
    embeddings_pb2,
    embeddings_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)
from tests.server.conftest import StartFake
from tests.server.fakes import FakeRuntime
from tests.server.harness import RunningServer
from tests.server.http_calls import call, free_port
from tests.server.rich_errors import details_of

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING
DELAY_S = 1.5


@dataclass
class Outcome:
    start: float
    end: float
    code: str
    reason: str = ""
    retry_s: float | None = None


def outcome_of(start: float, error: grpc.RpcError | None) -> Outcome:
    end = time.monotonic()
    if error is None:
        return Outcome(start, end, "OK")
    code = error.code().name
    try:
        details = details_of(error)
    except AssertionError:  # gRPC's own refusal (no details)
        return Outcome(start, end, code)
    retry = details.retry.retry_delay.ToNanoseconds() / 1e9 if details.retry else None
    return Outcome(start, end, code, details.reason, retry)


def begin_stop(server: RunningServer, grace: float = 10) -> Future[None]:
    """``server.stop(grace)`` started on the server's loop, not waited for."""
    return asyncio.run_coroutine_threadsafe(server.server.stop(grace), server.loop)


def health(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def assert_shutting_down(outcome: Outcome) -> None:
    assert (outcome.code, outcome.reason, outcome.retry_s) == ("UNAVAILABLE", "SHUTTING_DOWN", 0)


def test_drain_refuses_new_calls_and_finishes_the_calls_in_flight(
    start_fake: StartFake, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hubless_server.access")
    server = start_fake(
        ["all-minilm-l6-v2", "dialogpt-small"],
        "--drain-delay",
        str(DELAY_S),
        "--grace-period",
        "10",
        "--tasks",
        "embedding,conversation",
    )
    channel = server.channel
    embed = embeddings_pb2_grpc.EmbeddingsServiceStub(channel).Embed
    chat = conversation_pb2_grpc.ConversationServiceStub(channel)
    assert health(channel) == SERVING

    # Load: closed-loop Embed callers, each on its own channel, all along.
    outcomes: list[Outcome] = []
    running = threading.Event()
    running.set()

    def caller(k: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as own:
            stub = embeddings_pb2_grpc.EmbeddingsServiceStub(own)
            while running.is_set():
                start = time.monotonic()
                try:
                    stub.Embed(embeddings_pb2.EmbedRequest(texts=[f"load {k}"]), timeout=10)
                except grpc.RpcError as exc:
                    outcomes.append(outcome_of(start, exc))
                    time.sleep(0.01)
                else:
                    outcomes.append(outcome_of(start, None))

    callers = [threading.Thread(target=caller, args=(k,)) for k in range(6)]
    for thread in callers:
        thread.start()

    # In flight at the stop: streams of ~1 s of generation, a reply, and Embed calls (each
    # forward pass takes 50 ms).
    FakeRuntime.step_delay = 0.01
    FakeRuntime.delay = 0.05
    request = conversation_pb2.StreamReplyRequest(turns=["hi"], max_new_tokens=100)
    streams = [chat.StreamReply(request, timeout=30) for _ in range(3)]
    firsts = [next(stream) for stream in streams]
    assert all(first.model.name == "dialogpt-small" for first in firsts)
    reply = chat.Reply.future(
        conversation_pb2.ReplyRequest(turns=["hello"], max_new_tokens=100), timeout=30
    )
    time.sleep(0.2)  # the reply reaches its handler; the load goes on

    t_stop = time.monotonic()
    stopping = begin_stop(server)
    while health(channel) != NOT_SERVING:
        assert time.monotonic() - t_stop < 1, "health did not turn NOT_SERVING at once"
        time.sleep(0.01)
    t_not_serving = time.monotonic()
    assert health(channel, "hubless.v1.EmbeddingsService") == NOT_SERVING

    # New calls of every shape are refused with the retryable status; health and
    # reflection are still answered.
    for fn in (
        lambda: embed(embeddings_pb2.EmbedRequest(texts=["new"]), timeout=5),
        lambda: next(chat.StreamReply(request, timeout=5)),
        lambda: models_pb2_grpc.ModelsServiceStub(channel).ListModels(
            models_pb2.ListModelsRequest(), timeout=5
        ),
    ):
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            fn()
        assert_shutting_down(outcome_of(start, info.value))
        assert "shutting down" in (info.value.details() or "")
        trailers = dict(info.value.trailing_metadata() or ())  # type: ignore[attr-defined]
        assert trailers["grpc-retry-pushback-ms"] == "1"  # gRPC's own retries: at once
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    assert any(
        s.name == "hubless.v1.EmbeddingsService"
        for s in next(answers).list_services_response.service
    )

    time.sleep(0.4)  # more load inside the window
    running.clear()
    for thread in callers:
        thread.join(15)
    assert not stopping.done(), "the listener closed before --drain-delay"

    # The calls in flight at the stop all finish, with every token.
    for stream in streams:
        last = list(stream)[-1]
        assert last.finish_reason == conversation_pb2.FINISH_REASON_LENGTH
    assert reply.result().model.name == "dialogpt-small"
    stopping.result(30)
    assert time.monotonic() - t_stop >= DELAY_S

    # Then the listener is closed: gRPC's own UNAVAILABLE (connection refused).
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        embed(embeddings_pb2.EmbedRequest(texts=["late"]), timeout=5)
    assert outcome_of(start, info.value).code == "UNAVAILABLE"

    assert not any(o.code == "CANCELLED" for o in outcomes)
    after = [o for o in outcomes if o.start >= t_not_serving]
    assert len(after) >= 6
    for outcome in after:
        assert_shutting_down(outcome)
    for outcome in outcomes:  # before the signal OK; between the signal and NOT_SERVING either
        assert outcome.code == "OK" or (outcome.reason == "SHUTTING_DOWN" and outcome.end > t_stop)
    in_flight = [o for o in outcomes if o.start < t_stop < o.end]
    assert in_flight and all(o.code == "OK" for o in in_flight)
    refused = [
        r
        for r in caplog.records
        if r.name == "hubless_server.access"
        and getattr(r, "fields", {}).get("code") == "UNAVAILABLE"
    ]
    assert len(refused) >= len(after)
    assert "shutting down" in refused[0].fields["details"]  # type: ignore[attr-defined]


def test_drain_delay_zero_stops_at_once(start_fake: StartFake) -> None:
    server = start_fake(["all-minilm-l6-v2"])  # the harness gives --drain-delay 0
    started = time.monotonic()
    begin_stop(server).result(10)
    assert time.monotonic() - started < 1
    with pytest.raises(grpc.RpcError) as info:
        embeddings_pb2_grpc.EmbeddingsServiceStub(server.channel).Embed(
            embeddings_pb2.EmbedRequest(texts=["late"]), timeout=5
        )
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE


def test_http_door_answers_503_while_draining(start_fake: StartFake) -> None:
    port = free_port()
    server = start_fake(
        ["all-minilm-l6-v2"], "--http-port", str(port), "--drain-delay", "2", "--tasks", "embedding"
    )
    url = f"http://127.0.0.1:{port}"
    assert call("POST", f"{url}/v1/embeddings", {"input": ["before"]}).status == 200
    stopping = begin_stop(server)
    deadline = time.monotonic() + 1
    while call("GET", f"{url}/readyz").status != 503:
        assert time.monotonic() < deadline, "/readyz did not turn 503 at once"
        time.sleep(0.01)
    answer = call("POST", f"{url}/v1/embeddings", {"input": ["during"]})
    assert answer.status == 503
    assert answer.headers["retry-after"] == "0"
    assert answer.error["code"] == "shutting_down"
    assert answer.error["grpc_code"] == "UNAVAILABLE"
    task = call("POST", f"{url}/v1/tasks/embed", {"texts": ["during"]})
    assert (task.status, task.error["code"]) == (503, "shutting_down")
    assert call("GET", f"{url}/healthz").status == 200  # alive, only not ready
    assert not stopping.done()
    stopping.result(30)


def test_a_retrying_client_moves_to_another_replica(start_fake: StartFake) -> None:
    """The Python client's default retry policy retries UNAVAILABLE; the refusal's pushback
    (1 ms) makes it retry at once, and round robin sends the retry to the other server."""
    from hubless_client import Client

    draining = start_fake(["all-minilm-l6-v2"], "--drain-delay", "3", "--tasks", "embedding")
    other = start_fake(["all-minilm-l6-v2"], "--tasks", "embedding")
    target = f"ipv4:127.0.0.1:{draining.port},127.0.0.1:{other.port}"
    with Client(target, timeout=5, options=[("grpc.lb_policy_name", "round_robin")]) as client:
        for k in range(10):  # both subchannels connected
            client.embed([f"warm {k}"])
        stopping = begin_stop(draining)
        while health(draining.channel) != NOT_SERVING:
            time.sleep(0.01)
        results = [client.embed([f"during {k}"]) for k in range(20)]
        assert not stopping.done()
    assert len(results) == 20
    refused = draining.server.transport.drain.refused  # type: ignore[union-attr]
    assert refused >= 5, refused  # about half the picks went to the draining server
    stopping.result(30)
