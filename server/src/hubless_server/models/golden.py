"""The golden self-test: at every load, a model answers its golden probes as it did at install.

Hashes and signatures prove the bytes on the volume are the ones fetched; they cannot tell
that the model still *answers* as it did: a torch or transformers upgrade in the image, a wrong
ONNX export, a tokenizer mismatch, or weights changed and re-hashed where no key is checked.
``hubless-optimize`` records, per model and commit, the PyTorch float32 answers to a few
fixed probes (:mod:`hubless_server.runtimes.probes`, :mod:`hubless_volume.golden`). After a
model loads, with the backend and precision it will serve with, :func:`golden_self_test` runs
the same probes through it and compares within the tolerances of that precision
(:data:`TOLERANCES`):

========================  ==============  ========================  ===========================
served with               embeddings:     classifiers, zero-shot:   generation: greedy tokens
                          min cosine      max abs delta p, top
                                          label the same
========================  ==============  ========================  ===========================
PyTorch float32           0.9999          0.005                     identical
ONNX Runtime (float32)    0.999           0.01                      (encoders only)
bfloat16, float16         0.999           0.02                      half the tokens agree
========================  ==============  ========================  ===========================

The top label must be the same unless the golden's top two are within the tolerance (a tie
may order either way). In reduced precision a near-tie of two tokens can flip one greedy
token, and every token after it follows from it: there the probes' common prefixes must hold
at least half of the recorded tokens (a model with other weights agrees on next to none).

``--golden-check``: ``refuse`` (the default) makes a model that drifts, or whose golden file
is unusable (missing, changed, of another model), FAILED with the measured difference
(:class:`~.trust.RefusedError`); ``warn`` serves it with the difference in its ``error``;
``off`` skips the test. A model without goldens loads as before, with a log line.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubless_server.models.trust import RefusedError
from hubless_server.runtimes.base import ModelRuntime, RuntimeInfo
from hubless_server.runtimes.probes import replay_probes
from hubless_volume import (
    Golden,
    GoldenError,
    GoldenProbe,
    ModelEntry,
    VolumePathError,
    load_golden,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tolerance:
    """How far a served model's answers may be from its float32 goldens."""

    name: str
    min_cosine: float
    max_prob_delta: float
    min_token_agreement: float  # 1.0: the greedy tokens are identical


TOLERANCES: dict[str, Tolerance] = {
    "float32": Tolerance("PyTorch float32", 0.9999, 0.005, 1.0),
    "onnx": Tolerance("ONNX Runtime float32", 0.999, 0.01, 1.0),
    "reduced": Tolerance("reduced precision", 0.999, 0.02, 0.5),
}
"""The tolerances by what serves the model (module docstring)."""


@dataclass(frozen=True)
class Verdict:
    """What the self-test measured (``figures``) and, when it failed, why (``reason``)."""

    passed: bool
    figures: str
    reason: str = ""


def tolerance_for(info: RuntimeInfo) -> Tolerance:
    """The tolerances for a loaded model: ONNX Runtime, PyTorch float32, or reduced."""
    if info.backend == "onnx":
        return TOLERANCES["onnx"]
    if info.dtype == "float32":
        return TOLERANCES["float32"]
    return TOLERANCES["reduced"]


def golden_self_test(
    mode: str,
    models_dir: Path,
    entry: ModelEntry,
    kind: str,
    runtime: ModelRuntime[Any, Any],
) -> str:
    """Run ``entry``'s golden probes through the loaded ``runtime`` (blocking: call it in the
    load thread). Returns a warning for the record's ``error`` (``warn`` only; "" when the
    model passed, has no goldens, or ``mode`` is off); raises :class:`RefusedError` under
    ``refuse`` when the goldens are unusable or the model drifts."""
    if mode == "off":
        return ""
    name = entry.name
    try:
        golden = load_golden(models_dir, entry)
    except (GoldenError, VolumePathError) as exc:
        return _failed(mode, name, f"golden outputs unusable: {exc}", _public_golden_error(exc))
    if golden is None:
        log.info(
            "model %s: no golden outputs (hubless-optimize writes them): loaded without the "
            "golden self-test",
            name,
            extra={"fields": {"model": name}},
        )
        return ""
    tolerance = tolerance_for(runtime.info())
    try:
        served = replay_probes(runtime, kind, golden)
    except Exception as exc:  # a probe the model cannot answer any more is a drift too
        log.warning("model %s: a golden probe failed to run", name, exc_info=True)
        reason = f"a golden probe failed to run ({type(exc).__name__})"
        return _failed(mode, name, reason, reason)
    verdict = compare(golden, served, tolerance)
    if not verdict.passed:
        reason = f"{verdict.reason} ({tolerance.name}; {verdict.figures})"
        return _failed(mode, name, f"golden self-test: {reason}", f"golden self-test: {reason}")
    log.info(
        "model %s: golden self-test passed (%s; %s)",
        name,
        tolerance.name,
        verdict.figures,
        extra={"fields": {"model": name, "golden": verdict.figures}},
    )
    return ""


def _failed(mode: str, name: str, message: str, public: str) -> str:
    """Refuse (``refuse``), or log and return the warning (``warn``)."""
    if mode == "refuse":
        raise RefusedError(
            f"{message} (--golden-check refuse)", f"refused: {public} (--golden-check refuse)"
        )
    log.warning(
        "model %s: %s (--golden-check warn: served anyway)",
        name,
        message,
        extra={"fields": {"model": name}},
    )
    return f"{public} (--golden-check warn: served anyway)"


def _public_golden_error(exc: Exception) -> str:
    """An unusable golden file for clients: its field and what is wrong, without paths."""
    if isinstance(exc, GoldenError):
        where = f"{exc.field}: " if exc.field else ""
        if "/" not in exc.message:
            return f"golden outputs unusable ({where}{exc.message})"
    return "golden outputs unusable (the server log has why)"


# ---- the comparison -------------------------------------------------------------------------


def compare(golden: Golden, served: Sequence[GoldenProbe], tolerance: Tolerance) -> Verdict:
    """Compare the answers ``served`` gave to ``golden``'s probes, within ``tolerance``."""
    pairs = list(zip(golden.probes, served, strict=True))
    if golden.task == "embedding":
        return _embeddings(pairs, tolerance)
    if golden.task in ("summarization", "conversation"):
        return _tokens(pairs, tolerance)
    return _scores(pairs, tolerance)


def _embeddings(pairs: list[tuple[GoldenProbe, GoldenProbe]], tolerance: Tolerance) -> Verdict:
    cosines = []
    for want, got in pairs:
        if len(want.embedding) != len(got.embedding):
            return Verdict(
                False,
                f"{len(pairs)} probes",
                f"vectors of {len(got.embedding)} numbers, the goldens have {len(want.embedding)}",
            )
        cosines.append((_cosine(want.embedding, got.embedding), want.text))
    # the lowest cosine, a NaN (a zero or non-finite vector) lower than any
    worst, at = min(cosines, key=lambda pair: -math.inf if math.isnan(pair[0]) else pair[0])
    figures = f"min cosine {worst:.6f} over {len(pairs)} probes"
    if not worst >= tolerance.min_cosine:
        reason = f"min cosine {worst:.6f} < {tolerance.min_cosine} on {_shown(at)}"
        return Verdict(False, figures, reason)
    return Verdict(True, figures)


def _scores(pairs: list[tuple[GoldenProbe, GoldenProbe]], tolerance: Tolerance) -> Verdict:
    worst, at, flips = 0.0, "", 0
    for want, got in pairs:
        if set(want.labels) != set(got.labels):
            return Verdict(
                False,
                f"{len(pairs)} probes",
                f"labels {', '.join(got.labels)}; the goldens have {', '.join(want.labels)}",
            )
        want_p = dict(zip(want.labels, want.scores, strict=True))
        got_p = dict(zip(got.labels, got.scores, strict=True))
        for label, p in want_p.items():
            delta = abs(p - got_p[label])
            if not delta <= worst:
                worst, at = (delta if math.isfinite(delta) else math.inf), want.text
        ranked = sorted(want_p.items(), key=lambda pair: pair[1], reverse=True)
        tie = len(ranked) > 1 and ranked[0][1] - ranked[1][1] <= tolerance.max_prob_delta
        if max(got_p, key=lambda label: got_p[label]) != ranked[0][0] and not tie:
            flips += 1
    figures = f"max |delta p| {worst:.4f}, top label changed on {flips} of {len(pairs)} probes"
    if flips:
        return Verdict(False, figures, f"the top label changed on {flips} of {len(pairs)} probes")
    if not worst <= tolerance.max_prob_delta:
        reason = f"max |delta p| {worst:.4f} > {tolerance.max_prob_delta} on {_shown(at)}"
        return Verdict(False, figures, reason)
    return Verdict(True, figures)


def _tokens(pairs: list[tuple[GoldenProbe, GoldenProbe]], tolerance: Tolerance) -> Verdict:
    agreed = recorded = identical = 0
    first = ""
    for want, got in pairs:
        prefix = 0
        for a, b in zip(want.tokens, got.tokens, strict=False):
            if a != b:
                break
            prefix += 1
        agreed += prefix
        recorded += len(want.tokens)
        if want.tokens == got.tokens:
            identical += 1
        elif not first:
            first = f"token {prefix + 1} of {_shown(want.text)}"
    share = agreed / recorded if recorded else 1.0
    figures = (
        f"greedy tokens identical on {identical} of {len(pairs)} probes, "
        f"{agreed} of {recorded} tokens agree"
    )
    if tolerance.min_token_agreement >= 1.0 and identical < len(pairs):
        reason = f"the greedy tokens differ on {len(pairs) - identical} probe(s), first at {first}"
        return Verdict(False, figures, reason)
    if share < tolerance.min_token_agreement:
        reason = (
            f"only {agreed} of {recorded} greedy tokens agree "
            f"(at least {tolerance.min_token_agreement:.0%})"
        )
        return Verdict(False, figures, reason)
    return Verdict(True, figures)


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(math.fsum(x * x for x in a)) * math.sqrt(math.fsum(y * y for y in b))
    return dot / norm if norm else float("nan")


def _shown(text: str) -> str:
    """A probe text as a message names it: quoted, cut at 40 characters."""
    return repr(text if len(text) <= 40 else text[:37] + "...")
