"""Model runtimes: one class per kind of model behind the :class:`ModelRuntime` interface.

:data:`KINDS` maps each kind to its class; the task table (:mod:`hubless_server.core.tasks`) names
the kind of every task, and ``runtime_class(task)`` follows it. The request/response types and
the exceptions come from :mod:`.base` and are re-exported here.
"""

from __future__ import annotations

from .base import (
    ChatItem,
    ClassificationOutput,
    EmbeddingOutput,
    GenerationOutput,
    InputTooLongError,
    InvalidItemError,
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
from .classification import SequenceClassificationRuntime
from .embedding import EmbeddingRuntime
from .placement import cpu_has_native_bf16
from .seq2seq import Seq2SeqRuntime
from .zero_shot import ZeroShotRuntime

KINDS: dict[str, type[ModelRuntime]] = {
    cls.kind: cls
    for cls in (
        SequenceClassificationRuntime,
        ZeroShotRuntime,
        Seq2SeqRuntime,
        ChatRuntime,
        EmbeddingRuntime,
    )
}
"""Runtime kind -> runtime class."""


def runtime_class(task: str) -> type[ModelRuntime]:
    """The runtime class serving ``task`` (its kind in the task table); ValueError for an
    unknown task."""
    from hubless_server.core.tasks import spec_of  # the table imports gRPC stubs: only when asked

    return KINDS[spec_of(task).runtime]


__all__ = [
    "KINDS",
    "ChatItem",
    "ChatRuntime",
    "ClassificationOutput",
    "EmbeddingOutput",
    "EmbeddingRuntime",
    "GenerationOutput",
    "InputTooLongError",
    "InvalidItemError",
    "ModelRuntime",
    "Prepared",
    "RuntimeInfo",
    "RuntimeOptions",
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
