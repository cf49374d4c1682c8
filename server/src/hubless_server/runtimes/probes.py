"""Golden probes: what a model answers on a few fixed texts, per kind, through its runtime.

``hubless-optimize`` runs them on PyTorch in float32 and writes the answers as the model's
golden outputs (:mod:`hubless_volume.golden`); the server runs a golden file's probes again at
every load, with the backend and precision it serves with, and compares
(:mod:`hubless_server.models.golden`). Both sides go through the runtime's own ``prepare`` and
``predict`` (generation: :meth:`~.base.ModelRuntime.greedy_tokens`), one text at a time, so
no padding differs between them: what differs is the model, its files, the libraries or the
precision.

Per kind, what a probe records:

* ``embedding``: the normalised sentence vector;
* ``classification`` (sentiment, emotion): every label of the model, in its order, with its
  probability;
* ``zero_shot``: the fixed candidate labels (:data:`ZERO_SHOT_LABELS`, single-label, with
  :data:`ZERO_SHOT_TEMPLATE`) with their scores;
* ``seq2seq``, ``chat``: the ids of the first :data:`GENERATED_TOKENS` tokens greedy decoding
  generates (its end-of-sequence token included when it comes first).
"""

from __future__ import annotations

from typing import Any

from hubless_volume import Golden, GoldenProbe

from .base import ModelRuntime, TextItem, ZeroShotItem

ENCODER_TEXTS: tuple[str, ...] = (
    "A man is eating food.",
    "I am so disappointed with this product, it broke after two days.",
    "The new movie is awesome!",
    "Je ne sais pas si c'est une bonne idée.",
    "The patient reported mild headaches and occasional dizziness after the second dose.",
)
"""The probes of the encoder kinds: short and long, positive and negative, two languages."""

SUMMARY_TEXTS: tuple[str, ...] = (
    "The city council met on Tuesday to discuss next year's budget. After four hours of "
    "debate, members agreed to raise spending on public transport by eight percent and to "
    "delay the renovation of the central library until the following spring.",
    "Researchers at the university have found that bees can learn to recognise simple "
    "patterns after a few hours of training. The insects were rewarded with sugar water "
    "when they chose the right shape, and most of them remembered it the next day.",
    "Heavy rain caused flooding across the region over the weekend. Several roads were "
    "closed, trains were cancelled and hundreds of homes lost power for a few hours.",
)
"""The probes of summarization models: short news-like paragraphs."""

CHAT_TURNS: tuple[str, ...] = (
    "Hello, how are you today?",
    "What is your favourite book?",
    "Can you recommend a good place to eat near the station?",
)
"""The probes of conversation models: one user turn each."""

ZERO_SHOT_LABELS: tuple[str, ...] = ("politics", "sports", "technology", "food")
ZERO_SHOT_TEMPLATE = "This example is {}."
GENERATED_TOKENS = 8
"""Greedy tokens recorded per generation probe."""

_TEXTS = {
    "embedding": ENCODER_TEXTS,
    "classification": ENCODER_TEXTS,
    "zero_shot": ENCODER_TEXTS,
    "seq2seq": SUMMARY_TEXTS,
    "chat": CHAT_TURNS,
}


def record_probes(runtime: ModelRuntime[Any, Any], kind: str) -> list[GoldenProbe]:
    """The runtime's answers to the fixed probes of ``kind`` (what the optimizer records)."""
    if kind not in _TEXTS:
        raise ValueError(f"no golden probes for runtime kind {kind!r}")
    return [
        answer(
            runtime,
            kind,
            text,
            labels=ZERO_SHOT_LABELS,
            template=ZERO_SHOT_TEMPLATE,
            max_tokens=GENERATED_TOKENS,
        )
        for text in _TEXTS[kind]
    ]


def replay_probes(runtime: ModelRuntime[Any, Any], kind: str, golden: Golden) -> list[GoldenProbe]:
    """The runtime's answers to a golden file's own probes, with its settings (zero-shot
    labels, template and multi-label; as many greedy tokens as were recorded)."""
    return [
        answer(
            runtime,
            kind,
            probe.text,
            labels=tuple(probe.labels),
            template=golden.hypothesis_template or ZERO_SHOT_TEMPLATE,
            multi_label=golden.multi_label,
            max_tokens=len(probe.tokens),
        )
        for probe in golden.probes
    ]


def answer(
    runtime: ModelRuntime[Any, Any],
    kind: str,
    text: str,
    *,
    labels: tuple[str, ...] = (),
    template: str = ZERO_SHOT_TEMPLATE,
    multi_label: bool = False,
    max_tokens: int = GENERATED_TOKENS,
) -> GoldenProbe:
    """One probe through ``runtime``: its outputs for ``kind`` (module docstring)."""
    if kind == "embedding":
        (out,) = runtime.predict([runtime.prepare(TextItem(text))])
        return GoldenProbe(text, embedding=[float(x) for x in out.vector])
    if kind == "classification":
        (out,) = runtime.predict([runtime.prepare(TextItem(text))])
        scores = dict(out.scores)
        order = list(runtime.info().labels) or [label for label, _ in out.scores]
        return GoldenProbe(text, labels=order, scores=[_probability(scores[k]) for k in order])
    if kind == "zero_shot":
        item = ZeroShotItem(text, labels, multi_label=multi_label, template=template)
        (out,) = runtime.predict([runtime.prepare(item)])
        scores = dict(out.scores)
        shot = [_probability(scores[label]) for label in labels]
        return GoldenProbe(text, labels=list(labels), scores=shot)
    if kind in ("seq2seq", "chat"):
        return GoldenProbe(text, tokens=runtime.greedy_tokens(text, max_tokens))
    raise ValueError(f"no golden probes for runtime kind {kind!r}")


def _probability(value: float) -> float:
    """A probability as recorded: a float in [0, 1] (float32 softmax may round past 1)."""
    return min(1.0, max(0.0, float(value)))
