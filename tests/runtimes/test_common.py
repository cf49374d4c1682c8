"""Runtime registry, precision policy, padding/chunking helpers and tokenizer thread safety."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch

from hubless_server.core.tasks import TASKS as TASK_NAMES
from hubless_server.runtimes import (
    KINDS,
    ChatRuntime,
    EmbeddingRuntime,
    InputTooLongError,
    ModelRuntime,
    RuntimeOptions,
    Seq2SeqRuntime,
    SequenceClassificationRuntime,
    TextItem,
    ZeroShotRuntime,
    runtime_class,
)
from hubless_server.runtimes._common import chunked, pad_rows, resolve_precision
from tests.runtimes.conftest import LoadRuntime


def test_runtime_class_for_every_task() -> None:
    expected = {
        "emotion": SequenceClassificationRuntime,
        "sentiment": SequenceClassificationRuntime,
        "zero-shot": ZeroShotRuntime,
        "summarization": Seq2SeqRuntime,
        "conversation": ChatRuntime,
        "embedding": EmbeddingRuntime,
    }
    assert set(TASK_NAMES) == set(expected)
    for task, cls in expected.items():
        assert runtime_class(task) is cls
        assert issubclass(cls, ModelRuntime)
        assert KINDS[cls.kind] is cls


def test_runtime_class_unknown_task() -> None:
    with pytest.raises(ValueError, match="unknown task"):
        runtime_class("translation")


def test_catalog_tasks_all_have_runtimes(tiny_models) -> None:
    for model in tiny_models.values():
        assert runtime_class(model.task) in KINDS.values()


def test_precision_policy() -> None:
    fp32 = resolve_precision(RuntimeOptions("cpu", "float32"))
    assert (fp32.weights, fp32.autocast) == (torch.float32, None)
    bf16 = resolve_precision(RuntimeOptions("cpu", "bfloat16"))
    assert (bf16.weights, bf16.autocast) == (torch.float32, torch.bfloat16)
    assert bf16.extra() == {"weights_dtype": "float32", "autocast": "bfloat16"}
    fp16 = resolve_precision(RuntimeOptions("cpu", "float16"))
    assert (fp16.weights, fp16.autocast) == (torch.float32, torch.float16)


def test_precision_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="dtype"):
        resolve_precision(RuntimeOptions("cpu", "int8"))
    with pytest.raises(ValueError, match="device"):
        resolve_precision(RuntimeOptions("tpu", "float32"))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            resolve_precision(RuntimeOptions("cuda", "float16"))


def test_methods_before_load_raise(tiny_models) -> None:
    model = tiny_models["distilbert-sst2"]
    runtime = runtime_class(model.task)(model.name, model.path, RuntimeOptions())
    with pytest.raises(RuntimeError, match="not loaded"):
        runtime.info()
    with pytest.raises(RuntimeError, match="not loaded"):
        runtime.prepare(TextItem("hello"))


def test_pad_rows_right_and_left() -> None:
    rows = [{"input_ids": [5, 6, 7]}, {"input_ids": [8]}]
    right = pad_rows(rows, 0, torch.device("cpu"))
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    left = pad_rows(rows, 9, torch.device("cpu"), left=True)
    assert left["input_ids"].tolist() == [[5, 6, 7], [9, 9, 8]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_chunked_respects_budget_and_order() -> None:
    rows = [{"input_ids": list(range(n))} for n in (5, 1, 9, 3, 9, 2)]
    calls: list[list[int]] = []

    def run(chunk: list[dict[str, list[int]]]) -> list[int]:
        widths = [len(r["input_ids"]) for r in chunk]
        assert max(widths) * len(chunk) <= 10 or len(chunk) == 1
        calls.append(widths)
        return widths

    assert chunked(rows, run, max_tokens=10) == [5, 1, 9, 3, 9, 2]
    assert len(calls) > 1
    calls.clear()
    assert chunked(rows, lambda c: [len(r["input_ids"]) for r in c], max_tokens=0) == [
        5,
        1,
        9,
        3,
        9,
        2,
    ]


def test_chunk_budget_comes_from_the_runtime_options(loaded: LoadRuntime, tiny_models) -> None:
    """``RuntimeOptions.max_chunk_tokens`` (the server's --max-chunk-tokens) splits a batch."""
    model = tiny_models["all-minilm-l6-v2"]
    runtime = EmbeddingRuntime(model.name, model.path, RuntimeOptions(max_chunk_tokens=8))
    runtime.load()
    widths: list[int] = []
    embed = runtime._embed

    def spy(rows: list[dict[str, list[int]]]) -> Any:
        widths.append(len(rows))
        return embed(rows)

    runtime._embed = spy  # type: ignore[method-assign]
    texts = ["one two three", "four five", "six", "seven eight nine ten"]
    out = runtime.predict([runtime.prepare(TextItem(t)) for t in texts])
    assert len(out) == 4 and len(widths) > 1


def test_prepare_is_thread_safe(loaded: LoadRuntime) -> None:
    """Many threads tokenising at once, half of them truncating, give the sequential result."""
    runtime = loaded("bert-multilingual-sentiment")
    texts = [("word " * (i * 7 % 200)) + f"item {i}" for i in range(64)]
    expected = [runtime.prepare(TextItem(t)) for t in texts]
    barrier = threading.Barrier(8)

    def work(offset: int) -> list:
        barrier.wait()
        return [runtime.prepare(TextItem(texts[(offset + k) % 64])) for k in range(64)]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    for offset, got in enumerate(results):
        for k, prepared in enumerate(got):
            want = expected[(offset + k) % 64]
            assert prepared.features == want.features
            assert (prepared.num_tokens, prepared.truncated) == (want.num_tokens, want.truncated)
    assert any(p.truncated for p in expected) and not all(p.truncated for p in expected)


def test_prepare_never_pads_and_rejects_empty(loaded: LoadRuntime) -> None:
    runtime = loaded("emotion-english-distilroberta")
    short = runtime.prepare(TextItem("hi"))
    assert len(short.features["input_ids"]) == short.num_tokens
    assert runtime._pad_id not in short.features["input_ids"]
    for bad in ("", "   "):
        with pytest.raises(ValueError):
            runtime.prepare(TextItem(bad))
    with pytest.raises(InputTooLongError) as err:
        runtime.prepare(TextItem("word " * 500, truncate=False))
    assert err.value.limit == runtime.info().max_input_tokens
    assert err.value.tokens > err.value.limit


FAST_PATH_TEXTS = [
    "A man is eating food.",
    "  leading and trailing  ",
    "[SEP] </s> <|endoftext|> [CLS] <s> <pad> in the text stay text",
    "Emojis 🎉 and ÜNÏCÖDE, これは日本語, numbers 3.14159",
    "word " * 300,
]


def test_the_fast_tokenizer_path_matches_the_transformers_call(tiny_models) -> None:
    """One text (or pair) without truncation goes straight to the Rust backend: the same ids
    (and token_type_ids) as the transformers call, for every tokenizer of the catalog and the
    real MiniLM, before and after a truncating call (which sets truncation on the backend)."""
    from hubless_fakehub.real_models import real_minilm_dir
    from hubless_server.runtimes._common import LockedTokenizer, load_tokenizer

    dirs = {name: model.path for name, model in tiny_models.items()}
    dirs["real-minilm"] = real_minilm_dir()
    for name, path in dirs.items():
        tok = LockedTokenizer(load_tokenizer(path))
        assert tok._backend is not None, name
        slow = LockedTokenizer(load_tokenizer(path))
        slow._backend = None  # the transformers call
        for text in FAST_PATH_TEXTS:
            for pair in (None, "This example is politics."):
                expected = slow.encode(text, pair)
                assert tok.encode(text, pair) == expected, (name, text, pair)
                tok.encode(text, pair, truncation=True, max_length=10)  # slow path
                assert tok.encode(text, pair) == expected, (name, text, pair, "after truncation")
            assert tok.encode(text, add_special_tokens=False) == slow.encode(
                text, add_special_tokens=False
            )
