"""Conversions and request building, without a server."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf import descriptor_pool

from hubless.v1 import common_pb2, conversation_pb2, models_pb2, sentiment_pb2
from hubless_client import (
    Cancelled,
    DeadlineExceeded,
    ErrorReason,
    FieldViolation,
    FinishReason,
    HublessError,
    Internal,
    InvalidArgument,
    ModelInfo,
    ModelRef,
    ModelState,
    Polarity,
    ReplyChunk,
    ResourceExhausted,
    RetryPolicy,
    SentimentResult,
    Task,
    Truncation,
    Unavailable,
    _common,
)
from hubless_client.errors import from_rpc_error
from hubless_client.types import task_from_pb, task_to_pb, truncation_to_pb
from tests.client.fake_errors import (
    DETAILS_KEY,
    FakeCallError,
    FakeRpcError,
    error_status,
    rich_error,
)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
        (grpc.StatusCode.CANCELLED, Cancelled),
        (grpc.StatusCode.INTERNAL, Internal),
        (grpc.StatusCode.DATA_LOSS, HublessError),
    ],
)
def test_from_rpc_error(code: grpc.StatusCode, cls: type[HublessError]) -> None:
    rpc_error = FakeRpcError(code, "why")
    error = from_rpc_error(rpc_error)
    assert type(error) is cls
    assert error.code is code and error.details == "why" and error.rpc_error is rpc_error
    assert str(error) == f"{code.name}: why"


def test_from_rpc_error_without_status() -> None:
    error = from_rpc_error(grpc.RpcError())
    assert type(error) is HublessError and error.code is grpc.StatusCode.UNKNOWN
    assert str(error) == "UNKNOWN"
    assert (error.reason, error.metadata, error.field_violations, error.retry_delay) == (
        "",
        {},
        [],
        None,
    )


def test_error_reason_mirrors_the_proto_enum() -> None:
    names = [v.name for v in common_pb2.ErrorReason.DESCRIPTOR.values]
    *server, client_only = [f"ERROR_REASON_{r.name}" for r in ErrorReason]
    assert server == names and client_only == "ERROR_REASON_UNREACHABLE"
    assert all(r.value == r.name for r in ErrorReason)
    assert ErrorReason.QUEUE_FULL == "QUEUE_FULL" and isinstance(ErrorReason.QUEUE_FULL, str)


def test_rich_details_are_read() -> None:
    error = from_rpc_error(
        rich_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            "too many texts",
            "LIMIT_EXCEEDED",
            metadata={"limit": "texts", "limit_value": "64"},
            violations=[("texts", "at most 64"), ("texts[70]", "beyond the limit")],
        )
    )
    assert type(error) is InvalidArgument
    assert error.reason is ErrorReason.LIMIT_EXCEEDED
    assert error.metadata == {"limit": "texts", "limit_value": "64"}
    assert error.field_violations == [
        FieldViolation("texts", "at most 64"),
        FieldViolation("texts[70]", "beyond the limit"),
    ]
    assert error.retry_delay is None
    assert str(error) == "INVALID_ARGUMENT: too many texts [LIMIT_EXCEEDED]"
    with pytest.raises(FrozenInstanceError):
        error.field_violations[0].field = "x"  # type: ignore[misc]


def test_retry_delay_in_seconds() -> None:
    error = from_rpc_error(
        rich_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", "QUEUE_FULL", retry_delay=1.25)
    )
    assert type(error) is ResourceExhausted and error.retry_delay == pytest.approx(1.25)


def test_unknown_reason_is_kept_as_a_string() -> None:
    error = from_rpc_error(rich_error(grpc.StatusCode.UNAVAILABLE, "x", "SOMETHING_NEW"))
    assert error.reason == "SOMETHING_NEW" and not isinstance(error.reason, ErrorReason)


@pytest.mark.parametrize(
    "trailing",
    [
        None,
        (),
        (("x-other", "1"),),
        ((DETAILS_KEY, b"\xff\xfe not a status"),),
        ((DETAILS_KEY, "text, not bytes"),),
        # the Status disagrees with the call's code or message
        ((DETAILS_KEY, error_status(grpc.StatusCode.NOT_FOUND, "m", "X").SerializeToString()),),
        ((DETAILS_KEY, error_status(grpc.StatusCode.INTERNAL, "other", "X").SerializeToString()),),
    ],
)
def test_missing_or_malformed_details_are_ignored(trailing) -> None:
    rpc_error = FakeCallError(grpc.StatusCode.INTERNAL, "m", trailing)
    error = from_rpc_error(rpc_error)
    assert type(error) is Internal and error.details == "m" and error.rpc_error is rpc_error
    assert (error.reason, error.metadata, error.field_violations, error.retry_delay) == (
        "",
        {},
        [],
        None,
    )


def test_trailing_metadata_that_raises_is_ignored() -> None:
    class Broken(FakeRpcError):
        def trailing_metadata(self) -> object:
            raise RuntimeError("boom")

    error = from_rpc_error(Broken(grpc.StatusCode.UNAVAILABLE, "down"))
    assert type(error) is Unavailable and error.reason == ""


def test_a_malformed_detail_does_not_hide_the_others() -> None:
    status = error_status(
        grpc.StatusCode.UNAVAILABLE,
        "bye",
        "SHUTTING_DOWN",
        violations=[("texts[0]", "bad")],
        retry_delay=3.0,
    )
    status.details[0].value = b"\xff\xff\xff"  # the ErrorInfo
    rpc_error = FakeCallError(
        grpc.StatusCode.UNAVAILABLE, "bye", ((DETAILS_KEY, status.SerializeToString()),)
    )
    error = from_rpc_error(rpc_error)
    assert error.reason == "" and error.metadata == {}
    assert error.field_violations == [FieldViolation("texts[0]", "bad")]
    assert error.retry_delay == pytest.approx(3.0)


def test_hubless_error_defaults() -> None:
    error = DeadlineExceeded("not SERVING after 1s")
    assert error.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert (error.reason, error.metadata, error.field_violations, error.retry_delay) == (
        "",
        {},
        [],
        None,
    )
    assert str(error) == "DEADLINE_EXCEEDED: not SERVING after 1s"


def test_task_names() -> None:
    assert [t.value for t in Task] == [
        "emotion",
        "sentiment",
        "zero-shot",
        "summarization",
        "conversation",
        "embedding",
    ]
    assert task_from_pb(common_pb2.TASK_ZERO_SHOT) is Task.ZERO_SHOT
    assert task_from_pb(common_pb2.TASK_UNSPECIFIED) == "" and task_from_pb(99) == ""
    assert task_to_pb("zero-shot") == common_pb2.TASK_ZERO_SHOT
    assert task_to_pb(Task.EMBEDDING) == common_pb2.TASK_EMBEDDING
    assert task_to_pb(None) == common_pb2.TASK_UNSPECIFIED
    with pytest.raises(ValueError, match="task must be one of"):
        task_to_pb("chat")


def test_model_info_conversion() -> None:
    info = ModelInfo.from_pb(
        models_pb2.ModelInfo(
            name="sst2",
            task=common_pb2.TASK_SENTIMENT,
            state=models_pb2.MODEL_STATE_SKIPPED,
            max_input_tokens=512,
            labels=["NEGATIVE", "POSITIVE"],
        )
    )
    assert info.task is Task.SENTIMENT and info.state is ModelState.SKIPPED
    assert (info.max_input_tokens, info.labels, info.embedding_dimension) == (
        512,
        ["NEGATIVE", "POSITIVE"],
        0,
    )
    newer = ModelInfo.from_pb(models_pb2.ModelInfo(task=42, state=42))  # type: ignore[arg-type]
    assert newer.task == "" and newer.state is ModelState.UNSPECIFIED
    assert (info.replacing_commit, info.loaded_at) == ("", None)


def test_model_info_live_update_fields() -> None:
    msg = models_pb2.ModelInfo(name="m", state=models_pb2.MODEL_STATE_LOADING)
    msg.replacing_commit = "a" * 40
    msg.loaded_at.FromDatetime(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    info = ModelInfo.from_pb(msg)
    assert info.replacing_commit == "a" * 40
    assert info.loaded_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_truncation() -> None:
    assert truncation_to_pb(None) == common_pb2.TRUNCATION_UNSPECIFIED
    assert truncation_to_pb("truncate") == common_pb2.TRUNCATION_TRUNCATE
    assert truncation_to_pb(Truncation.ERROR) == common_pb2.TRUNCATION_ERROR
    with pytest.raises(ValueError, match="truncation must be one of"):
        truncation_to_pb("drop")


def test_single_string_is_refused() -> None:
    with pytest.raises(TypeError, match="not a single string"):
        _common.embed_request("hello", True, "", None)
    with pytest.raises(TypeError, match="candidate_labels"):
        _common.zero_shot_request(["t"], "label", False, None, "", None)


@pytest.mark.parametrize("build", [_common.reply_request, _common.stream_reply_request])
def test_reply_request_optional_fields(build) -> None:
    plain = build(("a", "b"), None, None, None, None, "")
    assert list(plain.turns) == ["a", "b"]
    assert not any(plain.HasField(f) for f in ("max_new_tokens", "temperature", "top_p", "seed"))
    greedy = build(["a"], 4, 0.0, None, 0, "dialogpt-small")
    assert greedy.HasField("temperature") and greedy.HasField("seed")
    assert greedy.model == "dialogpt-small" and greedy.max_new_tokens == 4
    zero = build(["a"], 0, None, None, None, "")
    assert zero.HasField("max_new_tokens") and zero.max_new_tokens == 0
    with pytest.raises(TypeError, match="turns"):
        build("a", None, None, None, None, "")
    assert type(_common.stream_reply_request(["a"], None, None, None, None, "")) is (
        conversation_pb2.StreamReplyRequest
    )


def test_summarize_request_optional_fields() -> None:
    plain = _common.summarize_request(["t"], None, None, None, "", None)
    assert not any(plain.HasField(f) for f in ("min_length", "max_length", "num_beams"))
    given = _common.summarize_request(["t"], 0, 60, 1, "bart", "error")
    assert (given.min_length, given.max_length, given.num_beams) == (0, 60, 1)
    assert all(given.HasField(f) for f in ("min_length", "max_length", "num_beams"))
    assert given.truncation == common_pb2.TRUNCATION_ERROR


def test_sentiment_conversion_and_frozen() -> None:
    message = sentiment_pb2.AnalyzeSentimentResponse(
        results=[
            sentiment_pb2.SentimentResult(
                label="neutral",
                score=0.5,
                polarity=sentiment_pb2.POLARITY_NEUTRAL,
                polarity_score=0.5,
                scores=[common_pb2.LabelScore(label="neutral", score=0.5)],
                truncated=True,
            ),
            sentiment_pb2.SentimentResult(),
        ],
        model=common_pb2.ModelRef(name="m", repo_id="o/m", commit="abc"),
    )
    result = SentimentResult.from_pb(message)
    assert result.model == ModelRef("m", "o/m", "abc")
    assert result[0].polarity is Polarity.NEUTRAL and result[0].truncated
    assert result[1].polarity is Polarity.UNSPECIFIED
    with pytest.raises(FrozenInstanceError):
        result[0].label = "x"  # type: ignore[misc]


def test_reply_chunk_conversion() -> None:
    first = ReplyChunk.from_pb(
        conversation_pb2.StreamReplyResponse(
            text="a", model=common_pb2.ModelRef(name="d"), tokens=1
        )
    )
    assert first.model is not None and first.model.name == "d" and first.finish_reason is None
    assert first.tokens == 1
    last = ReplyChunk.from_pb(
        conversation_pb2.StreamReplyResponse(
            finish_reason=conversation_pb2.FINISH_REASON_STOP, tokens=7
        )
    )
    assert last.model is None and last.finish_reason is FinishReason.STOP and last.tokens == 7


def test_metadata_normalized() -> None:
    assert _common.normalize_metadata(None) == ()
    assert _common.normalize_metadata({"Authorization": "t"}) == (("authorization", "t"),)
    assert _common.normalize_metadata([("X-Key-Bin", b"\x00")]) == (("x-key-bin", b"\x00"),)


def test_retry_service_config() -> None:
    options = dict(_common.channel_options(True, [("grpc.max_receive_message_length", 5)]))
    assert options["grpc.enable_retries"] == 1
    assert options["grpc.max_receive_message_length"] == 5
    config = json.loads(options["grpc.service_config"])
    (method,) = config["methodConfig"]
    assert {"service": "hubless.v1.EmbeddingsService"} in method["name"]
    assert {"service": "grpc.health.v1.Health", "method": "Check"} in method["name"]
    assert {"service": "hubless.v1.ConversationService", "method": "Reply"} in method["name"]
    covered = {(n["service"], n.get("method")) for n in method["name"]}
    assert ("hubless.v1.ConversationService", None) not in covered
    assert ("hubless.v1.ConversationService", "StreamReply") not in covered
    policy = method["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert policy["maxAttempts"] == RetryPolicy().max_attempts
    assert policy["initialBackoff"] == "0.1s" and policy["maxBackoff"] == "2s"
    disabled = dict(_common.channel_options(False, []))
    assert disabled["grpc.enable_retries"] == 0 and "grpc.service_config" not in disabled


def test_retry_policy_validation() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=1)
    with pytest.raises(ValueError, match="positive"):
        RetryPolicy(initial_backoff=0)


def test_credentials() -> None:
    assert _common.channel_credentials(False, None) is None
    assert isinstance(_common.channel_credentials(True, None), grpc.ChannelCredentials)
    implied = _common.channel_credentials(False, b"-----BEGIN CERTIFICATE-----")
    assert isinstance(implied, grpc.ChannelCredentials)
    ready = grpc.ssl_channel_credentials()
    assert _common.channel_credentials(ready, None) is ready
    with pytest.raises(ValueError, match="not both"):
        _common.channel_credentials(ready, b"pem")


def test_retried_methods_are_every_unary_rpc() -> None:
    """The retry config names real services and methods: every unary RPC of every hubless
    service, and no streaming one."""
    pool = descriptor_pool.Default()  # every hubless.v1 stub is imported by hubless_client
    unary: set[tuple[str, str]] = set()
    streaming: set[tuple[str, str]] = set()
    hubless = [
        pool.FindServiceByName(f"hubless.v1.{task}Service")
        for task in (
            "Embeddings",
            "Emotion",
            "Sentiment",
            "ZeroShot",
            "Summarization",
            "Conversation",
            "Models",
        )
    ]
    for service in hubless:
        for m in service.methods:
            kind = streaming if m.server_streaming or m.client_streaming else unary
            kind.add((service.full_name, m.name))
    covered: set[tuple[str, str]] = set()
    for name in _common.RETRIED_METHODS:
        if name["service"].startswith("grpc.health"):
            continue
        service = pool.FindServiceByName(name["service"])
        methods = [name["method"]] if "method" in name else [m.name for m in service.methods]
        covered.update((service.full_name, m) for m in methods)
    assert covered == unary
    assert streaming == {("hubless.v1.ConversationService", "StreamReply")}
