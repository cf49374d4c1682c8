"""The batch calls of both clients as :class:`~hubless_client._chunks.BatchCall`: how to build
one chunk's request, read its answer and join the answers."""

from __future__ import annotations

from collections.abc import Sequence

from hubless_client import _common
from hubless_client._chunks import BatchCall
from hubless_client.types import (
    EmbedResult,
    EmotionResult,
    SentimentResult,
    SummarizeResult,
    Truncation,
    ZeroShotResult,
)


def embed(
    texts: Sequence[str],
    normalize: bool,
    model: str,
    truncation: Truncation | str | None,
    as_numpy: bool,
) -> BatchCall[EmbedResult]:
    if as_numpy:  # fail before sending anything when numpy is missing
        from hubless_client.types.embeddings import import_numpy

        import_numpy()
    return BatchCall(
        _common.text_list(texts),
        lambda chunk: _common.embed_request(chunk, normalize, model, truncation),
        lambda msg: EmbedResult.from_pb(msg, as_numpy=as_numpy),
        EmbedResult.merge,
    )


def emotion(
    texts: Sequence[str], model: str, truncation: Truncation | str | None
) -> BatchCall[EmotionResult]:
    return BatchCall(
        _common.text_list(texts),
        lambda chunk: _common.emotion_request(chunk, model, truncation),
        EmotionResult.from_pb,
        EmotionResult.merge,
    )


def sentiment(
    texts: Sequence[str], model: str, truncation: Truncation | str | None
) -> BatchCall[SentimentResult]:
    return BatchCall(
        _common.text_list(texts),
        lambda chunk: _common.sentiment_request(chunk, model, truncation),
        SentimentResult.from_pb,
        SentimentResult.merge,
    )


def zero_shot(
    texts: Sequence[str],
    candidate_labels: Sequence[str],
    multi_label: bool,
    hypothesis_template: str | None,
    model: str,
    truncation: Truncation | str | None,
) -> BatchCall[ZeroShotResult]:
    """Chunks split the texts; every chunk carries all the candidate labels."""
    labels = _common.text_list(candidate_labels, "candidate_labels")
    return BatchCall(
        _common.text_list(texts),
        lambda chunk: _common.zero_shot_request(
            chunk, labels, multi_label, hypothesis_template, model, truncation
        ),
        ZeroShotResult.from_pb,
        ZeroShotResult.merge,
        labels=len(labels),
    )


def summarize(
    texts: Sequence[str],
    min_length: int | None,
    max_length: int | None,
    num_beams: int | None,
    model: str,
    truncation: Truncation | str | None,
) -> BatchCall[SummarizeResult]:
    return BatchCall(
        _common.text_list(texts),
        lambda chunk: _common.summarize_request(
            chunk, min_length, max_length, num_beams, model, truncation
        ),
        SummarizeResult.from_pb,
        SummarizeResult.merge,
    )
