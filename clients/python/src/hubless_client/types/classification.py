"""Results of the classification tasks: emotion, sentiment and zero-shot."""

from __future__ import annotations

from dataclasses import dataclass

from hubless.v1 import emotion_pb2, sentiment_pb2, zero_shot_pb2
from hubless_client.types.base import Batch, LabelScore, ModelRef, count, scores_from_pb
from hubless_client.types.enums import POLARITY_FROM_PB, Polarity

__all__ = [
    "Emotion",
    "EmotionResult",
    "Sentiment",
    "SentimentResult",
    "ZeroShot",
    "ZeroShotResult",
]


class _LabelScores:
    """``by_label`` for results that carry every label's ``scores``."""

    scores: list[LabelScore]

    @property
    def by_label(self) -> dict[str, float]:
        """The probabilities as ``{label: score}``."""
        return {s.label: s.score for s in self.scores}


def _truncated(flag: bool) -> str:
    return ", truncated" if flag else ""


@dataclass(frozen=True, repr=False)
class Emotion(_LabelScores):
    """The emotion of one text."""

    label: str
    score: float
    #: Every label of the model, highest probability first.
    scores: list[LabelScore]
    truncated: bool

    def __repr__(self) -> str:
        return f"Emotion({self.label!r}, {self.score:.3f}{_truncated(self.truncated)})"


@dataclass(frozen=True, repr=False)
class EmotionResult(Batch[Emotion]):
    """Emotions, in the order of the input texts."""

    results: list[Emotion]
    model: ModelRef
    models: tuple[ModelRef, ...] = ()

    def __post_init__(self) -> None:
        self._fill_models()

    @classmethod
    def from_pb(cls, msg: emotion_pb2.DetectEmotionResponse) -> EmotionResult:
        return cls(
            results=[
                Emotion(
                    label=r.label,
                    score=r.score,
                    scores=scores_from_pb(r.scores),
                    truncated=r.truncated,
                )
                for r in msg.results
            ],
            model=ModelRef.from_pb(msg.model),
        )


@dataclass(frozen=True, repr=False)
class Sentiment(_LabelScores):
    """The sentiment of one text: the model's own label and the normalised polarity."""

    label: str
    score: float
    polarity: Polarity
    polarity_score: float
    #: Every label of the model, highest probability first.
    scores: list[LabelScore]
    truncated: bool

    def __repr__(self) -> str:
        return (
            f"Sentiment({self.label!r}, {self.score:.3f}, polarity={self.polarity.value}"
            f"{_truncated(self.truncated)})"
        )


@dataclass(frozen=True, repr=False)
class SentimentResult(Batch[Sentiment]):
    """Sentiments, in the order of the input texts."""

    results: list[Sentiment]
    model: ModelRef
    models: tuple[ModelRef, ...] = ()

    def __post_init__(self) -> None:
        self._fill_models()

    @classmethod
    def from_pb(cls, msg: sentiment_pb2.AnalyzeSentimentResponse) -> SentimentResult:
        return cls(
            results=[
                Sentiment(
                    label=r.label,
                    score=r.score,
                    polarity=POLARITY_FROM_PB.get(r.polarity, Polarity.UNSPECIFIED),
                    polarity_score=r.polarity_score,
                    scores=scores_from_pb(r.scores),
                    truncated=r.truncated,
                )
                for r in msg.results
            ],
            model=ModelRef.from_pb(msg.model),
        )


@dataclass(frozen=True, repr=False)
class ZeroShot(_LabelScores):
    """Zero-shot classification of one text: every candidate label, highest score first."""

    scores: list[LabelScore]
    truncated: bool

    @property
    def label(self) -> str:
        """The best label (empty when there are no scores)."""
        return self.scores[0].label if self.scores else ""

    @property
    def score(self) -> float:
        """The best label's score (0.0 when there are no scores)."""
        return self.scores[0].score if self.scores else 0.0

    def __repr__(self) -> str:
        return (
            f"ZeroShot({self.label!r}, {self.score:.3f}, {count(len(self.scores), 'label')}"
            f"{_truncated(self.truncated)})"
        )


@dataclass(frozen=True, repr=False)
class ZeroShotResult(Batch[ZeroShot]):
    """Zero-shot classifications, in the order of the input texts."""

    results: list[ZeroShot]
    model: ModelRef
    models: tuple[ModelRef, ...] = ()

    def __post_init__(self) -> None:
        self._fill_models()

    @classmethod
    def from_pb(cls, msg: zero_shot_pb2.ClassifyZeroShotResponse) -> ZeroShotResult:
        return cls(
            results=[
                ZeroShot(scores=scores_from_pb(r.scores), truncated=r.truncated)
                for r in msg.results
            ],
            model=ModelRef.from_pb(msg.model),
        )
