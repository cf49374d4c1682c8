"""Typed Python client for the hubless gRPC model server.

>>> from hubless_client import Client
>>> with Client("localhost:50051") as client:       # 30 s default deadline per request
...     client.embed(["hello"])[0][:3]
"""

from hubless_client._chunks import DEFAULT_MAX_BATCH, DEFAULT_MAX_IN_FLIGHT
from hubless_client._common import DEFAULT_TIMEOUT, RetryPolicy
from hubless_client.aio import AsyncClient, AsyncReplyStream
from hubless_client.client import Client, ReplyStream
from hubless_client.errors import (
    Cancelled,
    ClientClosed,
    ConnectionFailed,
    DeadlineExceeded,
    ErrorReason,
    FailedPrecondition,
    FieldViolation,
    HublessError,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from hubless_client.types import (
    EmbedResult,
    Emotion,
    EmotionResult,
    FinishReason,
    HealthStatus,
    LabelScore,
    ModelInfo,
    ModelRef,
    ModelState,
    Polarity,
    ReplyChunk,
    ReplyResult,
    Sentiment,
    SentimentResult,
    SummarizeResult,
    Summary,
    Task,
    Truncation,
    ZeroShot,
    ZeroShotResult,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_TIMEOUT",
    "AsyncClient",
    "AsyncReplyStream",
    "Cancelled",
    "Client",
    "ClientClosed",
    "ConnectionFailed",
    "DeadlineExceeded",
    "EmbedResult",
    "Emotion",
    "EmotionResult",
    "ErrorReason",
    "FailedPrecondition",
    "FieldViolation",
    "FinishReason",
    "HealthStatus",
    "HublessError",
    "Internal",
    "InvalidArgument",
    "LabelScore",
    "ModelInfo",
    "ModelRef",
    "ModelState",
    "NotFound",
    "PermissionDenied",
    "Polarity",
    "ReplyChunk",
    "ReplyResult",
    "ReplyStream",
    "ResourceExhausted",
    "RetryPolicy",
    "Sentiment",
    "SentimentResult",
    "SummarizeResult",
    "Summary",
    "Task",
    "Truncation",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "ZeroShot",
    "ZeroShotResult",
]
