"""Sequence classification runtimes (emotion, sentiment) on every tiny classifier."""

from __future__ import annotations

import pytest
import torch

from hubless_server.runtimes import (
    InputTooLongError,
    SequenceClassificationRuntime,
    TextItem,
)
from tests.runtimes.conftest import LoadRuntime

CLASSIFIERS = [
    "emotion-english-distilroberta",
    "bert-multilingual-sentiment",
    "twitter-roberta-sentiment",
    "distilbert-sst2",
]
TEXTS = [
    "I am so happy today, this is the best day of my life!",
    "awful",
    "This movie was terrible and boring; I want my money back. " * 3,
]


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_scores_cover_labels_sorted_and_sum_to_one(
    name: str, loaded: LoadRuntime, tiny_models
) -> None:
    runtime = loaded(name)
    assert isinstance(runtime, SequenceClassificationRuntime)
    assert runtime.info().labels == tuple(runtime.labels)
    assert sorted(runtime.info().labels) == sorted(tiny_models[name].labels)
    out = runtime.predict([runtime.prepare(TextItem(t)) for t in TEXTS])
    assert len(out) == len(TEXTS)
    for result in out:
        labels = [label for label, _ in result.scores]
        probs = [p for _, p in result.scores]
        assert sorted(labels) == sorted(tiny_models[name].labels)
        assert probs == sorted(probs, reverse=True)
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert all(0.0 <= p <= 1.0 for p in probs)
        assert not result.truncated
    assert runtime.info().extra["labels"] == list(tiny_models[name].labels)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_matches_the_model_unbatched(name: str, loaded: LoadRuntime) -> None:
    """Batched, padded predictions equal a direct forward pass of each text alone."""
    runtime = loaded(name)
    out = runtime.predict([runtime.prepare(TextItem(t)) for t in TEXTS])
    tokenizer = runtime._tok.tokenizer
    for text, result in zip(TEXTS, out, strict=True):
        with torch.inference_mode():
            logits = runtime._model(**tokenizer(text, return_tensors="pt")).logits[0]
        probs = logits.softmax(-1).tolist()
        expected = dict(zip(runtime.labels, probs, strict=True))
        for label, p in result.scores:
            assert p == pytest.approx(expected[label], abs=1e-5)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_truncation(name: str, loaded: LoadRuntime) -> None:
    runtime = loaded(name)
    limit = runtime.info().max_input_tokens
    long_text = "The stock market fell sharply on Monday. " * 60
    prepared = runtime.prepare(TextItem(long_text))
    assert prepared.truncated and prepared.num_tokens == limit
    result = runtime.predict([prepared])[0]
    assert result.truncated
    with pytest.raises(InputTooLongError):
        runtime.prepare(TextItem(long_text, truncate=False))


def test_bf16_close_to_fp32(loaded: LoadRuntime) -> None:
    name = "emotion-english-distilroberta"
    fp32, bf16 = loaded(name), loaded(name, "bfloat16")
    for text in TEXTS:
        a = dict(fp32.predict([fp32.prepare(TextItem(text))])[0].scores)
        b = dict(bf16.predict([bf16.prepare(TextItem(text))])[0].scores)
        for label in a:
            assert b[label] == pytest.approx(a[label], abs=1e-2)
