"""The nasty texts through every task of real (tiny, random-weight) models, once each: special
tokens, 10k emoji, zero-width and right-to-left runs, format strings. Each answer is OK or
INVALID_ARGUMENT (a chat turn that cannot fit), never INTERNAL, and no traceback is logged.
Also the zero-shot hypothesis that does not fit: the label or template is blamed, not the
truncation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from hubless.v1 import (
    common_pb2,
    conversation_pb2,
    embeddings_pb2,
    emotion_pb2,
    sentiment_pb2,
    summarization_pb2,
    zero_shot_pb2,
)
from tests.server.harness import RunningServer, settings_for
from tests.server.raw_calls import BY_NAME, Outcome, Records, call_raw
from tests.server.rich_errors import details_of

NASTY = {
    "special-tokens": "<s> </s> <|endoftext|> [CLS] [SEP] <pad> <unk> <mask> hello",
    "endoftext-run": "<|endoftext|>" * 200,
    "10k-emoji": "\U0001f600" * 10_000,
    "zero-width": "a\u200b\u200c\u200d\ufeffb" * 500,
    "rtl": "\u202e" + "\u05e9\u05dc\u05d5\u05dd " * 200 + "\u202c",
    "format-strings": "{0} {} %s %n {__class__} {0.__class__.__init__.__globals__}",
}
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}


@pytest.fixture
def tiny_server(
    volume_factory: Callable[[list[str] | None], Path],
) -> RunningServer:
    return RunningServer(settings_for(volume_factory(None)), None)


def requests(text: str) -> list[tuple[str, bytes]]:
    """One request per task (and per sentiment model) carrying ``text``."""
    out = [
        ("Embed", embeddings_pb2.EmbedRequest(texts=[text])),
        ("DetectEmotion", emotion_pb2.DetectEmotionRequest(texts=[text])),
        (
            "ClassifyZeroShot",
            zero_shot_pb2.ClassifyZeroShotRequest(
                texts=[text],
                candidate_labels=["<s>", "</s>", "{0}", "\U0001f600", "%s"],
                hypothesis_template="<|endoftext|> {} [SEP] %s",
            ),
        ),
        ("Summarize", summarization_pb2.SummarizeRequest(texts=[text], max_length=8)),
        ("Reply", conversation_pb2.ReplyRequest(turns=["hi", text], max_new_tokens=4)),
        (
            "StreamReply",
            conversation_pb2.StreamReplyRequest(
                turns=[text], max_new_tokens=4, temperature=0.7, seed=1
            ),
        ),
    ]
    for model in ("bert-multilingual-sentiment", "twitter-roberta-sentiment", "distilbert-sst2"):
        request = sentiment_pb2.AnalyzeSentimentRequest(texts=[text], model=model)
        out.append(("AnalyzeSentiment", request))
    return [(name, request.SerializeToString()) for name, request in out]


def test_nasty_texts_through_every_task(tiny_server: RunningServer) -> None:
    outcomes: dict[tuple[str, str], Outcome] = {}
    try:
        with Records() as logs:
            for label, text in NASTY.items():
                for method, body in requests(text):
                    outcome = call_raw(tiny_server.channel, BY_NAME[method], body, timeout=120)
                    outcomes[label, method] = outcome
        assert not logs.tracebacks(), [r.getMessage() for r in logs.tracebacks()][:3]
    finally:
        tiny_server.stop()
    bad = {key: o.error for key, o in outcomes.items() if o.code not in ALLOWED}
    assert not bad
    for key, outcome in outcomes.items():
        if outcome.error is not None:  # INVALID_ARGUMENT: with the error contract
            assert details_of(outcome.error).reason in {"INPUT_TOO_LONG", "INVALID_FIELD"}, key
    # only a chat turn that cannot fit beside max_new_tokens may be refused; a "</s>" in a
    # zero-shot text used to fail BART's batch (INTERNAL): request text is never a control token
    refused = {key for key, o in outcomes.items() if o.code is not grpc.StatusCode.OK}
    assert {method for _, method in refused} <= {"Reply", "StreamReply"}, refused


def test_a_hypothesis_that_cannot_fit_names_the_label_or_the_template(
    tiny_server: RunningServer,
) -> None:
    method = BY_NAME["ClassifyZeroShot"]
    long_label = "word " * 600  # the tiny bart-large-mnli takes 128 tokens
    try:
        for truncation in (common_pb2.TRUNCATION_UNSPECIFIED, common_pb2.TRUNCATION_ERROR):
            request = zero_shot_pb2.ClassifyZeroShotRequest(
                texts=["a short text"], candidate_labels=["ok", long_label], truncation=truncation
            )
            outcome = call_raw(tiny_server.channel, method, request.SerializeToString())
            assert outcome.code is grpc.StatusCode.INVALID_ARGUMENT and outcome.error is not None
            details = details_of(outcome.error)
            assert (details.reason, details.fields) == ("INPUT_TOO_LONG", ["candidate_labels[1]"])
            message = outcome.error.details()  # type: ignore[attr-defined]
            assert "hypothesis" in message and "TRUNCATION_ERROR" not in message
            assert details.info.metadata["max_input_tokens"] == "128"
        request = zero_shot_pb2.ClassifyZeroShotRequest(
            texts=["a short text"],
            candidate_labels=["ok"],
            hypothesis_template="This example is " + "very " * 300 + "{}.",
        )
        outcome = call_raw(tiny_server.channel, method, request.SerializeToString())
        assert outcome.error is not None
        assert details_of(outcome.error).fields == ["hypothesis_template"]
        # a long text with short hypotheses is still truncated (or refused with ERROR)
        request = zero_shot_pb2.ClassifyZeroShotRequest(
            texts=["word " * 600], candidate_labels=["a", "b"]
        )
        reply = call_raw(tiny_server.channel, method, request.SerializeToString())
        assert reply.code is grpc.StatusCode.OK
        request.truncation = common_pb2.TRUNCATION_ERROR
        refused = call_raw(tiny_server.channel, method, request.SerializeToString())
        assert refused.error is not None
        assert details_of(refused.error).fields == ["texts[0]"]
        assert "TRUNCATION_ERROR" in refused.error.details()  # type: ignore[attr-defined]
    finally:
        tiny_server.stop()
