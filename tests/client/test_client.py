"""The blocking client against the in-process fake server, over a real socket."""

from __future__ import annotations

import time

import grpc
import pytest

from hubless_client import (
    Client,
    ClientClosed,
    ConnectionFailed,
    DeadlineExceeded,
    ErrorReason,
    FieldViolation,
    FinishReason,
    HealthStatus,
    HublessError,
    Internal,
    InvalidArgument,
    ModelRef,
    ModelState,
    NotFound,
    Polarity,
    ResourceExhausted,
    RetryPolicy,
    Task,
    Truncation,
    Unavailable,
)
from hubless_client.types import LabelScore
from tests.client.fake_errors import (
    BROKEN_DETAIL,
    FOREIGN_DETAIL,
    GARBAGE_DETAILS,
    MISMATCHED_DETAILS,
)
from tests.client.fake_server import (
    ALWAYS_DOWN,
    BUSY,
    BUSY_RETRY_S,
    DOWN_RETRY_S,
    EMOTION_LABELS,
    ENDLESS,
    FLAKY,
    MISSING,
    NOT_SERVING_SERVICE,
    QUEUE_LIMIT,
    REPLY_TEXT,
    SLOW,
    STREAM_PIECES,
    TOO_LONG,
    FakeServer,
    Recorder,
)

FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05)


@pytest.fixture(scope="module")
def client(fake: FakeServer):
    with Client(fake.target, timeout=10, retries=FAST_RETRY) as c:
        yield c


def test_embed_converts_vectors_and_flags(client: Client, recorder: Recorder) -> None:
    result = client.embed(["a b", "long text"], truncation=Truncation.ERROR)
    assert result.vectors == [[0.0, 0.5, 3.0], [1.0, 0.5, 9.0]]
    assert all(isinstance(v, float) for vec in result.vectors for v in vec)
    assert result.dimension == 3
    assert len(result) == 2
    assert result.truncated == [False, True]
    assert result.tokens == [2, 2]
    assert result.model == ModelRef(name="mini", repo_id="org/mini", commit="c" * 40)
    request = recorder.requests["Embed"][0]
    assert request.HasField("normalize") and request.normalize is True
    assert request.truncation == 2


def test_embed_passes_model_and_normalize(client: Client, recorder: Recorder) -> None:
    result = client.embed(["x"], normalize=False, model="other")
    assert result.vectors == [[0.0, 1.0, 1.0]]
    assert result.model.name == "other"
    request = recorder.requests["Embed"][0]
    assert request.normalize is False and request.model == "other"
    assert request.truncation == 0


def test_emotion(client: Client) -> None:
    result = client.detect_emotion(["yay", "hm"])
    assert len(result) == 2
    first = result[0]
    assert (first.label, first.score) == ("joy", 0.75)
    assert [s.label for s in first.scores] == list(EMOTION_LABELS)
    assert first.by_label == {"joy": 0.75, "anger": 0.125, "sadness": 0.125}
    assert result.model.name == "emo"


def test_sentiment_polarity_is_a_str_enum(client: Client, recorder: Recorder) -> None:
    result = client.analyze_sentiment(["good day", "bad day"], model="stars")
    assert [r.polarity for r in result] == [Polarity.POSITIVE, Polarity.NEGATIVE]
    assert result[0].polarity == "positive"
    assert result[0].label == "5 stars"
    assert result[1].scores == [LabelScore("1 star", 0.5), LabelScore("3 stars", 0.25)]
    assert result[1].polarity_score == 0.75
    assert recorder.requests["AnalyzeSentiment"][0].model == "stars"


def test_zero_shot_keeps_server_order(client: Client, recorder: Recorder) -> None:
    result = client.classify_zero_shot(
        ["t"], ["a", "b", "c"], multi_label=True, hypothesis_template="About {}."
    )
    only = result[0]
    assert [s.label for s in only.scores] == ["c", "b", "a"]
    assert only.label == "c" and only.score == pytest.approx(0.5)
    assert sum(only.by_label.values()) == pytest.approx(1.0)
    request = recorder.requests["ClassifyZeroShot"][0]
    assert list(request.candidate_labels) == ["a", "b", "c"]
    assert request.multi_label is True and request.hypothesis_template == "About {}."


def test_summarize(client: Client, recorder: Recorder) -> None:
    result = client.summarize(["a" * 60], min_length=2, max_length=9, num_beams=3)
    assert result.summaries == result.results
    assert result[0].text == "a" * 10 and result[0].truncated and result[0].tokens == 3
    request = recorder.requests["Summarize"][0]
    assert (request.min_length, request.max_length, request.num_beams) == (2, 9, 3)


def test_summarize_none_is_unset_and_zero_is_sent(client: Client, recorder: Recorder) -> None:
    client.summarize(["text"])
    client.summarize(["text"], min_length=0, max_length=None)
    default, zero = recorder.requests["Summarize"]
    assert not any(default.HasField(f) for f in ("min_length", "max_length", "num_beams"))
    assert zero.HasField("min_length") and zero.min_length == 0
    assert not zero.HasField("max_length") and not zero.HasField("num_beams")


def test_reply_sets_only_given_sampling_fields(client: Client, recorder: Recorder) -> None:
    result = client.reply(["hi"], max_new_tokens=5)
    assert result.text == REPLY_TEXT and result.tokens == 4
    assert result.finish_reason is FinishReason.STOP
    assert not result.history_truncated
    first = recorder.requests["Reply"][0]
    assert first.HasField("max_new_tokens") and first.max_new_tokens == 5
    assert not first.HasField("temperature") and not first.HasField("seed")
    client.reply(["a", "b", "c", "d"], temperature=0.5, top_p=0.9, seed=7)
    second = recorder.requests["Reply"][1]
    assert not second.HasField("max_new_tokens")
    assert second.temperature == pytest.approx(0.5) and second.top_p == pytest.approx(0.9)
    assert second.seed == 7


def test_reply_stream_yields_chunks_then_final_info(client: Client, recorder: Recorder) -> None:
    stream = client.stream_reply(["a", "b", "c", "d"], max_new_tokens=9, seed=1)
    assert list(stream) == list(STREAM_PIECES)
    assert stream.done and stream.text == REPLY_TEXT
    assert stream.finish_reason is FinishReason.LENGTH
    assert stream.model is not None and stream.model.name == "dialo"
    assert stream.history_truncated
    assert stream.tokens == len(STREAM_PIECES)
    result = stream.result()
    assert (result.text, result.finish_reason) == (REPLY_TEXT, FinishReason.LENGTH)
    assert result.tokens == len(STREAM_PIECES)
    request = recorder.requests["StreamReply"][0]
    assert request.max_new_tokens == 9 and request.seed == 1
    assert not request.HasField("temperature")


def test_reply_stream_raw_chunks(client: Client, recorder: Recorder) -> None:
    chunks = list(client.stream_reply(["hi"]).chunks())
    assert [c.text for c in chunks] == [*STREAM_PIECES, ""]
    assert chunks[0].model is not None and all(c.model is None for c in chunks[1:])
    assert [c.finish_reason for c in chunks] == [None] * 4 + [FinishReason.LENGTH]
    assert [c.tokens for c in chunks] == [1, 2, 3, 4, 4]
    assert not recorder.requests["StreamReply"][0].HasField("max_new_tokens")


def test_reply_stream_cancel_stops_server_side(client: Client, recorder: Recorder) -> None:
    with client.stream_reply(["x", ENDLESS]) as stream:
        received = []
        for piece in stream:
            received.append(piece)
            if len(received) == 3:
                stream.cancel()
    assert received[:2] == ["and ", "on "]
    assert stream.done
    assert recorder.stream_cancelled.wait(5)
    assert client.reply(["still there?"]).text == REPLY_TEXT


def test_reply_stream_error_is_mapped_with_details(client: Client) -> None:
    with pytest.raises(InvalidArgument, match="turns must not be empty") as info:
        list(client.stream_reply([]))
    assert info.value.reason is ErrorReason.INVALID_FIELD
    assert info.value.field_violations == [FieldViolation("turns", "must not be empty")]


def test_models(client: Client, recorder: Recorder) -> None:
    models = client.list_models()
    assert [m.name for m in models] == [
        "mini",
        "distilbert-sst2",
        "bart-large-mnli",
        "dialogpt-medium",
    ]
    ready, sst2, skipped, missing = models
    assert [m.task for m in models] == ["embedding", "sentiment", "zero-shot", "conversation"]
    assert ready.task is Task.EMBEDDING and skipped.task == Task.ZERO_SHOT
    assert ready.state is ModelState.READY and ready.is_default
    assert (ready.size_bytes, ready.load_seconds, ready.device) == (1234, 0.5, "cpu")
    assert (ready.max_input_tokens, ready.embedding_dimension, ready.labels) == (8, 3, [])
    assert sst2.labels == ["NEGATIVE", "POSITIVE"] and sst2.embedding_dimension == 0
    assert skipped.state is ModelState.SKIPPED and "no-load-alternates" in skipped.error
    assert missing.state is ModelState.MISSING and missing.error == "not installed"
    assert recorder.requests["ListModels"][0].task == 0


def test_models_task_filter(client: Client, recorder: Recorder) -> None:
    assert [m.name for m in client.list_models("zero-shot")] == ["bart-large-mnli"]
    assert [m.name for m in client.list_models(Task.SENTIMENT)] == ["distilbert-sst2"]
    assert client.list_models(task="emotion") == []
    assert [r.task for r in recorder.requests["ListModels"]] == [3, 2, 1]
    with pytest.raises(ValueError, match="task must be one of"):
        client.list_models("zero_shot")


def test_model_by_name(client: Client, recorder: Recorder) -> None:
    sst2 = client.get_model("distilbert-sst2")
    assert sst2.task == "sentiment" and sst2.state is ModelState.READY
    assert recorder.requests["GetModel"][0].name == "distilbert-sst2"
    with pytest.raises(NotFound, match="nope") as info:
        client.get_model("nope")
    assert info.value.reason is ErrorReason.MODEL_NOT_FOUND
    assert info.value.metadata == {"model": "nope"}


def test_health(client: Client) -> None:
    assert client.health() is HealthStatus.SERVING
    assert client.health("hubless.v1.EmbeddingsService") is HealthStatus.SERVING
    assert client.health(NOT_SERVING_SERVICE) is HealthStatus.NOT_SERVING
    assert client.health("hubless.v1.Embeddings") is HealthStatus.SERVICE_UNKNOWN
    assert client.health("no.such.Service") is HealthStatus.SERVICE_UNKNOWN


def test_wait_until_serving(client: Client) -> None:
    client.wait_until_serving("hubless.v1.ModelsService", timeout=5)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="NOT_SERVING"):
        client.wait_until_serving(NOT_SERVING_SERVICE, timeout=0.5, interval=0.1)
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    ("call", "error", "code", "details"),
    [
        (lambda c: c.embed([]), InvalidArgument, "INVALID_ARGUMENT", "texts must not be empty"),
        (
            lambda c: c.classify_zero_shot(["t"], []),
            InvalidArgument,
            "INVALID_ARGUMENT",
            "candidate",
        ),
        (lambda c: c.analyze_sentiment(["t"], model=MISSING), NotFound, "NOT_FOUND", "missing"),
        (lambda c: c.analyze_sentiment(["t"], model=BUSY), ResourceExhausted, "RESOURCE_", "full"),
        (lambda c: c.reply([]), InvalidArgument, "INVALID_ARGUMENT", "turns"),
    ],
)
def test_errors_are_mapped(client: Client, call, error, code, details) -> None:
    with pytest.raises(error) as info:
        call(client)
    assert info.value.code.name.startswith(code)
    assert details in info.value.details
    assert isinstance(info.value.rpc_error, grpc.RpcError)
    assert info.value.__cause__ is info.value.rpc_error
    assert info.value.reason in set(ErrorReason)


def test_invalid_argument_details(client: Client) -> None:
    with pytest.raises(InvalidArgument) as info:
        client.embed(["a", "b", "c", TOO_LONG], truncation="error")
    error = info.value
    assert error.reason == ErrorReason.INPUT_TOO_LONG and error.reason == "INPUT_TOO_LONG"
    assert error.field_violations == [FieldViolation("texts[3]", "longer than 8 tokens")]
    assert error.metadata == {"model": "mini", "limit": "tokens", "limit_value": "8"}
    assert error.retry_delay is None
    assert str(error) == "INVALID_ARGUMENT: texts[3] is longer than 8 tokens [INPUT_TOO_LONG]"
    with pytest.raises(InvalidArgument) as info:
        client.embed([])
    assert info.value.reason is ErrorReason.INVALID_FIELD
    assert [v.field for v in info.value.field_violations] == ["texts"]


def test_queue_full_details(client: Client) -> None:
    with pytest.raises(ResourceExhausted) as info:
        client.analyze_sentiment(["t"], model=BUSY)
    error = info.value
    assert error.reason is ErrorReason.QUEUE_FULL
    assert error.retry_delay == pytest.approx(BUSY_RETRY_S)
    assert error.metadata == {"model": BUSY, "limit": "queue", "limit_value": str(QUEUE_LIMIT)}
    assert error.field_violations == []


def test_not_found_details(client: Client) -> None:
    with pytest.raises(NotFound) as info:
        client.analyze_sentiment(["t"], model=MISSING)
    assert info.value.reason is ErrorReason.MODEL_NOT_FOUND
    assert info.value.metadata == {"model": MISSING, "task": "sentiment"}
    assert info.value.retry_delay is None


@pytest.mark.parametrize("model", [GARBAGE_DETAILS, MISMATCHED_DETAILS])
def test_unreadable_details_are_ignored(client: Client, model: str) -> None:
    with pytest.raises(Internal, match=model.replace("-", " ")) as info:
        client.analyze_sentiment(["t"], model=model)
    error = info.value
    assert (error.reason, error.metadata, error.field_violations) == ("", {}, [])
    assert error.retry_delay is None


def test_broken_detail_keeps_the_others(client: Client) -> None:
    with pytest.raises(Unavailable) as info:
        client.analyze_sentiment(["t"], model=BROKEN_DETAIL)
    assert info.value.reason == "" and info.value.retry_delay == pytest.approx(2.0)


def test_foreign_error_info_does_not_win(client: Client) -> None:
    with pytest.raises(Unavailable) as info:
        client.analyze_sentiment(["t"], model=FOREIGN_DETAIL)
    assert info.value.reason is ErrorReason.SHUTTING_DOWN


def test_unavailable_without_details_is_not_from_a_hubless_server(
    fake: FakeServer, recorder: Recorder
) -> None:
    # A hubless server sends error details with every error; an UNAVAILABLE without any came
    # from the transport or something in between (here the fake plays a bare proxy).
    with (
        Client(fake.target, timeout=10, retries=False) as client,
        pytest.raises(ConnectionFailed, match="warming up") as info,
    ):
        client.embed([FLAKY])
    error = info.value
    assert (error.reason, error.metadata, error.field_violations) == ("UNREACHABLE", {}, [])
    assert error.retry_delay is None
    assert str(error) == "UNAVAILABLE: warming up [UNREACHABLE]"
    assert isinstance(error, Unavailable) and isinstance(error, HublessError)


def test_retry_on_unavailable(fake: FakeServer, recorder: Recorder) -> None:
    with Client(fake.target, timeout=10, retries=FAST_RETRY) as client:
        result = client.embed([FLAKY])
    assert len(result.vectors) == 1
    assert recorder.attempts["Embed"] == 2


def test_no_retry_when_disabled(fake: FakeServer, recorder: Recorder) -> None:
    with Client(fake.target, timeout=10, retries=False) as client:
        with pytest.raises(Unavailable, match="warming up"):
            client.embed([FLAKY])
        assert recorder.attempts["Embed"] == 1
        assert len(client.embed([FLAKY]).vectors) == 1


def test_retries_give_up_after_max_attempts(fake: FakeServer, recorder: Recorder) -> None:
    with (
        Client(fake.target, timeout=10, retries=FAST_RETRY) as client,
        pytest.raises(Unavailable, match="no embedding model") as info,
    ):
        client.embed([ALWAYS_DOWN])
    assert len(recorder.requests["Embed"]) == FAST_RETRY.max_attempts
    assert info.value.reason is ErrorReason.MODEL_LOADING
    assert info.value.retry_delay == pytest.approx(DOWN_RETRY_S)


def test_metadata_reaches_the_server(fake: FakeServer, recorder: Recorder) -> None:
    metadata = {"Authorization": "Bearer s3cret", "x-tenant": "t1"}
    with Client(fake.target, timeout=10, metadata=metadata) as client:
        client.list_models()
        list(client.stream_reply(["hi"]))
    for method in ("ListModels", "StreamReply"):
        seen = recorder.metadata[method][0]
        assert seen["authorization"] == "Bearer s3cret" and seen["x-tenant"] == "t1"


def test_per_call_timeout_gives_deadline_exceeded(client: Client) -> None:
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        client.summarize([SLOW], timeout=0.3)
    assert time.monotonic() - started < 2


def test_client_default_timeout(fake: FakeServer) -> None:
    with Client(fake.target, timeout=0.3) as client, pytest.raises(DeadlineExceeded):
        client.summarize([SLOW])


def test_unreachable_server_is_connection_failed(closed_port: int) -> None:
    with (
        Client(f"127.0.0.1:{closed_port}", timeout=5, retries=False) as client,
        pytest.raises(Unavailable) as info,  # old except clauses still catch it
    ):
        client.health()
    assert type(info.value) is ConnectionFailed
    assert info.value.reason is ErrorReason.UNREACHABLE


def test_close_is_idempotent_and_context_manager_closes(fake: FakeServer) -> None:
    client = Client(fake.target, timeout=5)
    with client:
        assert client.health() is HealthStatus.SERVING
    client.close()
    assert client.closed
    with pytest.raises(ClientClosed, match="is closed"):
        client.health()
