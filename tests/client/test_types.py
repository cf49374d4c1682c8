"""Conversions and request building, without a server."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError

import grpc
import pytest

from hubless.v1 import common_pb2, conversation_pb2, sentiment_pb2
from hubless_client import (
    Cancelled,
    DeadlineExceeded,
    FinishReason,
    HublessError,
    Internal,
    InvalidArgument,
    ModelRef,
    Polarity,
    ReplyChunk,
    RetryPolicy,
    SentimentResult,
    Truncation,
    Unavailable,
    _common,
)
from hubless_client.errors import from_rpc_error
from hubless_client.types import truncation_to_pb


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str | None) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details


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


def test_reply_request_optional_fields() -> None:
    plain = _common.reply_request(("a", "b"), 0, None, None, None, "")
    assert list(plain.turns) == ["a", "b"]
    assert not any(plain.HasField(f) for f in ("temperature", "top_p", "seed"))
    greedy = _common.reply_request(["a"], 4, 0.0, None, 0, "dialogpt-small")
    assert greedy.HasField("temperature") and greedy.HasField("seed")
    assert greedy.model == "dialogpt-small" and greedy.max_new_tokens == 4


def test_sentiment_conversion_and_frozen() -> None:
    message = sentiment_pb2.AnalyzeResponse(
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
        conversation_pb2.ReplyChunk(text="a", model=common_pb2.ModelRef(name="d"))
    )
    assert first.model is not None and first.model.name == "d" and first.finish_reason is None
    last = ReplyChunk.from_pb(
        conversation_pb2.ReplyChunk(finish_reason=conversation_pb2.FINISH_REASON_STOP)
    )
    assert last.model is None and last.finish_reason is FinishReason.STOP


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
    assert {"service": "hubless.v1.Embeddings"} in method["name"]
    assert {"service": "grpc.health.v1.Health", "method": "Check"} in method["name"]
    assert {"service": "hubless.v1.Conversation", "method": "Reply"} in method["name"]
    covered = {(n["service"], n.get("method")) for n in method["name"]}
    assert ("hubless.v1.Conversation", None) not in covered
    assert ("hubless.v1.Conversation", "ReplyStream") not in covered
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
