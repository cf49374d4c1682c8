"""Zero-shot (NLI) runtime: single vs multi-label maths, batching of pairs, templates."""

from __future__ import annotations

import pytest
import torch

from hubless_server.runtimes import (
    InputTooLongError,
    InvalidItemError,
    RuntimeOptions,
    ZeroShotItem,
    ZeroShotRuntime,
)
from tests.runtimes.conftest import LoadRuntime, load_runtime

NAME = "bart-large-mnli"
TEXT = "The team won the championship after a dramatic final match."
LABELS = ("sports", "politics", "technology", "travel")


def _logits(runtime: ZeroShotRuntime, text: str, hypothesis: str) -> torch.Tensor:
    tokenizer = runtime._tok.tokenizer
    with torch.inference_mode():
        return runtime._model(**tokenizer(text, hypothesis, return_tensors="pt")).logits[0]


def test_ids_from_config(loaded: LoadRuntime) -> None:
    runtime = loaded(NAME)
    assert (runtime.entailment_id, runtime.contradiction_id) == (2, 0)


def test_single_label_softmax_across_labels(loaded: LoadRuntime) -> None:
    runtime = loaded(NAME)
    prepared = runtime.prepare(ZeroShotItem(TEXT, LABELS))
    assert prepared.rows == len(LABELS)
    assert prepared.num_tokens == max(len(r["input_ids"]) for r in prepared.features)
    result = runtime.predict([prepared])[0]
    probs = [p for _, p in result.scores]
    assert sorted(label for label, _ in result.scores) == sorted(LABELS)
    assert probs == sorted(probs, reverse=True)
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    entail = torch.stack([_logits(runtime, TEXT, f"This example is {x}.")[2] for x in LABELS])
    expected = dict(zip(LABELS, entail.softmax(0).tolist(), strict=True))
    for label, p in result.scores:
        assert p == pytest.approx(expected[label], abs=1e-5)


def test_multi_label_entailment_vs_contradiction(loaded: LoadRuntime) -> None:
    runtime = loaded(NAME)
    item = ZeroShotItem(TEXT, LABELS, multi_label=True, template="The topic is {}")
    result = runtime.predict([runtime.prepare(item)])[0]
    for label, p in result.scores:
        logits = _logits(runtime, TEXT, f"The topic is {label}")
        expected = logits[[0, 2]].softmax(0)[1].item()
        assert p == pytest.approx(expected, abs=1e-5)
    assert sum(p for _, p in result.scores) != pytest.approx(1.0, abs=1e-3)


def test_single_candidate_is_scored_on_its_own(loaded: LoadRuntime) -> None:
    runtime = loaded(NAME)
    single = runtime.predict([runtime.prepare(ZeroShotItem(TEXT, ("sports",)))])[0]
    multi = runtime.predict([runtime.prepare(ZeroShotItem(TEXT, ("sports",), True))])[0]
    assert single.scores[0][0] == multi.scores[0][0] == "sports"
    assert single.scores[0][1] == pytest.approx(multi.scores[0][1])
    assert 0 < single.scores[0][1] < 1


def test_batch_of_mixed_items_equals_one_by_one(loaded: LoadRuntime) -> None:
    runtime = loaded(NAME)
    items = [
        ZeroShotItem(TEXT, LABELS),
        ZeroShotItem("Scientists discovered a new species of bird.", ("science", "art"), True),
        ZeroShotItem("hello", ("greeting", "farewell", "question")),
    ]
    batched = runtime.predict([runtime.prepare(item) for item in items])
    for item, result in zip(items, batched, strict=True):
        alone = runtime.predict([runtime.prepare(item)])[0]
        assert [label for label, _ in result.scores] == [label for label, _ in alone.scores]
        assert [p for _, p in result.scores] == pytest.approx([p for _, p in alone.scores])


def test_template_and_labels_validated(loaded: LoadRuntime) -> None:
    runtime = loaded(NAME)
    for template in ("no placeholder", "{} and {}", "{0} is {name}", "{} is {0}"):
        with pytest.raises(InvalidItemError) as info:
            runtime.prepare(ZeroShotItem(TEXT, LABELS, template=template))
        assert info.value.field == "hypothesis_template"
    with pytest.raises(InvalidItemError, match="at least one"):
        runtime.prepare(ZeroShotItem(TEXT, ()))
    with pytest.raises(InvalidItemError) as info:
        runtime.prepare(ZeroShotItem(TEXT, ("ok", " ")))
    assert info.value.field == "candidate_labels[1]"
    with pytest.raises(ValueError):
        runtime.prepare(ZeroShotItem(" ", LABELS))


def test_truncation_cuts_only_the_text(loaded: LoadRuntime) -> None:
    runtime = loaded(NAME)
    limit = runtime.info().max_input_tokens
    long_text = "The city council met on Tuesday to discuss the budget. " * 30
    prepared = runtime.prepare(ZeroShotItem(long_text, LABELS))
    assert prepared.truncated
    assert prepared.num_tokens == limit
    tokenizer = runtime._tok.tokenizer
    for label, row in zip(LABELS, prepared.features, strict=True):
        hypothesis_ids = tokenizer(f"This example is {label}.", add_special_tokens=False)
        tail = hypothesis_ids["input_ids"]
        assert row["input_ids"][-len(tail) - 1 : -1] == tail
    assert runtime.predict([prepared])[0].truncated
    with pytest.raises(InputTooLongError) as err:
        runtime.prepare(ZeroShotItem(long_text, LABELS, truncate=False))
    assert err.value.limit == limit


def test_non_nli_model_rejected_at_load(tiny_models) -> None:
    with pytest.raises(ValueError, match="entailment"):
        load_runtime(tiny_models["distilbert-sst2"], cls=ZeroShotRuntime)
    runtime = ZeroShotRuntime("x", tiny_models["twitter-roberta-sentiment"].path, RuntimeOptions())
    with pytest.raises(ValueError, match="NLI"):
        runtime.load()
