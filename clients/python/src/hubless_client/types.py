"""Typed results of the hubless RPCs, and their conversion from the protobuf messages."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Generic, TypeVar

from hubless.v1 import (
    common_pb2,
    conversation_pb2,
    embeddings_pb2,
    emotion_pb2,
    models_pb2,
    sentiment_pb2,
    summarization_pb2,
    zero_shot_pb2,
)

__all__ = [
    "EmbedResult",
    "Emotion",
    "EmotionResult",
    "FinishReason",
    "HealthStatus",
    "LabelScore",
    "ModelInfo",
    "ModelRef",
    "ModelState",
    "Polarity",
    "ReplyChunk",
    "ReplyResult",
    "Sentiment",
    "SentimentResult",
    "SummarizeResult",
    "Summary",
    "Task",
    "Truncation",
    "ZeroShot",
    "ZeroShotResult",
]

T = TypeVar("T")


class Truncation(StrEnum):
    """What the server does with an input longer than the model accepts."""

    #: Cut the input to the model's maximum; the result says it was truncated (the default).
    TRUNCATE = "truncate"
    #: Reject the request with INVALID_ARGUMENT.
    ERROR = "error"


def _task_name(pb_name: str) -> str:
    """``TASK_ZERO_SHOT`` -> ``zero-shot``: the task names of the models volume."""
    return pb_name.removeprefix("TASK_").lower().replace("_", "-")


#: The tasks a server serves, by their volume names (``Task.ZERO_SHOT == "zero-shot"``),
#: generated from the ``hubless.v1.Task`` enum (``TASK_UNSPECIFIED`` left out).
Task = StrEnum(  # type: ignore[misc]
    "Task",
    [
        (v.name.removeprefix("TASK_"), _task_name(v.name))
        for v in common_pb2.Task.DESCRIPTOR.values
        if v.number != common_pb2.TASK_UNSPECIFIED
    ],
    module=__name__,
)
Task.__doc__ = "A task served by hubless, by its volume name (a str enum)."

_TASK_FROM_PB: dict[int, str] = {
    v.number: Task(_task_name(v.name))
    for v in common_pb2.Task.DESCRIPTOR.values
    if v.number != common_pb2.TASK_UNSPECIFIED
}
_TASK_TO_PB: dict[str, int] = {name: number for number, name in _TASK_FROM_PB.items()}


def task_from_pb(value: int) -> str:
    """The volume name of a ``hubless.v1.Task`` value (``""`` when unspecified or unknown)."""
    return _TASK_FROM_PB.get(value, "")


def task_to_pb(value: str | None) -> int:
    """The ``hubless.v1.Task`` value of a task name (``None``: unspecified)."""
    if value is None:
        return common_pb2.TASK_UNSPECIFIED
    try:
        return _TASK_TO_PB[Task(value)]
    except ValueError:
        choices = ", ".join(repr(t.value) for t in Task)
        raise ValueError(f"task must be one of {choices}, not {value!r}") from None


class Polarity(StrEnum):
    """Sentiment normalised across models."""

    UNSPECIFIED = "unspecified"
    NEGATIVE = "negative"
    NEUTRAL = "neutral"
    POSITIVE = "positive"


class FinishReason(StrEnum):
    """Why a generated reply ended."""

    UNSPECIFIED = "unspecified"
    #: The model ended its turn.
    STOP = "stop"
    #: ``max_new_tokens`` was reached.
    LENGTH = "length"


class ModelState(StrEnum):
    """Where a model stands on the server."""

    UNSPECIFIED = "unspecified"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    MISSING = "missing"
    #: Installed alternate the server was told not to load (``--no-load-alternates``).
    SKIPPED = "skipped"


class HealthStatus(StrEnum):
    """``grpc.health.v1`` serving status."""

    UNKNOWN = "UNKNOWN"
    SERVING = "SERVING"
    NOT_SERVING = "NOT_SERVING"
    SERVICE_UNKNOWN = "SERVICE_UNKNOWN"


_TRUNCATION_TO_PB = {
    None: common_pb2.TRUNCATION_UNSPECIFIED,
    Truncation.TRUNCATE: common_pb2.TRUNCATION_TRUNCATE,
    Truncation.ERROR: common_pb2.TRUNCATION_ERROR,
}
_POLARITY = {
    sentiment_pb2.POLARITY_UNSPECIFIED: Polarity.UNSPECIFIED,
    sentiment_pb2.POLARITY_NEGATIVE: Polarity.NEGATIVE,
    sentiment_pb2.POLARITY_NEUTRAL: Polarity.NEUTRAL,
    sentiment_pb2.POLARITY_POSITIVE: Polarity.POSITIVE,
}
_FINISH = {
    conversation_pb2.FINISH_REASON_UNSPECIFIED: FinishReason.UNSPECIFIED,
    conversation_pb2.FINISH_REASON_STOP: FinishReason.STOP,
    conversation_pb2.FINISH_REASON_LENGTH: FinishReason.LENGTH,
}
_STATE = {
    models_pb2.MODEL_STATE_UNSPECIFIED: ModelState.UNSPECIFIED,
    models_pb2.MODEL_STATE_LOADING: ModelState.LOADING,
    models_pb2.MODEL_STATE_READY: ModelState.READY,
    models_pb2.MODEL_STATE_FAILED: ModelState.FAILED,
    models_pb2.MODEL_STATE_MISSING: ModelState.MISSING,
    models_pb2.MODEL_STATE_SKIPPED: ModelState.SKIPPED,
}


def truncation_to_pb(value: Truncation | str | None) -> int:
    """The protobuf enum value of a :class:`Truncation` (``None``: the server default)."""
    if value is None:
        return common_pb2.TRUNCATION_UNSPECIFIED
    try:
        return _TRUNCATION_TO_PB[Truncation(value)]
    except ValueError:
        choices = ", ".join(repr(t.value) for t in Truncation)
        raise ValueError(f"truncation must be one of {choices}, not {value!r}") from None


@dataclass(frozen=True)
class ModelRef:
    """Which installed model answered: catalog name, hub repo and exact commit."""

    name: str
    repo_id: str
    commit: str

    @classmethod
    def from_pb(cls, msg: common_pb2.ModelRef) -> ModelRef:
        return cls(name=msg.name, repo_id=msg.repo_id, commit=msg.commit)


@dataclass(frozen=True)
class LabelScore:
    """A label and its probability."""

    label: str
    score: float


def _scores(items: object) -> list[LabelScore]:
    return [LabelScore(label=s.label, score=s.score) for s in items]  # type: ignore[attr-defined]


class _Batch(Generic[T]):
    """Per-text results of a batch call: ``len()``, iteration and indexing."""

    results: list[T]

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[T]:
        return iter(self.results)

    def __getitem__(self, index: int) -> T:
        return self.results[index]


@dataclass(frozen=True)
class EmbedResult:
    """Sentence embeddings, in the order of the input texts."""

    vectors: list[list[float]]
    dimension: int
    model: ModelRef
    #: Per text: it was longer than the model's maximum and was cut.
    truncated: list[bool]
    #: Per text: tokens the model actually read.
    tokens: list[int]

    def __len__(self) -> int:
        return len(self.vectors)

    @classmethod
    def from_pb(cls, msg: embeddings_pb2.EmbedResponse) -> EmbedResult:
        return cls(
            vectors=[list(e.values) for e in msg.embeddings],
            dimension=msg.dimension,
            model=ModelRef.from_pb(msg.model),
            truncated=[e.truncated for e in msg.embeddings],
            tokens=[e.tokens for e in msg.embeddings],
        )


class _LabelScores:
    """``by_label`` for results that carry every label's ``scores``."""

    scores: list[LabelScore]

    @property
    def by_label(self) -> dict[str, float]:
        """The probabilities as ``{label: score}``."""
        return {s.label: s.score for s in self.scores}


@dataclass(frozen=True)
class Emotion(_LabelScores):
    """The emotion of one text."""

    label: str
    score: float
    #: Every label of the model, highest probability first.
    scores: list[LabelScore]
    truncated: bool


@dataclass(frozen=True)
class EmotionResult(_Batch[Emotion]):
    """Emotions, in the order of the input texts."""

    results: list[Emotion]
    model: ModelRef

    @classmethod
    def from_pb(cls, msg: emotion_pb2.DetectEmotionResponse) -> EmotionResult:
        return cls(
            results=[
                Emotion(
                    label=r.label, score=r.score, scores=_scores(r.scores), truncated=r.truncated
                )
                for r in msg.results
            ],
            model=ModelRef.from_pb(msg.model),
        )


@dataclass(frozen=True)
class Sentiment(_LabelScores):
    """The sentiment of one text: the model's own label and the normalised polarity."""

    label: str
    score: float
    polarity: Polarity
    polarity_score: float
    #: Every label of the model, highest probability first.
    scores: list[LabelScore]
    truncated: bool


@dataclass(frozen=True)
class SentimentResult(_Batch[Sentiment]):
    """Sentiments, in the order of the input texts."""

    results: list[Sentiment]
    model: ModelRef

    @classmethod
    def from_pb(cls, msg: sentiment_pb2.AnalyzeSentimentResponse) -> SentimentResult:
        return cls(
            results=[
                Sentiment(
                    label=r.label,
                    score=r.score,
                    polarity=_POLARITY.get(r.polarity, Polarity.UNSPECIFIED),
                    polarity_score=r.polarity_score,
                    scores=_scores(r.scores),
                    truncated=r.truncated,
                )
                for r in msg.results
            ],
            model=ModelRef.from_pb(msg.model),
        )


@dataclass(frozen=True)
class ZeroShot:
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

    @property
    def by_label(self) -> dict[str, float]:
        """The scores as ``{label: score}``."""
        return {s.label: s.score for s in self.scores}


@dataclass(frozen=True)
class ZeroShotResult(_Batch[ZeroShot]):
    """Zero-shot classifications, in the order of the input texts."""

    results: list[ZeroShot]
    model: ModelRef

    @classmethod
    def from_pb(cls, msg: zero_shot_pb2.ClassifyZeroShotResponse) -> ZeroShotResult:
        return cls(
            results=[
                ZeroShot(scores=_scores(r.scores), truncated=r.truncated) for r in msg.results
            ],
            model=ModelRef.from_pb(msg.model),
        )


@dataclass(frozen=True)
class Summary:
    """The summary of one text."""

    text: str
    #: The input was longer than the model's maximum and was cut.
    truncated: bool
    #: Tokens generated.
    tokens: int


@dataclass(frozen=True)
class SummarizeResult(_Batch[Summary]):
    """Summaries, in the order of the input texts."""

    results: list[Summary]
    model: ModelRef

    @property
    def summaries(self) -> list[Summary]:
        """Same as ``results``."""
        return self.results

    @classmethod
    def from_pb(cls, msg: summarization_pb2.SummarizeResponse) -> SummarizeResult:
        return cls(
            results=[
                Summary(text=s.text, truncated=s.truncated, tokens=s.tokens) for s in msg.summaries
            ],
            model=ModelRef.from_pb(msg.model),
        )


@dataclass(frozen=True)
class ReplyResult:
    """A chat reply."""

    text: str
    #: Tokens generated.
    tokens: int
    finish_reason: FinishReason
    #: Oldest turns were dropped to fit the model's context.
    history_truncated: bool
    model: ModelRef

    @classmethod
    def from_pb(cls, msg: conversation_pb2.ReplyResponse) -> ReplyResult:
        return cls(
            text=msg.text,
            tokens=msg.tokens,
            finish_reason=_FINISH.get(msg.finish_reason, FinishReason.UNSPECIFIED),
            history_truncated=msg.history_truncated,
            model=ModelRef.from_pb(msg.model),
        )


@dataclass(frozen=True)
class ReplyChunk:
    """One streamed piece of a reply. ``model`` and ``history_truncated`` are set on the first
    chunk only and ``finish_reason`` on the last only."""

    text: str
    finish_reason: FinishReason | None
    model: ModelRef | None
    history_truncated: bool
    #: Tokens generated so far, counting this chunk's.
    tokens: int = 0

    @classmethod
    def from_pb(cls, msg: conversation_pb2.StreamReplyResponse) -> ReplyChunk:
        finish = msg.finish_reason
        return cls(
            text=msg.text,
            finish_reason=None
            if finish == conversation_pb2.FINISH_REASON_UNSPECIFIED
            else _FINISH.get(finish, FinishReason.UNSPECIFIED),
            model=ModelRef.from_pb(msg.model) if msg.HasField("model") else None,
            history_truncated=msg.history_truncated,
            tokens=msg.tokens,
        )


@dataclass(frozen=True)
class ModelInfo:
    """A model the server knows about (loaded, loading, failed, skipped, or missing from the
    volume)."""

    name: str
    #: The task's volume name, e.g. ``"zero-shot"`` (a :class:`Task`; ``""`` if unknown).
    task: str
    repo_id: str
    commit: str
    device: str
    dtype: str
    state: ModelState
    #: Why a model is FAILED, MISSING or SKIPPED; on a READY model, why a newer version on the
    #: volume could not replace it (this version keeps answering).
    error: str
    #: This model answers requests of its task that name no model.
    is_default: bool
    #: Bytes of the model's files on the volume.
    size_bytes: int
    #: Seconds the last load took.
    load_seconds: float
    #: Longest input in tokens the model reads (0 until loaded).
    max_input_tokens: int = 0
    #: The model's output labels, in the model's order (classifiers; empty otherwise).
    labels: list[str] = field(default_factory=list)
    #: Length of the vectors (embedding models; 0 otherwise).
    embedding_dimension: int = 0
    #: During a live update, the commit of the other version in memory: the one still
    #: answering while ``commit`` loads (``LOADING``), or the replaced one draining once
    #: ``commit`` answers (``READY``); ``""`` otherwise.
    replacing_commit: str = ""
    #: When this version finished loading (UTC; ``None`` until it has).
    loaded_at: datetime | None = None

    @classmethod
    def from_pb(cls, msg: models_pb2.ModelInfo) -> ModelInfo:
        return cls(
            name=msg.name,
            task=task_from_pb(msg.task),
            repo_id=msg.repo_id,
            commit=msg.commit,
            device=msg.device,
            dtype=msg.dtype,
            state=_STATE.get(msg.state, ModelState.UNSPECIFIED),
            error=msg.error,
            is_default=msg.is_default,
            size_bytes=msg.size_bytes,
            load_seconds=msg.load_seconds,
            max_input_tokens=msg.max_input_tokens,
            labels=list(msg.labels),
            embedding_dimension=msg.embedding_dimension,
            replacing_commit=msg.replacing_commit,
            loaded_at=msg.loaded_at.ToDatetime(UTC) if msg.HasField("loaded_at") else None,
        )


def models_from_pb(msg: models_pb2.ListModelsResponse) -> list[ModelInfo]:
    """The models of a ListModels answer, in the server's order."""
    return [ModelInfo.from_pb(m) for m in msg.models]


def model_from_pb(msg: models_pb2.GetModelResponse) -> ModelInfo:
    """The model of a GetModel answer."""
    return ModelInfo.from_pb(msg.model)
