"""Server behaviour over a real 127.0.0.1 socket with fake runtimes: routing, fallback,
health, reflection, deadlines, cancellation, overload, streaming, errors, metrics, drain."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hubless.v1 import (
    common_pb2,
    conversation_pb2,
    conversation_pb2_grpc,
    embeddings_pb2,
    embeddings_pb2_grpc,
    emotion_pb2,
    emotion_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    sentiment_pb2,
    sentiment_pb2_grpc,
    summarization_pb2,
    summarization_pb2_grpc,
    zero_shot_pb2,
    zero_shot_pb2_grpc,
)
from hubless_server.models.registry import RuntimeFactory
from tests.server.conftest import StartFake
from tests.server.fakes import CATALOG, FakeRuntime
from tests.server.harness import RunningServer
from tests.server.http_calls import call, free_port

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health(server: RunningServer, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(server.channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def models(server: RunningServer) -> dict[str, models_pb2.ModelInfo]:
    stub = models_pb2_grpc.ModelsServiceStub(server.channel)
    return {m.name: m for m in stub.ListModels(models_pb2.ListModelsRequest(), timeout=5).models}


def embed(server: RunningServer, *texts: str, timeout: float = 10, **kw: object) -> object:
    stub = embeddings_pb2_grpc.EmbeddingsServiceStub(server.channel)
    return stub.Embed(embeddings_pb2.EmbedRequest(texts=list(texts), **kw), timeout=timeout)


def rpc_error(fn: object, *args: object, **kw: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kw)  # type: ignore[operator]
    return info.value


def computed_texts() -> list[str]:
    return [getattr(i, "text", "") for _, batch in FakeRuntime.batches for i in batch]


def test_every_service_answers_with_its_model_ref(start_fake: StartFake) -> None:
    server = start_fake()
    ch = server.channel
    response = embed(server, "one two", "three")
    assert response.dimension == 3 and len(response.embeddings) == 2
    assert response.embeddings[0].tokens == 2
    assert response.model.name == "all-minilm-l6-v2"
    assert response.model.repo_id == CATALOG["all-minilm-l6-v2"][0]
    assert len(response.model.commit) == 40

    detect = emotion_pb2_grpc.EmotionServiceStub(ch).DetectEmotion(
        emotion_pb2.DetectEmotionRequest(texts=["happy"]), timeout=10
    )
    assert detect.results[0].label == "surprise" and len(detect.results[0].scores) == 7
    assert detect.model.name == "emotion-english-distilroberta"

    analyze = sentiment_pb2_grpc.SentimentServiceStub(ch).AnalyzeSentiment(
        sentiment_pb2.AnalyzeSentimentRequest(texts=["great"]), timeout=10
    )
    result = analyze.results[0]
    assert analyze.model.name == "bert-multilingual-sentiment"
    assert result.label == "5 stars"
    assert result.polarity == sentiment_pb2.POLARITY_POSITIVE
    assert result.polarity_score == pytest.approx(4 / 7)
    assert [s.label for s in result.scores][:1] == ["5 stars"]

    classify = zero_shot_pb2_grpc.ZeroShotServiceStub(ch).ClassifyZeroShot(
        zero_shot_pb2.ClassifyZeroShotRequest(texts=["t"], candidate_labels=["a", "b"]), timeout=10
    )
    assert {s.label for s in classify.results[0].scores} == {"a", "b"}
    assert classify.model.name == "bart-large-mnli"

    summary = summarization_pb2_grpc.SummarizationServiceStub(ch).Summarize(
        summarization_pb2.SummarizeRequest(texts=["a long text to summarise"]), timeout=10
    )
    assert summary.summaries[0].text and summary.model.name == "bart-large"

    reply = conversation_pb2_grpc.ConversationServiceStub(ch).Reply(
        conversation_pb2.ReplyRequest(turns=["hi"]), timeout=10
    )
    assert reply.model.name == "dialogpt-medium" and reply.tokens == 3
    assert reply.finish_reason == conversation_pb2.FINISH_REASON_STOP


def test_sentiment_request_picks_the_model_by_name(start_fake: StartFake) -> None:
    server = start_fake()
    stub = sentiment_pb2_grpc.SentimentServiceStub(server.channel)
    for name, label, polarity in (
        ("twitter-roberta-sentiment", "positive", sentiment_pb2.POLARITY_POSITIVE),
        ("distilbert-sst2", "POSITIVE", sentiment_pb2.POLARITY_POSITIVE),
    ):
        response = stub.AnalyzeSentiment(
            sentiment_pb2.AnalyzeSentimentRequest(texts=["x"], model=name), timeout=10
        )
        assert response.model.name == name
        assert response.results[0].label == label
        assert response.results[0].polarity == polarity
    listed = models(server)
    assert [
        n for n, m in listed.items() if m.task == common_pb2.TASK_SENTIMENT and m.is_default
    ] == ["bert-multilingual-sentiment"]


def test_unknown_or_foreign_model_is_not_found(start_fake: StartFake) -> None:
    server = start_fake()
    error = rpc_error(embed, server, "x", model="no-such-model")
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert "available embedding models: all-minilm-l6-v2" in error.details()
    stub = sentiment_pb2_grpc.SentimentServiceStub(server.channel)
    error = rpc_error(
        stub.AnalyzeSentiment,
        sentiment_pb2.AnalyzeSentimentRequest(texts=["x"], model="bart-large"),
    )
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert "task 'summarization'" in error.details() and "distilbert-sst2" in error.details()


def test_task_without_model_is_unavailable_and_not_serving(start_fake: StartFake) -> None:
    server = start_fake(["all-minilm-l6-v2", "dialogpt-small"])
    stub = summarization_pb2_grpc.SummarizationServiceStub(server.channel)
    error = rpc_error(stub.Summarize, summarization_pb2.SummarizeRequest(texts=["x"]), timeout=5)
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert "bart-large: missing" in error.details()
    # the relative command: the client need not (and must not) learn the volume's path
    assert "`hubless-fetch fetch bart-large`" in error.details()
    assert str(server.server.settings.models_dir) not in error.details()
    assert health(server, "hubless.v1.SummarizationService") == NOT_SERVING
    assert health(server, "hubless.v1.EmotionService") == NOT_SERVING
    assert health(server, "hubless.v1.EmbeddingsService") == SERVING
    assert health(server, "hubless.v1.ConversationService") == SERVING
    assert health(server, "hubless.v1.ModelsService") == SERVING
    assert health(server, "") == SERVING  # every installed model's task has one loaded
    assert embed(server, "still works").model.name == "all-minilm-l6-v2"
    listed = models(server)
    assert listed["bart-large"].state == models_pb2.MODEL_STATE_MISSING
    assert "hubless-fetch fetch bart-large" in listed["bart-large"].error


def test_ready_counts_the_installed_tasks_unless_tasks_or_require_models_name_them(
    start_fake: StartFake,
) -> None:
    """``--ready-when all``: a subset volume is ready once its models load; a task named by
    ``--tasks`` (or every served task with ``--require-models``) is awaited even when nothing
    of it is installed; an installed model that cannot load keeps the server not ready. The
    HTTP ``/readyz`` reads the same status."""
    port = free_port()
    subset = start_fake(["all-minilm-l6-v2", "distilbert-sst2"], "--http-port", str(port))
    assert health(subset, "") == SERVING
    assert health(subset, "hubless.v1.ZeroShotService") == NOT_SERVING
    assert call("GET", f"http://127.0.0.1:{port}/readyz").json()["status"] == "SERVING"
    named = start_fake(["all-minilm-l6-v2"], "--tasks", "embedding,zero-shot")
    assert health(named, "") == NOT_SERVING
    required = start_fake(["all-minilm-l6-v2"], "--tasks", "all", "--require-models")
    assert health(required, "") == NOT_SERVING
    FakeRuntime.fail_load = {"all-minilm-l6-v2"}
    broken = start_fake(["all-minilm-l6-v2", "distilbert-sst2"])
    assert health(broken, "hubless.v1.SentimentService") == SERVING
    assert health(broken, "") == NOT_SERVING


def test_ready_when_any_serves_the_whole_server_with_one_task(start_fake: StartFake) -> None:
    partial = start_fake(["all-minilm-l6-v2"], "--ready-when", "any")
    assert health(partial, "") == SERVING
    assert health(partial, "hubless.v1.SummarizationService") == NOT_SERVING
    scoped = start_fake(["all-minilm-l6-v2"], "--tasks", "embedding")  # all = every served task
    assert health(scoped, "") == SERVING


def test_empty_volume_serves_nothing(start_fake: StartFake) -> None:
    server = start_fake([])
    assert health(server, "") == NOT_SERVING
    error = rpc_error(embed, server, "x")
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert "hubless-fetch fetch all-minilm-l6-v2" in error.details()
    unknown = rpc_error(
        health_pb2_grpc.HealthStub(server.channel).Check,
        health_pb2.HealthCheckRequest(service="nope"),
        timeout=5,
    )
    assert unknown.code() is grpc.StatusCode.NOT_FOUND


def test_failed_load_falls_back_to_the_next_model(start_fake: StartFake) -> None:
    FakeRuntime.fail_load = {"dialogpt-medium"}
    server = start_fake()
    stub = conversation_pb2_grpc.ConversationServiceStub(server.channel)
    reply = stub.Reply(conversation_pb2.ReplyRequest(turns=["hi"]), timeout=10)
    assert reply.model.name == "dialogpt-small"
    listed = models(server)
    assert listed["dialogpt-medium"].state == models_pb2.MODEL_STATE_FAILED
    # the library's message stays in the log: the client gets the kind of failure
    assert listed["dialogpt-medium"].error == (
        "failed to load (RuntimeError); the server log has the details"
    )
    assert listed["dialogpt-small"].is_default
    error = rpc_error(
        stub.Reply, conversation_pb2.ReplyRequest(turns=["hi"], model="dialogpt-medium")
    )
    assert error.code() is grpc.StatusCode.NOT_FOUND and "failed" in error.details()


def _corrupt(server_dir: Path, name: str, same_size: bool) -> None:
    (snapshot,) = (
        server_dir / f"models--{CATALOG[name][0].replace('/', '--')}" / "snapshots"
    ).iterdir()
    config = snapshot / "config.json"
    data = config.read_bytes()
    config.write_bytes(data.replace(b"n", b"N") if same_size else data + b" ")


def test_corrupt_install_is_skipped(start_fake: StartFake, tmp_path: Path) -> None:
    from tests.server.fakes import make_fake_volume
    from tests.server.harness import settings_for

    volume = make_fake_volume(tmp_path / "corrupt", ["dialogpt-medium", "dialogpt-small"])
    _corrupt(volume, "dialogpt-medium", same_size=False)
    server = RunningServer(settings_for(volume, "--tasks", "conversation"), _factory())
    try:
        listed = models(server)
        assert listed["dialogpt-medium"].state == models_pb2.MODEL_STATE_FAILED
        assert "corrupt install: config.json" in listed["dialogpt-medium"].error
        assert listed["dialogpt-small"].is_default
    finally:
        server.stop()


def test_verify_sha256_catches_same_size_corruption(tmp_path: Path) -> None:
    from tests.server.fakes import make_fake_volume
    from tests.server.harness import settings_for

    volume = make_fake_volume(tmp_path / "v", ["dialogpt-medium", "dialogpt-small"])
    _corrupt(volume, "dialogpt-medium", same_size=True)
    for flags, medium_ok in (((), True), (("--verify-sha256",), False)):
        server = RunningServer(settings_for(volume, "--tasks", "conversation", *flags), _factory())
        try:
            state = models(server)["dialogpt-medium"].state
            assert (state == models_pb2.MODEL_STATE_READY) is medium_ok
        finally:
            server.stop()


def _factory() -> RuntimeFactory:
    from tests.server.fakes import fake_factory

    FakeRuntime.reset()
    return fake_factory


def test_loading_state_health_and_models_list(start_fake: StartFake) -> None:
    FakeRuntime.load_delay = 0.3
    server = start_fake(
        ["all-minilm-l6-v2", "distilbert-sst2"], "--tasks", "embedding,sentiment", wait=False
    )
    assert health(server, "") == NOT_SERVING
    assert health(server, "hubless.v1.ModelsService") == SERVING
    error = rpc_error(embed, server, "x")
    assert error.code() is grpc.StatusCode.UNAVAILABLE and "loading" in error.details()
    states = {m.state for m in models(server).values() if m.repo_id}
    assert models_pb2.MODEL_STATE_LOADING in states
    server.wait_loaded()
    assert health(server, "") == SERVING
    assert health(server, "hubless.v1.EmbeddingsService") == SERVING
    info = models(server)["all-minilm-l6-v2"]
    assert info.state == models_pb2.MODEL_STATE_READY
    assert info.load_seconds >= 0.25 and info.device == "cpu" and info.dtype == "float32"
    assert info.size_bytes > 0


def test_tasks_flag_limits_what_is_served(start_fake: StartFake) -> None:
    server = start_fake(None, "--tasks", "embedding")
    assert {m.task for m in models(server).values()} == {common_pb2.TASK_EMBEDDING}
    error = rpc_error(
        emotion_pb2_grpc.EmotionServiceStub(server.channel).DetectEmotion,
        emotion_pb2.DetectEmotionRequest(texts=["x"]),
        timeout=5,
    )
    assert error.code() is grpc.StatusCode.UNAVAILABLE and "disabled" in error.details()
    assert health(server, "hubless.v1.EmotionService") == NOT_SERVING


def test_no_load_alternates(start_fake: StartFake) -> None:
    server = start_fake(None, "--no-load-alternates")
    listed = models(server)
    assert listed["dialogpt-small"].state == models_pb2.MODEL_STATE_SKIPPED
    assert "not loaded" in listed["dialogpt-small"].error
    assert listed["distilbert-sst2"].state == models_pb2.MODEL_STATE_READY  # sentiment: all


def test_deadline_exceeded_and_queued_work_dropped(start_fake: StartFake) -> None:
    server = start_fake(["all-minilm-l6-v2"])
    FakeRuntime.delay = 0.6
    stub = embeddings_pb2_grpc.EmbeddingsServiceStub(server.channel)
    slow = stub.Embed.future(embeddings_pb2.EmbedRequest(texts=["slow"]), timeout=10)
    time.sleep(0.1)
    error = rpc_error(embed, server, "too late", timeout=0.2)
    assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert slow.result().embeddings[0].tokens == 1
    FakeRuntime.delay = 0.0
    embed(server, "after")
    assert "too late" not in computed_texts()


def test_cancelled_request_is_not_computed(start_fake: StartFake) -> None:
    server = start_fake(["all-minilm-l6-v2"])
    FakeRuntime.gate = threading.Event()
    stub = embeddings_pb2_grpc.EmbeddingsServiceStub(server.channel)
    blocker = stub.Embed.future(embeddings_pb2.EmbedRequest(texts=["blocker"]), timeout=10)
    _wait_for(lambda: "blocker" in computed_texts())
    doomed = stub.Embed.future(embeddings_pb2.EmbedRequest(texts=["doomed"]), timeout=10)
    time.sleep(0.1)
    assert doomed.cancel()
    time.sleep(0.1)
    FakeRuntime.gate.set()
    blocker.result()
    embed(server, "after")
    assert "doomed" not in computed_texts()


def test_full_queue_is_resource_exhausted(start_fake: StartFake) -> None:
    server = start_fake(["all-minilm-l6-v2"], "--max-queue", "2", "--max-texts", "2")
    FakeRuntime.gate = threading.Event()
    stub = embeddings_pb2_grpc.EmbeddingsServiceStub(server.channel)
    blocker = stub.Embed.future(embeddings_pb2.EmbedRequest(texts=["blocker"]), timeout=10)
    _wait_for(lambda: "blocker" in computed_texts())
    queued = stub.Embed.future(embeddings_pb2.EmbedRequest(texts=["q1", "q2"]), timeout=10)
    time.sleep(0.1)
    error = rpc_error(embed, server, "overflow", timeout=5)
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "overloaded" in error.details()
    FakeRuntime.gate.set()
    assert len(queued.result().embeddings) == 2 and blocker.result()


def test_internal_error_does_not_kill_the_server(start_fake: StartFake) -> None:
    server = start_fake(["all-minilm-l6-v2"])
    error = rpc_error(embed, server, "crash")
    assert error.code() is grpc.StatusCode.INTERNAL
    assert "RuntimeError" in error.details() and "logged" in error.details()
    assert embed(server, "fine").embeddings[0].tokens == 1


def test_health_stays_responsive_during_inference(start_fake: StartFake) -> None:
    server = start_fake(["all-minilm-l6-v2", "dialogpt-small"])
    FakeRuntime.delay = 1.0
    stub = embeddings_pb2_grpc.EmbeddingsServiceStub(server.channel)
    slow = stub.Embed.future(embeddings_pb2.EmbedRequest(texts=["slow"]), timeout=10)
    time.sleep(0.1)
    started = time.perf_counter()
    assert health(server, "hubless.v1.EmbeddingsService") == SERVING
    assert models(server)["all-minilm-l6-v2"].state == models_pb2.MODEL_STATE_READY
    assert time.perf_counter() - started < 0.5
    slow.result()


def test_reply_stream_sends_pieces_then_finish(start_fake: StartFake) -> None:
    server = start_fake(["dialogpt-small"])
    stub = conversation_pb2_grpc.ConversationServiceStub(server.channel)
    request = conversation_pb2.StreamReplyRequest(turns=["a", "b", "c", "d"], max_new_tokens=4)
    chunks = list(stub.StreamReply(request, timeout=10))
    assert "".join(c.text for c in chunks) == "w0 w1 w2 w3 "
    assert chunks[0].model.name == "dialogpt-small" and chunks[0].history_truncated
    assert not chunks[1].HasField("model")
    assert chunks[-1].finish_reason == conversation_pb2.FINISH_REASON_LENGTH
    assert all(c.finish_reason == 0 for c in chunks[:-1])


def test_cancelled_stream_stops_generation(start_fake: StartFake) -> None:
    server = start_fake(["dialogpt-small"])
    FakeRuntime.step_delay = 0.02
    stub = conversation_pb2_grpc.ConversationServiceStub(server.channel)
    stream = stub.StreamReply(
        conversation_pb2.StreamReplyRequest(turns=["hi"], max_new_tokens=100), timeout=10
    )
    for _ in range(3):
        next(stream)
    stream.cancel()
    time.sleep(0.2)
    steps = len(FakeRuntime.stream_steps)
    time.sleep(0.2)
    assert len(FakeRuntime.stream_steps) == steps < 50


def test_metrics_endpoint(start_fake: StartFake) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    server = start_fake(["all-minilm-l6-v2"], "--metrics-port", str(free))
    embed(server, "a", "b c")
    rpc_error(embed, server)
    port = server.server.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'hubless_requests_total{code="OK",method="EmbeddingsService.Embed"}' in text
    failed = 'hubless_requests_total{code="INVALID_ARGUMENT",method="EmbeddingsService.Embed"}'
    assert failed in text and "hubless_errors_total" not in text
    assert "process_resident_memory_bytes" in text and "_created" not in text
    assert 'hubless_batch_size_bucket{le="2.0",model="all-minilm-l6-v2"}' in text
    assert 'hubless_queue_depth{model="all-minilm-l6-v2"}' in text
    assert 'hubless_model_load_seconds{model="all-minilm-l6-v2"}' in text
    assert "hubless_request_latency_seconds_bucket" in text


def test_stop_drains_in_flight_requests(start_fake: StartFake) -> None:
    server = start_fake(["all-minilm-l6-v2"])
    FakeRuntime.delay = 0.5
    stub = embeddings_pb2_grpc.EmbeddingsServiceStub(server.channel)
    in_flight = stub.Embed.future(embeddings_pb2.EmbedRequest(texts=["drain me"]), timeout=10)
    time.sleep(0.1)
    started = time.perf_counter()
    server.call(server.server.stop(5))
    assert in_flight.result().embeddings[0].tokens == 2
    assert time.perf_counter() - started < 3
    error = rpc_error(embed, server, "refused", timeout=2)
    assert error.code() is grpc.StatusCode.UNAVAILABLE


def _wait_for(predicate: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_other_tasks_interleave_with_a_long_generation(start_fake: StartFake) -> None:
    server = start_fake(["all-minilm-l6-v2", "dialogpt-small"])
    FakeRuntime.step_delay = 0.02
    chat = conversation_pb2_grpc.ConversationServiceStub(server.channel)
    stream = chat.StreamReply(
        conversation_pb2.StreamReplyRequest(turns=["hi"], max_new_tokens=200), timeout=20
    )
    next(stream)  # generating: about 4 s in total
    started = time.perf_counter()
    assert embed(server, "meanwhile").model.name == "all-minilm-l6-v2"
    assert health(server, "hubless.v1.ConversationService") == SERVING
    assert time.perf_counter() - started < 1.0
    assert len(FakeRuntime.stream_steps) < 150  # the stream was still running
    stream.cancel()


def test_input_too_long_hint_names_the_field_and_its_value(start_fake: StartFake) -> None:
    """The hint reads the same to gRPC, grpcurl and HTTP callers (``truncation=VALUE`` as the
    proto and its JSON spell it); the Python client shows it in its own spelling."""
    from hubless_client import Client, InvalidArgument

    server = start_fake(["emotion-english-distilroberta"], "--tasks", "emotion")
    long_text = " ".join(["word"] * 70)  # the fake model accepts 64 tokens
    stub = emotion_pb2_grpc.EmotionServiceStub(server.channel)
    request = emotion_pb2.DetectEmotionRequest(
        texts=[long_text], truncation=common_pb2.TRUNCATION_ERROR
    )
    error = rpc_error(stub.DetectEmotion, request, timeout=10)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().endswith(
        "(truncation=TRUNCATION_ERROR; shorten it or set truncation=TRUNCATION_TRUNCATE)"
    )
    client = Client(f"127.0.0.1:{server.port}", timeout=10)
    with client, pytest.raises(InvalidArgument) as info:
        client.detect_emotion([long_text], truncation="error")
    assert info.value.details.endswith('shorten it or set truncation="truncate")')
    assert "TRUNCATION_" not in str(info.value)
