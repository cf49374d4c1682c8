"""Every task result: ``len()``, ``result[0]``, iteration, a short repr; numpy output; merging
the results of chunks. No server."""

from __future__ import annotations

import sys

import numpy as np
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
from hubless_client import (
    EmbedResult,
    Emotion,
    EmotionResult,
    FinishReason,
    LabelScore,
    ModelRef,
    Polarity,
    ReplyResult,
    SentimentResult,
    SummarizeResult,
    Summary,
    ZeroShot,
    ZeroShotResult,
)

COMMIT = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
REF = common_pb2.ModelRef(name="all-minilm-l6-v2", repo_id="org/m", commit=COMMIT)
MODEL = ModelRef("all-minilm-l6-v2", "org/m", COMMIT)


def embed_pb(n: int, d: int = 384, start: int = 0) -> embeddings_pb2.EmbedResponse:
    """``n`` vectors of ``d`` floats; vector i holds i + j / 1024 (exact in float32)."""
    message = embeddings_pb2.EmbedResponse(
        dimension=d,
        model=REF,
        embeddings=[
            embeddings_pb2.Embedding(
                values=[(start + i) + j / 1024 for j in range(d)], tokens=i, truncated=i == 1
            )
            for i in range(n)
        ],
    )
    return embeddings_pb2.EmbedResponse.FromString(message.SerializeToString())


def test_model_ref_str() -> None:
    assert str(MODEL) == "all-minilm-l6-v2@a1b2c3d"
    assert str(ModelRef("m", "", "")) == "m"


def test_embed_result_is_a_sequence_of_vectors() -> None:
    result = EmbedResult.from_pb(embed_pb(3))
    assert len(result) == 3
    assert result[0] == result.vectors[0] and result[-1][0] == 2.0
    assert result[1:] == result.vectors[1:]
    assert list(result) == result.vectors
    assert repr(result) == "EmbedResult(3 x 384, model=all-minilm-l6-v2@a1b2c3d)"
    assert result.models == (MODEL,)
    assert result.truncated == [False, True, False] and result.tokens == [0, 1, 2]


def test_embed_to_numpy() -> None:
    result = EmbedResult.from_pb(embed_pb(3))
    array = result.to_numpy()
    assert array.shape == (3, 384) and array.dtype == np.float32
    assert np.array_equal(array, np.array(result.vectors, dtype=np.float32))
    assert array.tolist() == result.vectors  # float32 values, exactly
    assert np.array_equal(np.asarray(result), array)
    assert np.asarray(result, dtype=np.float64).dtype == np.float64


def test_embed_as_numpy() -> None:
    lists = EmbedResult.from_pb(embed_pb(3))
    arrays = EmbedResult.from_pb(embed_pb(3), as_numpy=True)
    assert isinstance(arrays.vectors, np.ndarray)
    assert arrays.vectors.shape == (3, 384) and arrays.vectors.dtype == np.float32
    assert arrays.to_numpy() is arrays.vectors
    assert np.array_equal(arrays.vectors, lists.to_numpy())
    assert arrays == lists and lists == arrays  # same values, either representation
    assert isinstance(arrays[0], np.ndarray) and arrays[0].shape == (384,)
    assert len(arrays) == 3 and len(list(arrays)) == 3
    assert repr(arrays) == "EmbedResult(3 x 384, numpy, model=all-minilm-l6-v2@a1b2c3d)"


def test_embed_numpy_of_nothing_and_of_hand_made_results() -> None:
    empty = EmbedResult.from_pb(embeddings_pb2.EmbedResponse(dimension=4), as_numpy=True)
    assert empty.vectors.shape == (0, 4) and len(empty) == 0
    assert EmbedResult.from_pb(embeddings_pb2.EmbedResponse(dimension=4)).to_numpy().shape == (
        0,
        4,
    )
    made = EmbedResult([[1.0, 2.0]], 2, MODEL, [False], [1])
    assert made.to_numpy().tolist() == [[1.0, 2.0]] and made.models == (MODEL,)
    assert made != EmbedResult([[1.0, 3.0]], 2, MODEL, [False], [1])


def test_numpy_is_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    result = EmbedResult.from_pb(embed_pb(1, 4))
    monkeypatch.setitem(sys.modules, "numpy", None)
    with pytest.raises(ImportError, match=r"hubless-client\[numpy\]"):
        result.to_numpy()
    with pytest.raises(ImportError, match="numpy"):
        EmbedResult.from_pb(embed_pb(1, 4), as_numpy=True)
    assert result.vectors[0][:2] == [0.0, 1 / 1024]  # lists need no numpy


@pytest.mark.parametrize("as_numpy", [False, True])
def test_embed_merge_keeps_order(as_numpy: bool) -> None:
    parts = [EmbedResult.from_pb(embed_pb(2, 8, start), as_numpy=as_numpy) for start in (0, 2)]
    merged = EmbedResult.merge(parts)
    assert len(merged) == 4 and merged.tokens == [0, 1, 0, 1]
    assert merged.truncated == [False, True, False, True]
    assert [row[0] for row in merged.to_numpy()] == [0.0, 1.0, 2.0, 3.0]
    assert isinstance(merged.vectors, np.ndarray) is as_numpy
    whole = EmbedResult.from_pb(embed_pb(4, 8))
    assert np.array_equal(merged.to_numpy(), whole.to_numpy())
    assert EmbedResult.merge(parts[:1]) is parts[0]


def emotion_pb(labels: list[str]) -> emotion_pb2.DetectEmotionResponse:
    return emotion_pb2.DetectEmotionResponse(
        model=REF,
        results=[
            emotion_pb2.EmotionResult(
                label=label, score=0.75, scores=[common_pb2.LabelScore(label=label, score=0.75)]
            )
            for label in labels
        ],
    )


def test_emotion_result() -> None:
    result = EmotionResult.from_pb(emotion_pb(["joy", "anger", "fear", "joy"]))
    assert len(result) == 4 and result[1].label == "anger" and result[-1].label == "joy"
    assert [e.label for e in result[:2]] == ["joy", "anger"]
    assert repr(result) == (
        "EmotionResult(4 texts: joy, anger, fear, ..., model=all-minilm-l6-v2@a1b2c3d)"
    )
    assert repr(result[0]) == "Emotion('joy', 0.750)"
    assert repr(Emotion("joy", 0.5, [], True)) == "Emotion('joy', 0.500, truncated)"
    assert repr(result[0].scores[0]) == "LabelScore('joy', 0.750)"
    one = EmotionResult.from_pb(emotion_pb(["joy"]))
    assert repr(one) == "EmotionResult(1 text: joy, model=all-minilm-l6-v2@a1b2c3d)"
    assert (
        repr(EmotionResult([], MODEL)) == "EmotionResult(0 texts, model=all-minilm-l6-v2@a1b2c3d)"
    )


def test_sentiment_result() -> None:
    result = SentimentResult.from_pb(
        sentiment_pb2.AnalyzeSentimentResponse(
            model=REF,
            results=[
                sentiment_pb2.SentimentResult(
                    label="POSITIVE", score=0.5, polarity=sentiment_pb2.POLARITY_POSITIVE
                ),
                sentiment_pb2.SentimentResult(label="NEGATIVE", score=0.25, truncated=True),
            ],
        )
    )
    assert len(result) == 2 and result[0].polarity is Polarity.POSITIVE
    assert [s.label for s in result] == ["POSITIVE", "NEGATIVE"]
    assert repr(result) == (
        "SentimentResult(2 texts: POSITIVE, NEGATIVE, model=all-minilm-l6-v2@a1b2c3d)"
    )
    assert repr(result[0]) == "Sentiment('POSITIVE', 0.500, polarity=positive)"
    assert repr(result[1]) == "Sentiment('NEGATIVE', 0.250, polarity=unspecified, truncated)"


def test_zero_shot_result() -> None:
    scores = [common_pb2.LabelScore(label="sports", score=0.75)]
    scores.append(common_pb2.LabelScore(label="politics", score=0.25))
    result = ZeroShotResult.from_pb(
        zero_shot_pb2.ClassifyZeroShotResponse(
            model=REF, results=[zero_shot_pb2.ZeroShotResult(scores=scores)]
        )
    )
    assert len(result) == 1 and result[0].label == "sports"
    assert next(iter(result)).by_label == {"sports": 0.75, "politics": 0.25}
    assert repr(result) == "ZeroShotResult(1 text: sports, model=all-minilm-l6-v2@a1b2c3d)"
    assert repr(result[0]) == "ZeroShot('sports', 0.750, 2 labels)"
    assert repr(ZeroShot([LabelScore("a", 1.0)], False)) == "ZeroShot('a', 1.000, 1 label)"


def test_summarize_result() -> None:
    long = "The match ended 2-1 after a late goal from the visiting side's striker."
    result = SummarizeResult.from_pb(
        summarization_pb2.SummarizeResponse(
            model=REF,
            summaries=[
                summarization_pb2.Summary(text="Short.", tokens=2),
                summarization_pb2.Summary(text=long, tokens=15, truncated=True),
            ],
        )
    )
    assert len(result) == 2 and result[1].text == long and result.summaries[0].text == "Short."
    assert repr(result) == (
        "SummarizeResult(2 texts: 'Short.', 'The match ended 2-1…', model=all-minilm-l6-v2@a1b2c3d)"
    )
    assert repr(result[0]) == "Summary('Short.', 2 tokens)"
    assert repr(result[1]) == (
        "Summary('The match ended 2-1 after a late goal f…', 15 tokens, truncated)"
    )
    assert repr(Summary("x", False, 1)) == "Summary('x', 1 token)"


def test_reply_result_is_one_text() -> None:
    reply = ReplyResult.from_pb(
        conversation_pb2.ReplyResponse(
            text="Hello there!",
            tokens=4,
            finish_reason=conversation_pb2.FINISH_REASON_STOP,
            model=REF,
        )
    )
    assert str(reply) == "Hello there!" and reply.finish_reason is FinishReason.STOP
    assert repr(reply) == (
        "ReplyResult('Hello there!', 4 tokens, stop, model=all-minilm-l6-v2@a1b2c3d)"
    )


def test_batch_merge_and_models() -> None:
    other = ModelRef("all-minilm-l6-v2", "org/m", "f" * 40)
    first = EmotionResult.from_pb(emotion_pb(["joy", "fear"]))
    second = EmotionResult([Emotion("anger", 0.5, [], False)], other)
    merged = EmotionResult.merge([first, second, first])
    assert [e.label for e in merged] == ["joy", "fear", "anger", "joy", "fear"]
    assert merged.model == MODEL and merged.models == (MODEL, other)
    assert repr(merged).endswith("model=all-minilm-l6-v2@a1b2c3d (+1 other version))")
    assert EmotionResult.merge([first]) is first
    assert EmotionResult.merge([first, first]).models == (MODEL,)
