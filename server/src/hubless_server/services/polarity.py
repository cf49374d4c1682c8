"""Sentiment labels of different models mapped to one negative/neutral/positive scale.

Pure functions, no gRPC or torch. Recognised labels (case-insensitive):

* ``"N star"`` / ``"N stars"``: 1-2 negative, 3 neutral, 4-5 positive (nlptown 1-5 stars);
* ``negative``/``neg``, ``neutral``/``neu``, ``positive``/``pos`` (cardiffnlp, SST-2);
* ``LABEL_k`` by how many labels the model has: 2 -> 0 negative, 1 positive (SST-2 order);
  3 -> negative, neutral, positive (cardiffnlp order); 5 -> 1..5 stars.

Anything else maps to UNSPECIFIED.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence

_STARS = re.compile(r"^\s*([1-5])\s*stars?\s*$", re.IGNORECASE)
_INDEXED = re.compile(r"^\s*label_(\d+)\s*$", re.IGNORECASE)
_WORDS = {
    "negative": "negative",
    "neg": "negative",
    "neutral": "neutral",
    "neu": "neutral",
    "positive": "positive",
    "pos": "positive",
}


class Polarity(enum.IntEnum):
    """Same numbers as ``hubless.v1.Polarity``."""

    UNSPECIFIED = 0
    NEGATIVE = 1
    NEUTRAL = 2
    POSITIVE = 3


def _from_stars(stars: int) -> Polarity:
    if stars <= 2:
        return Polarity.NEGATIVE
    if stars == 3:
        return Polarity.NEUTRAL
    return Polarity.POSITIVE


def label_polarity(label: str, num_labels: int = 0) -> Polarity:
    """The polarity of one model label; ``num_labels`` disambiguates ``LABEL_k``."""
    stars = _STARS.match(label)
    if stars:
        return _from_stars(int(stars.group(1)))
    word = _WORDS.get(label.strip().lower())
    if word is not None:
        return Polarity[word.upper()]
    indexed = _INDEXED.match(label)
    if indexed:
        k = int(indexed.group(1))
        if num_labels == 2 and k < 2:
            return (Polarity.NEGATIVE, Polarity.POSITIVE)[k]
        if num_labels == 3 and k < 3:
            return (Polarity.NEGATIVE, Polarity.NEUTRAL, Polarity.POSITIVE)[k]
        if num_labels == 5 and k < 5:
            return _from_stars(k + 1)
    return Polarity.UNSPECIFIED


def polarity_of(scores: Sequence[tuple[str, float]]) -> tuple[Polarity, float]:
    """Polarity of the best label and the summed probability of all labels mapping to it.

    ``scores`` are (label, probability) pairs, any order."""
    if not scores:
        return Polarity.UNSPECIFIED, 0.0
    best_label, best_score = max(scores, key=lambda pair: pair[1])
    n = len(scores)
    polarity = label_polarity(best_label, n)
    if polarity is Polarity.UNSPECIFIED:
        return polarity, float(best_score)
    total = sum(score for label, score in scores if label_polarity(label, n) is polarity)
    return polarity, float(min(total, 1.0))
