"""Typed results of the hubless RPCs, and their conversion from the protobuf messages.

One module per task area: :mod:`~hubless_client.types.embeddings`,
:mod:`~hubless_client.types.classification` (emotion, sentiment, zero-shot),
:mod:`~hubless_client.types.generation` (summaries, replies), :mod:`~hubless_client.types.models`;
the enums in :mod:`~hubless_client.types.enums` and what they share in
:mod:`~hubless_client.types.base`. Everything is importable from here.
"""

from hubless_client.types.base import LabelScore, ModelRef
from hubless_client.types.classification import (
    Emotion,
    EmotionResult,
    Sentiment,
    SentimentResult,
    ZeroShot,
    ZeroShotResult,
)
from hubless_client.types.embeddings import EmbedResult
from hubless_client.types.enums import (
    FinishReason,
    HealthStatus,
    ModelState,
    Polarity,
    Task,
    Truncation,
    task_from_pb,
    task_to_pb,
    truncation_to_pb,
)
from hubless_client.types.generation import ReplyChunk, ReplyResult, SummarizeResult, Summary
from hubless_client.types.models import ModelInfo, model_from_pb, models_from_pb

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
    "model_from_pb",
    "models_from_pb",
    "task_from_pb",
    "task_to_pb",
    "truncation_to_pb",
]
