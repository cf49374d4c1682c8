"""Summarization runtime: length bounds, batching key, truncation, finished flag."""

from __future__ import annotations

import pytest
import torch

from hubless_server.runtimes import InputTooLongError, Seq2SeqRuntime, SummarizeItem
from tests.runtimes.conftest import LoadRuntime, load_runtime

NAME = "bart-large"
TEXTS = [
    "The city council met on Tuesday to discuss the budget for schools and roads.",
    "hello",
    "Scientists discovered a new species of bird in the rain forest of South America.",
]


@pytest.mark.parametrize(("min_length", "max_length", "beams"), [(0, 6, 1), (4, 9, 1), (3, 7, 2)])
def test_lengths_respected(
    loaded: LoadRuntime, min_length: int, max_length: int, beams: int
) -> None:
    runtime = loaded(NAME)
    batch = [runtime.prepare(SummarizeItem(t, min_length, max_length, beams)) for t in TEXTS]
    assert {p.batch_key for p in batch} == {(min_length, max_length, beams)}
    out = runtime.predict(batch)
    assert len(out) == len(TEXTS)
    for result in out:
        assert min_length <= result.tokens <= max_length
        assert isinstance(result.text, str) and result.text
        assert not result.truncated
        # the random tiny model never chooses EOS; BART's forced EOS at the limit is no "finish"
        assert result.tokens == max_length and not result.finished


def test_batch_equals_one_by_one(loaded: LoadRuntime) -> None:
    runtime = loaded(NAME)
    items = [SummarizeItem(t, 2, 8) for t in TEXTS]
    batched = runtime.predict([runtime.prepare(item) for item in items])
    for item, result in zip(items, batched, strict=True):
        assert runtime.predict([runtime.prepare(item)])[0] == result


def test_finished_at_eos_and_min_length(tiny_models) -> None:
    """A model that prefers EOS stops early (finished) but not before min_length."""
    runtime = load_runtime(tiny_models[NAME])
    eos = runtime._model.generation_config.eos_token_id
    with torch.no_grad():
        runtime._model.final_logits_bias[..., eos] = 1e4
    early = runtime.predict([runtime.prepare(SummarizeItem(TEXTS[0], 0, 20))])[0]
    assert early.finished and early.tokens == 2  # forced BOS, then EOS
    later = runtime.predict([runtime.prepare(SummarizeItem(TEXTS[0], 6, 20))])[0]
    assert later.finished and later.tokens == 6


def test_truncation(loaded: LoadRuntime) -> None:
    runtime = loaded(NAME)
    limit = runtime.info().max_input_tokens
    long_text = "The stock market fell sharply on Monday after weak economic data. " * 30
    prepared = runtime.prepare(SummarizeItem(long_text, 1, 5))
    assert prepared.truncated and prepared.num_tokens == limit
    assert runtime.predict([prepared])[0].truncated
    with pytest.raises(InputTooLongError) as err:
        runtime.prepare(SummarizeItem(long_text, 1, 5, truncate=False))
    assert err.value.limit == limit


def test_max_length_capped_at_decoder_positions(loaded: LoadRuntime) -> None:
    runtime = loaded(NAME)
    cap = runtime.info().extra["max_new_tokens"]
    assert cap == 127  # tiny model: 128 decoder positions, one taken by the start token
    prepared = runtime.prepare(SummarizeItem(TEXTS[0], 3, 10_000))
    assert prepared.batch_key == (3, cap, 1)


def test_bad_settings(loaded: LoadRuntime) -> None:
    runtime: Seq2SeqRuntime = loaded(NAME)
    bad = [
        SummarizeItem(TEXTS[0], 5, 4),
        SummarizeItem(TEXTS[0], -1, 4),
        SummarizeItem(TEXTS[0], 0, 0),
        SummarizeItem(TEXTS[0], 10_000, 10_000),
        SummarizeItem(TEXTS[0], 0, 5, num_beams=0),
        SummarizeItem("", 0, 5),
    ]
    for item in bad:
        with pytest.raises(ValueError):
            runtime.prepare(item)
    mixed = [
        runtime.prepare(SummarizeItem(TEXTS[0], 1, 5)),
        runtime.prepare(SummarizeItem(TEXTS[1], 1, 6)),
    ]
    with pytest.raises(ValueError, match="batch"):
        runtime.predict(mixed)
