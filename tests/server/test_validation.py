"""Every INVALID_ARGUMENT case, with an actionable message, against a live server."""

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
from tests.server.fakes import FakeRuntime, fake_factory, make_fake_volume
from tests.server.harness import RunningServer, settings_for

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
    return "Classify", zero_shot_pb2.ClassifyRequest(**kw)


def Summarize(**kw: Any) -> tuple[str, Any]:
    kw.setdefault("texts", ["a text"])
    return "Summarize", summarization_pb2.SummarizeRequest(**kw)


LONG = " ".join(["w"] * 70)  # the fake runtime accepts 64 tokens (one per word)

CASES: dict[str, tuple[tuple[str, Any], str]] = {
    "embed-empty-batch": (("Embed", embeddings_pb2.EmbedRequest()), "texts is empty"),
    "embed-blank-text": (
        ("Embed", embeddings_pb2.EmbedRequest(texts=["ok", "  \n"])),
        "texts[1] is empty",
    ),
    "embed-too-long": (
        ("Embed", embeddings_pb2.EmbedRequest(texts=["x" * 201])),
        "201 characters; at most 200",
    ),
    "embed-too-many": (
        ("Embed", embeddings_pb2.EmbedRequest(texts=["a"] * 4)),
        "4 entries; at most 3",
    ),
    "embed-bad-truncation": (
        ("Embed", embeddings_pb2.EmbedRequest(texts=["a"], truncation=7)),
        "truncation 7",
    ),
    "detect-empty": (("Detect", emotion_pb2.DetectRequest()), "texts is empty"),
    "detect-too-long-tokens": (
        (
            "Detect",
            emotion_pb2.DetectRequest(texts=["fine", LONG], truncation=common_pb2.TRUNCATION_ERROR),
        ),
        "text 1: input is 70 tokens long; the model accepts at most 64",
    ),
    "analyze-blank": (("Analyze", sentiment_pb2.AnalyzeRequest(texts=[""])), "texts[0] is empty"),
    "analyze-runtime-rejects": (
        ("Analyze", sentiment_pb2.AnalyzeRequest(texts=["boom"])),
        "refuses 'boom'",
    ),
    "classify-no-labels": (Classify(), "candidate_labels is empty"),
    "classify-duplicate": (Classify(candidate_labels=["a", "b", "a"]), "'a' twice"),
    "classify-empty-label": (Classify(candidate_labels=["a", " "]), "candidate_labels[1] is empty"),
    "classify-too-many-labels": (Classify(candidate_labels=list("abcde")), "at most 4"),
    "classify-template-none": (
        Classify(candidate_labels=["a"], hypothesis_template="About it."),
        "exactly once",
    ),
    "classify-template-two": (
        Classify(candidate_labels=["a"], hypothesis_template="{} or {}"),
        "exactly once",
    ),
    "summarize-max-below-min": (Summarize(min_length=20, max_length=10), "below min_length"),
    "summarize-negative": (Summarize(min_length=-1), "min_length is -1"),
    "summarize-negative-beams": (Summarize(num_beams=-2), "num_beams is -2"),
    "summarize-too-many-beams": (Summarize(num_beams=3), "at most 2"),
    "summarize-max-over-cap": (Summarize(max_length=101), "at most 100"),
    "summarize-min-over-cap": (Summarize(min_length=150), "at most 100"),
    "reply-no-turns": (Reply(), "turns is empty"),
    "reply-blank-turn": (Reply(turns=["hi", ""]), "turns[1] is empty"),
    "reply-negative-temperature": (Reply(turns=["hi"], temperature=-0.5), "temperature is -0.5"),
    "reply-nan-temperature": (Reply(turns=["hi"], temperature=float("nan")), "finite"),
    "reply-top-p-zero": (Reply(turns=["hi"], top_p=0.0), "top_p is 0.0"),
    "reply-top-p-above-one": (Reply(turns=["hi"], top_p=1.5), "(0, 1]"),
    "reply-negative-tokens": (Reply(turns=["hi"], max_new_tokens=-1), "must not be negative"),
    "reply-tokens-over-cap": (Reply(turns=["hi"], max_new_tokens=101), "at most 100"),
}

STUBS = {
    "Embed": embeddings_pb2_grpc.EmbeddingsStub,
    "Detect": emotion_pb2_grpc.EmotionStub,
    "Analyze": sentiment_pb2_grpc.SentimentStub,
    "Classify": zero_shot_pb2_grpc.ZeroShotStub,
    "Summarize": summarization_pb2_grpc.SummarizationStub,
    "Reply": conversation_pb2_grpc.ConversationStub,
}


def call(server: RunningServer, method: str, request: Any) -> Any:
    return getattr(STUBS[method](server.channel), method)(request, timeout=10)


@pytest.mark.parametrize("case", sorted(CASES))
def test_invalid_argument(server: RunningServer, case: str) -> None:
    (method, request), expected = CASES[case]
    with pytest.raises(grpc.RpcError) as info:
        call(server, method, request)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert expected in info.value.details()


def test_nothing_invalid_reaches_the_model(server: RunningServer) -> None:
    computed = [item for _, batch in FakeRuntime.batches for item in batch]
    assert all(getattr(item, "text", "") not in ("boom", LONG) for item in computed)


def test_stream_validates_too(server: RunningServer) -> None:
    stub = conversation_pb2_grpc.ConversationStub(server.channel)
    with pytest.raises(grpc.RpcError) as info:
        list(stub.ReplyStream(conversation_pb2.ReplyRequest(turns=["hi"], top_p=2.0), timeout=10))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_long_input_is_truncated_by_default(server: RunningServer) -> None:
    stub = emotion_pb2_grpc.EmotionStub(server.channel)
    response = stub.Detect(emotion_pb2.DetectRequest(texts=["short", LONG]), timeout=10)
    assert [r.truncated for r in response.results] == [False, True]
