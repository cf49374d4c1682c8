"""The str enums of the client (tasks, truncation, polarity, ...) and their protobuf values."""

from __future__ import annotations

from enum import StrEnum

from hubless.v1 import common_pb2, conversation_pb2, models_pb2, sentiment_pb2

__all__ = [
    "FinishReason",
    "HealthStatus",
    "ModelState",
    "Polarity",
    "Task",
    "Truncation",
    "task_from_pb",
    "task_to_pb",
    "truncation_to_pb",
]


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
    module="hubless_client.types",
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
POLARITY_FROM_PB = {
    sentiment_pb2.POLARITY_UNSPECIFIED: Polarity.UNSPECIFIED,
    sentiment_pb2.POLARITY_NEGATIVE: Polarity.NEGATIVE,
    sentiment_pb2.POLARITY_NEUTRAL: Polarity.NEUTRAL,
    sentiment_pb2.POLARITY_POSITIVE: Polarity.POSITIVE,
}
FINISH_FROM_PB = {
    conversation_pb2.FINISH_REASON_UNSPECIFIED: FinishReason.UNSPECIFIED,
    conversation_pb2.FINISH_REASON_STOP: FinishReason.STOP,
    conversation_pb2.FINISH_REASON_LENGTH: FinishReason.LENGTH,
}
STATE_FROM_PB = {
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
