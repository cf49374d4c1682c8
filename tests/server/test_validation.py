"""Every INVALID_ARGUMENT case against a live server: an actionable message, the ErrorInfo
reason and the BadRequest field path; optional fields unset take the server defaults."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from hubless.v1 import (
    common_pb2,
    conversation_pb2,
    conversation_pb2_grpc,
    embeddings_pb2,
    embeddings_pb2_grpc,
    emotion_pb2,
    emotion_pb2_grpc,
    sentiment_pb2,
    sentiment_pb2_grpc,
    summarization_pb2,
    summarization_pb2_grpc,
    zero_shot_pb2,
    zero_shot_pb2_grpc,
)
from hubless_server.runtimes.base import ChatItem, SummarizeItem
from tests.server.fakes import FakeRuntime, fake_factory, make_fake_volume
from tests.server.harness import RunningServer, settings_for
from tests.server.rich_errors import details_of

FLAGS = (
    "--max-texts",
    "3",
    "--max-text-chars",
    "200",
    "--max-new-tokens",
    "100",
    "--summary-max-length",
    "50",
    "--max-labels",
    "4",
    "--max-beams",
    "2",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    FakeRuntime.reset()
    volume = make_fake_volume(tmp_path_factory.mktemp("volume"))
    running = RunningServer(settings_for(volume, *FLAGS), fake_factory)
    yield running
    running.stop()


def Reply(**kw: Any) -> tuple[str, Any]:
    return "Reply", conversation_pb2.ReplyRequest(**kw)


def Classify(**kw: Any) -> tuple[str, Any]:
    kw.setdefault("texts", ["a text"])
    return "ClassifyZeroShot", zero_shot_pb2.ClassifyZeroShotRequest(**kw)


def Summarize(**kw: Any) -> tuple[str, Any]:
    kw.setdefault("texts", ["a text"])
    return "Summarize", summarization_pb2.SummarizeRequest(**kw)


def Embed(**kw: Any) -> tuple[str, Any]:
    return "Embed", embeddings_pb2.EmbedRequest(**kw)


def Detect(**kw: Any) -> tuple[str, Any]:
    return "DetectEmotion", emotion_pb2.DetectEmotionRequest(**kw)


def Analyze(**kw: Any) -> tuple[str, Any]:
    return "AnalyzeSentiment", sentiment_pb2.AnalyzeSentimentRequest(**kw)


LONG = " ".join(["w"] * 70)  # the fake runtime accepts 64 tokens (one per word)
FIELD, TOO_LONG, LIMIT = "INVALID_FIELD", "INPUT_TOO_LONG", "LIMIT_EXCEEDED"

# case: (request, message fragment, field path, reason)
CASES: dict[str, tuple[tuple[str, Any], str, str, str]] = {
    "embed-empty-batch": (Embed(), "texts is empty", "texts", FIELD),
    "embed-blank-text": (Embed(texts=["ok", "  \n"]), "texts[1] is empty", "texts[1]", FIELD),
    "embed-too-long": (Embed(texts=["x" * 201]), "201 characters; at most 200", "texts[0]", LIMIT),
    "embed-too-many": (Embed(texts=["a"] * 4), "4 entries; at most 3", "texts", LIMIT),
    "embed-bad-truncation": (Embed(texts=["a"], truncation=7), "truncation 7", "truncation", FIELD),
    "detect-empty": (Detect(), "texts is empty", "texts", FIELD),
    "detect-too-long-tokens": (
        Detect(texts=["fine", LONG], truncation=common_pb2.TRUNCATION_ERROR),
        "texts[1]: input is 70 tokens long; the model accepts at most 64",
        "texts[1]",
        TOO_LONG,
    ),
    "analyze-blank": (Analyze(texts=[""]), "texts[0] is empty", "texts[0]", FIELD),
    "analyze-runtime-rejects": (
        Analyze(texts=["ok", "fine", "boom"]),
        "refuses 'boom'",
        "texts[2]",
        FIELD,
    ),
    "classify-no-labels": (Classify(), "candidate_labels is empty", "candidate_labels", FIELD),
    "classify-duplicate": (
        Classify(candidate_labels=["a", "b", "a"]),
        "like candidate_labels[0]",
        "candidate_labels[2]",
        FIELD,
    ),
    "classify-empty-label": (
        Classify(candidate_labels=["a", " "]),
        "candidate_labels[1] is empty",
        "candidate_labels[1]",
        FIELD,
    ),
    "classify-too-many-labels": (
        Classify(candidate_labels=list("abcde")),
        "at most 4 (--max-labels)",
        "candidate_labels",
        LIMIT,
    ),
    "classify-template-none": (
        Classify(candidate_labels=["a"], hypothesis_template="About it."),
        "exactly once",
        "hypothesis_template",
        FIELD,
    ),
    "classify-template-two": (
        Classify(candidate_labels=["a"], hypothesis_template="{} or {}"),
        "exactly once",
        "hypothesis_template",
        FIELD,
    ),
    "summarize-min-above-max": (
        Summarize(min_length=20, max_length=10),
        "min_length (20) is above max_length (10)",
        "min_length",
        FIELD,
    ),
    "summarize-negative": (Summarize(min_length=-1), "min_length is -1", "min_length", FIELD),
    "summarize-zero-max": (Summarize(max_length=0), "max_length is 0", "max_length", FIELD),
    "summarize-zero-beams": (Summarize(num_beams=0), "num_beams is 0", "num_beams", FIELD),
    "summarize-negative-beams": (Summarize(num_beams=-2), "num_beams is -2", "num_beams", FIELD),
    "summarize-too-many-beams": (
        Summarize(num_beams=3),
        "at most 2 (--max-beams)",
        "num_beams",
        LIMIT,
    ),
    "summarize-max-over-cap": (Summarize(max_length=101), "at most 100", "max_length", LIMIT),
    "summarize-min-over-cap": (Summarize(min_length=150), "at most 100", "min_length", LIMIT),
    "reply-no-turns": (Reply(), "turns is empty", "turns", FIELD),
    "reply-blank-turn": (Reply(turns=["hi", ""]), "turns[1] is empty", "turns[1]", FIELD),
    "reply-negative-temperature": (
        Reply(turns=["hi"], temperature=-0.5),
        "temperature is -0.5",
        "temperature",
        FIELD,
    ),
    "reply-nan-temperature": (
        Reply(turns=["hi"], temperature=float("nan")),
        "finite",
        "temperature",
        FIELD,
    ),
    "reply-top-p-zero": (Reply(turns=["hi"], top_p=0.0), "top_p is 0.0", "top_p", FIELD),
    "reply-top-p-above-one": (Reply(turns=["hi"], top_p=1.5), "(0, 1]", "top_p", FIELD),
    "reply-zero-tokens": (
        Reply(turns=["hi"], max_new_tokens=0),
        "max_new_tokens is 0; it must be at least 1",
        "max_new_tokens",
        FIELD,
    ),
    "reply-negative-tokens": (
        Reply(turns=["hi"], max_new_tokens=-1),
        "must be at least 1",
        "max_new_tokens",
        FIELD,
    ),
    "reply-tokens-over-cap": (
        Reply(turns=["hi"], max_new_tokens=101),
        "at most 100 (--max-new-tokens)",
        "max_new_tokens",
        LIMIT,
    ),
    "reply-last-turn-too-long": (
        Reply(turns=["hi", "there", LONG], max_new_tokens=4),
        "the last turn (turns[2]) is 70 tokens",
        "turns[2]",
        TOO_LONG,
    ),
}

STUBS = {
    "Embed": embeddings_pb2_grpc.EmbeddingsServiceStub,
    "DetectEmotion": emotion_pb2_grpc.EmotionServiceStub,
    "AnalyzeSentiment": sentiment_pb2_grpc.SentimentServiceStub,
    "ClassifyZeroShot": zero_shot_pb2_grpc.ZeroShotServiceStub,
    "Summarize": summarization_pb2_grpc.SummarizationServiceStub,
    "Reply": conversation_pb2_grpc.ConversationServiceStub,
}


def call(server: RunningServer, method: str, request: Any) -> Any:
    return getattr(STUBS[method](server.channel), method)(request, timeout=10)


@pytest.mark.parametrize("case", sorted(CASES))
def test_invalid_argument(server: RunningServer, case: str) -> None:
    (method, request), expected, field, reason = CASES[case]
    with pytest.raises(grpc.RpcError) as info:
        call(server, method, request)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert expected in info.value.details()
    details = details_of(info.value)
    assert details.reason == reason
    assert details.fields == [field]
    assert details.bad_request is not None
    assert details.bad_request.field_violations[0].description == info.value.details()
    assert details.retry is None
    if reason == LIMIT:
        assert details.info.metadata["limit"].startswith("--")
        assert details.info.metadata["limit_value"].isdigit()
        assert details.info.metadata["limit"] in info.value.details()


def test_limit_metadata_names_the_flag_and_value(server: RunningServer) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call(server, *Embed(texts=["a"] * 4))
    details = details_of(info.value)
    assert details.reason == "LIMIT_EXCEEDED"
    assert dict(details.info.metadata) == {
        "task": "embedding",
        "limit": "--max-texts",
        "limit_value": "3",
    }


def test_bad_request_names_the_offending_text(server: RunningServer) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call(server, *Analyze(texts=["a", "b", "  "]))
    assert details_of(info.value).fields == ["texts[2]"]
    with pytest.raises(grpc.RpcError) as info:
        call(server, *Embed(texts=["one", "x" * 250, "three"]))
    details = details_of(info.value)
    assert details.fields == ["texts[1]"]
    assert details.info.metadata["limit"] == "--max-text-chars"


def test_input_too_long_names_the_text_and_the_token_counts(server: RunningServer) -> None:
    request = Detect(texts=["a", "b", "c"], truncation=common_pb2.TRUNCATION_ERROR)
    request[1].texts[2] = LONG
    with pytest.raises(grpc.RpcError) as info:
        call(server, *request)
    details = details_of(info.value)
    assert (details.reason, details.fields) == ("INPUT_TOO_LONG", ["texts[2]"])
    assert details.info.metadata["tokens"] == "70"
    assert details.info.metadata["max_input_tokens"] == "64"
    assert details.info.metadata["task"] == "emotion"


def test_nothing_invalid_reaches_the_model(server: RunningServer) -> None:
    computed = [item for _, batch in FakeRuntime.batches for item in batch]
    assert all(getattr(item, "text", "") not in ("boom", LONG) for item in computed)


def test_stream_validates_too(server: RunningServer) -> None:
    stub = conversation_pb2_grpc.ConversationServiceStub(server.channel)
    with pytest.raises(grpc.RpcError) as info:
        list(
            stub.StreamReply(
                conversation_pb2.StreamReplyRequest(turns=["hi"], top_p=2.0), timeout=10
            )
        )
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_long_input_is_truncated_by_default(server: RunningServer) -> None:
    stub = emotion_pb2_grpc.EmotionServiceStub(server.channel)
    response = stub.DetectEmotion(
        emotion_pb2.DetectEmotionRequest(texts=["short", LONG]), timeout=10
    )
    assert [r.truncated for r in response.results] == [False, True]


def _last_item(kind: type) -> Any:
    items = [i for _, batch in FakeRuntime.batches for i in batch if isinstance(i, kind)]
    return items[-1]


def test_unset_optional_fields_take_the_server_defaults(server: RunningServer) -> None:
    call(server, *Summarize(texts=["defaults"]))
    item = _last_item(SummarizeItem)
    assert (item.min_length, item.max_length, item.num_beams) == (0, 50, 1)
    call(server, *Reply(turns=["defaults"]))
    assert _last_item(ChatItem).max_new_tokens == 64  # --default-new-tokens


def test_explicit_optional_fields_are_used(server: RunningServer) -> None:
    call(server, *Summarize(texts=["explicit"], min_length=0, max_length=7, num_beams=2))
    item = _last_item(SummarizeItem)
    assert (item.min_length, item.max_length, item.num_beams) == (0, 7, 2)
    call(server, *Summarize(texts=["only min"], min_length=80))
    item = _last_item(SummarizeItem)
    assert (item.min_length, item.max_length) == (80, 80)  # the default max rises to the min
    call(server, *Reply(turns=["explicit"], max_new_tokens=1))
    assert _last_item(ChatItem).max_new_tokens == 1


def test_stream_errors_carry_details(server: RunningServer) -> None:
    stub = conversation_pb2_grpc.ConversationServiceStub(server.channel)
    request = conversation_pb2.StreamReplyRequest(turns=["hi"], max_new_tokens=0)
    with pytest.raises(grpc.RpcError) as info:
        list(stub.StreamReply(request, timeout=10))
    details = details_of(info.value)
    assert (details.reason, details.fields) == ("INVALID_FIELD", ["max_new_tokens"])
    assert details.info.metadata["task"] == "conversation"
