"""The parity check: an ONNX export serves what the PyTorch model serves, or it is not used.

Both runtimes are the server's own (same tokenising, truncation, padding, pooling and
scoring); only the forward pass differs. They answer the same fixed probes, once as one
padded batch (rows of different lengths: the attention mask matters) and once one probe at a
time (batch of one, no padding: the dynamic axes at their smallest), and the answers are
compared:

* embeddings: the cosine of the two vectors of every probe, at least ``MIN_COSINE`` (0.9999);
* classifiers and zero-shot: the same top label on every probe (where PyTorch's top two
  probabilities differ by more than the tolerance: a tie within it may order either way) and
  every label's probability within ``MAX_PROB_DELTA`` (1e-3).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the runtimes import torch: only when a model is exported
    from hubless_server.runtimes.base import ClassificationOutput, EmbeddingOutput, ModelRuntime

MIN_COSINE = 0.9999
MAX_PROB_DELTA = 1e-3

PROBE_TEXTS: tuple[str, ...] = (
    "A man is eating food.",
    "The new movie is awesome!",
    "I am so disappointed with this product, it broke after two days.",
    "Hubless serves Hugging Face models over gRPC, offline.",
    "ok",
    "What time does the train to Edinburgh leave tomorrow morning?",
    "The quarterly report shows revenue up 12% and costs down 3%.",
    "Je ne sais pas si c'est une bonne idée.",
    "Das Essen war kalt und der Service unfreundlich.",
    "これは日本語の文です。",
    "Emojis too 🎉🎉 and numbers 3.14159 and 2026-11-25.",
    "Terrible. Just terrible. Never again.",
    "I love how the light falls on the river in the evening.",
    "Please cancel my subscription effective immediately.",
    "The patient reported mild headaches and occasional dizziness after the second dose.",
    " ".join(["The city council met on Tuesday to discuss the budget."] * 12),
)
"""Fixed probes: short and long, several languages and scripts, digits and emoji; the last is
longer than small models' input limit, so truncation is exercised too."""

ZERO_SHOT_LABELS: tuple[str, ...] = ("politics", "sports", "technology", "food")


@dataclass
class ParityResult:
    """What the check measured; ``passed`` and, when not, ``reason`` (for the manifest and
    the log: no paths)."""

    passed: bool
    figures: dict[str, float] = field(default_factory=dict)
    reason: str = ""


def probe_items(kind: str) -> list[Any]:
    """The probe items of a runtime kind (``embedding``, ``classification``, ``zero_shot``)."""
    from hubless_server.runtimes.base import TextItem, ZeroShotItem

    if kind == "zero_shot":
        multi = [False, True]
        return [
            ZeroShotItem(text, ZERO_SHOT_LABELS, multi_label=multi[i % 2])
            for i, text in enumerate(PROBE_TEXTS)
        ]
    return [TextItem(text) for text in PROBE_TEXTS]


def answers(runtime: ModelRuntime[Any, Any], items: Sequence[Any]) -> list[list[Any]]:
    """The runtime's outputs for ``items``: as one batch, then one at a time."""
    prepared = [runtime.prepare(item) for item in items]
    together = runtime.predict(prepared)
    alone = [runtime.predict([p])[0] for p in prepared]
    return [together, alone]


def compare(kind: str, reference: list[list[Any]], candidate: list[list[Any]]) -> ParityResult:
    """Compare the ONNX runtime's ``candidate`` answers with PyTorch's ``reference``."""
    pairs = [
        (ref, cand)
        for ref_run, cand_run in zip(reference, candidate, strict=True)
        for ref, cand in zip(ref_run, cand_run, strict=True)
    ]
    if kind == "embedding":
        return _compare_embeddings(pairs)
    return _compare_scores(pairs)


def _compare_embeddings(pairs: list[tuple[EmbeddingOutput, EmbeddingOutput]]) -> ParityResult:
    cosines = [_cosine(ref.vector, cand.vector) for ref, cand in pairs]
    worst = min(cosines)
    figures = {"probes": len(pairs), "min_cosine": round(worst, 8)}
    if not worst >= MIN_COSINE:  # a NaN fails too
        return ParityResult(False, figures, f"min cosine {worst:.6f} < {MIN_COSINE}")
    return ParityResult(True, figures)


def _compare_scores(
    pairs: list[tuple[ClassificationOutput, ClassificationOutput]],
) -> ParityResult:
    worst = 0.0
    flips = 0
    for ref, cand in pairs:
        ref_p, cand_p = dict(ref.scores), dict(cand.scores)
        if ref_p.keys() != cand_p.keys():
            return ParityResult(False, {}, "the ONNX model answers other labels")
        delta = max(abs(ref_p[k] - cand_p[k]) for k in ref_p)
        worst = max(worst, delta) if math.isfinite(delta) else math.inf
        tie = len(ref.scores) > 1 and ref.scores[0][1] - ref.scores[1][1] <= MAX_PROB_DELTA
        if ref.scores[0][0] != cand.scores[0][0] and not tie:
            flips += 1
    figures = {
        "probes": len(pairs),
        "max_abs_delta": worst if math.isinf(worst) else round(worst, 8),
        "top_label_mismatches": flips,
    }
    if flips:
        return ParityResult(False, figures, f"top label differs on {flips} probe(s)")
    if not worst <= MAX_PROB_DELTA:
        return ParityResult(False, figures, f"max |delta p| {worst:.2e} > {MAX_PROB_DELTA}")
    return ParityResult(True, figures)


def _cosine(a: Any, b: Any) -> float:
    dot = sum(float(x) * float(y) for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(float(x) ** 2 for x in a)) * math.sqrt(sum(float(y) ** 2 for y in b))
    return dot / norm if norm else float("nan")
