"""Inputs, statistics and hardware figures shared by every benchmark suite."""

from __future__ import annotations

import logging
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("bench")

# Everyday English plus a few longer words that split into two or three word pieces, so a
# 12-word sentence reads as about 18 tokens with the MiniLM (WordPiece) tokenizer.
_SUBJECTS = [
    "the customer", "our team", "my neighbour", "the new manager", "a young engineer",
    "the delivery driver", "her little brother", "the support agent", "this restaurant",
    "the city council", "an old friend", "the hotel staff", "the quarterly report",
]  # fmt: skip
_VERBS = [
    "really enjoyed", "quickly fixed", "completely ignored", "meticulously reviewed",
    "strongly criticised", "begrudgingly recommended", "finally delivered", "barely acknowledged",
    "warmly welcomed", "sceptically questioned", "patiently explained", "loudly complained about",
]  # fmt: skip
_OBJECTS = [
    "the unexpected refund", "the broken dishwasher", "a surprisingly cheap subscription",
    "the delayed shipment", "our weekend itinerary", "the noisy refurbishment work",
    "the updated privacy policy", "a handwritten thank you note", "the overcrowded commuter train",
    "the spicy noodle soup", "the cancelled concert tickets", "the quarterly budget",
]  # fmt: skip
_TAILS = [
    "after waiting almost two hours", "during the busy holiday season",
    "before anyone else arrived", "despite the terrible weather", "without saying a word",
    "on a rainy Tuesday morning", "in front of everyone", "for the third time this month",
    "while the manager watched", "with great enthusiasm", "at the last possible minute",
]  # fmt: skip

ZERO_SHOT_LABELS = ["politics", "sports", "technology", "food", "travel"]


def make_sentences(n: int, seed: int = 1234) -> list[str]:
    """``n`` distinct-ish review-like sentences of about 12 words (~18 WordPiece tokens)."""
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(n):
        s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
        s = f"{s}, {rng.choice(_TAILS)}."
        out.append(s[0].upper() + s[1:])
    return out


def make_article(sentences: Sequence[str], n_sentences: int, offset: int = 0) -> str:
    """A paragraph made of ``n_sentences`` consecutive sentences from ``sentences``."""
    return " ".join(sentences[(offset + i) % len(sentences)] for i in range(n_sentences))


def corpus_words() -> list[str]:
    """Every word the generated inputs can contain (to train benchmark tokenizers on)."""
    words: set[str] = set()
    for group in (_SUBJECTS, _VERBS, _OBJECTS, _TAILS, ZERO_SHOT_LABELS):
        for phrase in group:
            words.update(phrase.split())
    return sorted(words)


def corpus_text(n: int = 4000) -> list[str]:
    """Lines of text for training a tokenizer that splits the inputs like a real one would."""
    return make_sentences(n, seed=99) + [f"This example is {label}." for label in ZERO_SHOT_LABELS]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    data = sorted(values)
    k = (len(data) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def latency_summary(latencies_s: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/mean in milliseconds."""
    return {
        "p50_ms": percentile(latencies_s, 50) * 1e3,
        "p95_ms": percentile(latencies_s, 95) * 1e3,
        "p99_ms": percentile(latencies_s, 99) * 1e3,
        "mean_ms": (statistics.fmean(latencies_s) * 1e3) if latencies_s else float("nan"),
    }


@dataclass(frozen=True)
class TransformerShape:
    """What the FLOP count of a transformer needs (from its config)."""

    hidden: int
    layers: int
    ffn: int
    vocab: int = 0
    cross_attention: bool = False  # decoder layers of an encoder-decoder model


def flops_per_token(shape: TransformerShape, seq_len: float, with_lm_head: bool = False) -> float:
    """Forward FLOPs for one token: 2 x matmul weights + attention scores/values.

    Per layer: Q, K, V, O projections (4 h^2), the FFN (2 h ffn), and the attention itself
    (QK^T and AV: 2 x 2 x seq x h). Cross-attention adds 4 h^2 + 4 seq h. Embedding look-ups,
    norms and softmax are left out (they are not matmuls).
    """
    h, f = shape.hidden, shape.ffn
    per_layer = 2 * (4 * h * h + 2 * h * f) + 4 * seq_len * h
    if shape.cross_attention:
        per_layer += 2 * 4 * h * h + 4 * seq_len * h
    total = per_layer * shape.layers
    if with_lm_head:
        total += 2 * h * shape.vocab
    return float(total)


def gemm_rate(dtype_name: str, seconds: float, m: int, k: int, n: int) -> float:
    """Sustained ``torch.nn.functional.linear`` rate in GFLOP/s: (m x k) @ (k x n)."""
    import torch

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    x = torch.randn(m, k).to(dtype)
    w = torch.randn(n, k).to(dtype)
    with torch.inference_mode():
        torch.nn.functional.linear(x, w)
        count = 0
        t0 = time.perf_counter()
        while True:
            torch.nn.functional.linear(x, w)
            count += 1
            dt = time.perf_counter() - t0
            if dt >= seconds:
                break
    return 2.0 * m * k * n * count / dt / 1e9


# Square matrices, and the FFN of MiniLM / BERT-base on a batch of 128 x 18 tokens.
GEMM_SHAPES = {
    "1024^3": (1024, 1024, 1024),
    "2048^3": (2048, 2048, 2048),
    "2304x384x1536": (2304, 384, 1536),
    "2304x768x3072": (2304, 768, 3072),
}


def measure_gemm(seconds: float = 2.0) -> dict[str, Any]:
    """fp32 and bf16 GEMM rates: the best over a few shapes, with each shape's rate."""
    import torch

    out: dict[str, Any] = {"threads": torch.get_num_threads()}
    for dt in ("float32", "bfloat16"):
        per = seconds / len(GEMM_SHAPES)
        rates = {name: gemm_rate(dt, per, *shape) for name, shape in GEMM_SHAPES.items()}
        out[dt] = max(rates.values())
        out[f"{dt}_by_shape"] = {k: round(v, 1) for k, v in rates.items()}
        log.info("GEMM %s: %.0f GFLOP/s (%s)", dt, out[dt], out[f"{dt}_by_shape"])
    return out
