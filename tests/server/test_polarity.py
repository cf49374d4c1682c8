"""Sentiment labels of every catalog model mapped to one polarity scale."""

from __future__ import annotations

import pytest

from hubless_server.services.polarity import Polarity, label_polarity, polarity_of


@pytest.mark.parametrize(
    ("label", "n", "expected"),
    [
        ("1 star", 5, Polarity.NEGATIVE),
        ("2 stars", 5, Polarity.NEGATIVE),
        ("3 stars", 5, Polarity.NEUTRAL),
        ("4 stars", 5, Polarity.POSITIVE),
        ("5 Stars", 5, Polarity.POSITIVE),
        ("negative", 3, Polarity.NEGATIVE),
        ("Neutral", 3, Polarity.NEUTRAL),
        ("positive", 3, Polarity.POSITIVE),
        ("NEGATIVE", 2, Polarity.NEGATIVE),
        ("POSITIVE", 2, Polarity.POSITIVE),
        ("LABEL_0", 2, Polarity.NEGATIVE),
        ("LABEL_1", 2, Polarity.POSITIVE),
        ("LABEL_1", 3, Polarity.NEUTRAL),
        ("LABEL_2", 3, Polarity.POSITIVE),
        ("LABEL_0", 5, Polarity.NEGATIVE),
        ("LABEL_2", 5, Polarity.NEUTRAL),
        ("LABEL_4", 5, Polarity.POSITIVE),
        ("LABEL_3", 3, Polarity.UNSPECIFIED),
        ("LABEL_0", 4, Polarity.UNSPECIFIED),
        ("joy", 7, Polarity.UNSPECIFIED),
        ("6 stars", 6, Polarity.UNSPECIFIED),
    ],
)
def test_label_polarity(label: str, n: int, expected: Polarity) -> None:
    assert label_polarity(label, n) is expected


def test_polarity_score_sums_labels_of_the_winning_polarity() -> None:
    scores = [
        ("1 star", 0.1),
        ("2 stars", 0.05),
        ("3 stars", 0.05),
        ("4 stars", 0.3),
        ("5 stars", 0.5),
    ]
    polarity, score = polarity_of(scores)
    assert polarity is Polarity.POSITIVE
    assert score == pytest.approx(0.8)


def test_polarity_follows_the_top_label() -> None:
    polarity, score = polarity_of([("negative", 0.2), ("neutral", 0.5), ("positive", 0.3)])
    assert (polarity, score) == (Polarity.NEUTRAL, pytest.approx(0.5))


def test_unknown_labels_and_empty_scores() -> None:
    assert polarity_of([("joy", 0.9), ("anger", 0.1)]) == (Polarity.UNSPECIFIED, pytest.approx(0.9))
    assert polarity_of([]) == (Polarity.UNSPECIFIED, 0.0)


def test_matches_the_proto_enum() -> None:
    from hubless.v1 import sentiment_pb2

    for member in Polarity:
        assert sentiment_pb2.Polarity.Value(f"POLARITY_{member.name}") == member.value
