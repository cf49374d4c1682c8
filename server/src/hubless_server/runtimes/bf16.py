"""bfloat16 weights for the encoders where they keep parity with float32.

On a CPU with bf16 instructions (AVX512-BF16, AMX), ``--dtype bfloat16`` (or ``auto``) used to
run under ``torch.autocast`` on float32 weights: every matmul converts its weights to bf16 on
every forward pass. Measured on real all-MiniLM-L6-v2, 8 clients x 32 sentences, AMD EPYC
(Zen 4): 3.39 CPU-ms per sentence under autocast against 2.89 with the weights stored in bf16
(issue 18). bf16 weights are also half the memory. They round each weight once, so they can
move a model's answers further than autocast does; :func:`settle_bf16_weights` therefore
loads the float32 weights, answers a fixed probe with them, converts the model to bf16, answers
again and keeps bf16 weights only when the answers agree:

* hidden states (embedders): the masked mean-pooled vectors of every probe text have cosine
  >= :data:`MIN_COSINE` with float32's;
* logits (classifiers, zero-shot NLI): the same top label for every probe text and every
  probability within :data:`MAX_PROB_DELTA` of float32's.

Otherwise the float32 weights are read again from the volume and the model runs under autocast
as before. Either way the outcome and its figure are logged and reported in ``ModelInfo``
(``precision``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from ._common import LockedTokenizer, Precision, pad_rows

log = logging.getLogger(__name__)

MIN_COSINE = 0.999
"""Embeddings: the smallest cosine between a probe's bf16-weight and float32 vector."""
MAX_PROB_DELTA = 0.01
"""Classifiers: the largest change of any probability, with the top label unchanged."""

PROBE_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "I can't believe how well this turned out, thank you so much!",
    "The meeting was moved to Thursday because half of the team is travelling.",
    "Terrible service, cold food and a forty-minute wait. Never again.",
    "Quantum computers use qubits, which can hold a superposition of states.",
    "ok",
    "Wie spät ist es? Il fait beau aujourd'hui. 今日はいい天気ですね。",
    "The central bank raised interest rates by a quarter point to curb inflation, citing "
    "persistent price pressure in services and a labour market that remains tight.",
)
"""Fixed probe texts: short and long, positive and negative, several scripts."""

Pass = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def wants_bf16_weights(precision: Precision, native_bf16: bool) -> bool:
    """bf16 asked on a CPU that computes it natively, today run under autocast."""
    return (
        precision.device.type == "cpu"
        and precision.autocast == torch.bfloat16
        and precision.weights == torch.float32
        and native_bf16
    )


def probe_inputs(tok: LockedTokenizer, pad_id: int, limit: int) -> dict[str, torch.Tensor]:
    """The probe texts tokenised (cut to ``limit``) and padded into one batch."""
    rows = [tok.encode(text, max_length=limit, truncation=True) for text in PROBE_TEXTS]
    return pad_rows(rows, pad_id, torch.device("cpu"))


def compare(
    output: str, reference: torch.Tensor, candidate: torch.Tensor, mask: torch.Tensor
) -> tuple[bool, str]:
    """Whether ``candidate`` answers like ``reference``, and the figure that says so."""
    if output == "logits":
        ref = reference.float().softmax(dim=-1)
        cand = candidate.float().softmax(dim=-1)
        same_top = bool((ref.argmax(dim=-1) == cand.argmax(dim=-1)).all())
        delta = float((ref - cand).abs().max())
        ok = same_top and delta <= MAX_PROB_DELTA
        return ok, f"max |delta p| {delta:.4f}, top label {'same' if same_top else 'changed'}"
    weights = mask.unsqueeze(-1).float()
    ref = (reference.float() * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
    cand = (candidate.float() * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
    cosine = float(torch.nn.functional.cosine_similarity(ref, cand, dim=-1).min())
    return cosine >= MIN_COSINE, f"min cosine {cosine:.5f}"


def settle_bf16_weights(
    name: str,
    model: Any,
    precision: Precision,
    output: str,
    inputs: dict[str, torch.Tensor],
    reload: Callable[[], Any],
) -> tuple[Any, Precision]:
    """The model and precision to serve with: bf16 weights when the probe agrees with float32
    (see the module docstring), else the float32 weights (read again) under autocast."""

    def answer(run_precision: Precision) -> torch.Tensor:
        with torch.inference_mode(), run_precision.context():
            return getattr(model(**inputs), output).float()

    reference = answer(replace(precision, autocast=None))
    model.to(torch.bfloat16)
    bf16 = replace(precision, weights=torch.bfloat16, autocast=None)
    ok, figure = compare(output, reference, answer(bf16), inputs["attention_mask"])
    if ok:
        note = f"bfloat16 weights (parity with float32 on {len(PROBE_TEXTS)} probe texts: {figure})"
        log.info("model %s: %s", name, note, extra={"fields": {"model": name, "parity": figure}})
        return model, replace(bf16, note=note)
    note = (
        f"float32 weights under bfloat16 autocast (bfloat16 weights missed parity with "
        f"float32: {figure})"
    )
    log.warning("model %s: %s", name, note, extra={"fields": {"model": name, "parity": figure}})
    return reload(), replace(precision, note=note)
