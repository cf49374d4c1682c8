"""Model runtimes: one class per kind of model behind the :class:`ModelRuntime` interface.

``runtime_class(task)`` picks the class for a catalog task; the request/response types and the
exceptions come from :mod:`.base` and are re-exported here.
"""

from __future__ import annotations

from ._common import cpu_has_native_bf16
from .base import (
    ChatItem,
    ClassificationOutput,
    EmbeddingOutput,
    GenerationOutput,
    InputTooLongError,
    ModelRuntime,
    Prepared,
    RuntimeInfo,
    RuntimeOptions,
    StreamPiece,
    SummarizeItem,
    TextItem,
    ZeroShotItem,
)
from .chat import ChatRuntime
from .classification import EmotionRuntime, SentimentRuntime, SequenceClassificationRuntime
from .embedding import EmbeddingRuntime
from .seq2seq import Seq2SeqRuntime
from .zero_shot import ZeroShotRuntime

RUNTIMES: dict[str, type[ModelRuntime]] = {
    cls.task: cls
    for cls in (
        EmotionRuntime,
        SentimentRuntime,
        ZeroShotRuntime,
        Seq2SeqRuntime,
        ChatRuntime,
        EmbeddingRuntime,
    )
}
"""Task name -> runtime class."""

TASKS: tuple[str, ...] = tuple(RUNTIMES)


def runtime_class(task: str) -> type[ModelRuntime]:
    """The runtime class serving ``task``; ValueError for an unknown task."""
    try:
        return RUNTIMES[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; expected one of {list(RUNTIMES)}") from None


__all__ = [
    "RUNTIMES",
    "TASKS",
    "ChatItem",
    "ChatRuntime",
    "ClassificationOutput",
    "EmbeddingOutput",
    "EmbeddingRuntime",
    "EmotionRuntime",
    "GenerationOutput",
    "InputTooLongError",
    "ModelRuntime",
    "Prepared",
    "RuntimeInfo",
    "RuntimeOptions",
    "SentimentRuntime",
    "Seq2SeqRuntime",
    "SequenceClassificationRuntime",
    "StreamPiece",
    "SummarizeItem",
    "TextItem",
    "ZeroShotItem",
    "ZeroShotRuntime",
    "cpu_has_native_bf16",
    "runtime_class",
]
