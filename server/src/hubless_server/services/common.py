"""What every servicer shares: request validation, error -> status mapping, ModelRef."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from hubless.v1 import common_pb2
from hubless_server.access_log import note
from hubless_server.batching import ClosedError, ExpiredError, PrepareError, QueueFullError
from hubless_server.config import Settings
from hubless_server.registry import (
    ModelNotFoundError,
    ModelRecord,
    Registry,
    TaskUnavailableError,
)
from hubless_server.runtimes.base import InputTooLongError

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class InvalidArgument(Exception):
    """A request field is invalid; the message says which and how to fix it."""


@dataclass
class ServiceDeps:
    """What a servicer needs: the settings and the model registry."""

    settings: Settings
    registry: Registry

    def resolve(self, task: str, model: str, items: int) -> ModelRecord:
        note(items=items)
        record = self.registry.resolve(task, model.strip())
        note(model=record.name)
        return record


def model_ref(record: ModelRecord) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(name=record.name, repo_id=record.repo_id, commit=record.commit)


# ---- validation ----------------------------------------------------------------------


def check_texts(texts: Sequence[str], settings: Settings, what: str = "texts") -> list[str]:
    """Non-empty list of non-blank texts within the count and length limits."""
    if not texts:
        raise InvalidArgument(f"{what} is empty: send at least one text")
    if len(texts) > settings.max_texts:
        raise InvalidArgument(
            f"{what} has {len(texts)} entries; at most {settings.max_texts} per request "
            "(split the request)"
        )
    for index, text in enumerate(texts):
        if not text.strip():
            raise InvalidArgument(f"{what}[{index}] is empty or whitespace")
        if len(text) > settings.max_text_chars:
            raise InvalidArgument(
                f"{what}[{index}] has {len(text)} characters; at most "
                f"{settings.max_text_chars} (--max-text-chars)"
            )
    return list(texts)


def truncate_flag(truncation: int) -> bool:
    """True to truncate (UNSPECIFIED, TRUNCATE), False to reject (ERROR)."""
    if truncation in (common_pb2.TRUNCATION_UNSPECIFIED, common_pb2.TRUNCATION_TRUNCATE):
        return True
    if truncation == common_pb2.TRUNCATION_ERROR:
        return False
    raise InvalidArgument(f"truncation {truncation} is not a known Truncation value")


def check_non_negative(**values: int) -> None:
    for name, value in values.items():
        if value < 0:
            raise InvalidArgument(f"{name} is {value}; it must not be negative (0 = default)")


def check_finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise InvalidArgument(f"{name} must be a finite number")


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The RPC's deadline in ``loop.time()`` seconds, or None."""
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return asyncio.get_running_loop().time() + remaining


# ---- errors ---------------------------------------------------------------------------


def status_for(exc: BaseException, method: str) -> tuple[grpc.StatusCode, str]:
    """The gRPC status for an exception raised while serving ``method``."""
    if isinstance(exc, PrepareError):
        cause = exc.cause
        if isinstance(cause, InputTooLongError) and method.startswith("ConversationService"):
            # Chat has no truncation option: old turns are dropped, but the last one must fit.
            return (
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the last turn is {cause.tokens} tokens; with this max_new_tokens the model's "
                f"context leaves room for at most {cause.limit}: shorten the turn or ask for "
                "fewer new tokens",
            )
        if isinstance(cause, InputTooLongError):
            return (
                grpc.StatusCode.INVALID_ARGUMENT,
                f"text {exc.index}: {cause} (truncation=TRUNCATION_ERROR; shorten it or use "
                "TRUNCATION_TRUNCATE)",
            )
        if isinstance(cause, ValueError):
            return grpc.StatusCode.INVALID_ARGUMENT, f"text {exc.index}: {cause}"
        return status_for(cause, method)
    if isinstance(exc, InvalidArgument):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, InputTooLongError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, ModelNotFoundError):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, TaskUnavailableError):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    if isinstance(exc, QueueFullError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, ExpiredError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(exc)
    if isinstance(exc, ClosedError):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    log.error("internal error in %s", method, exc_info=exc, extra={"fields": {"method": method}})
    return (
        grpc.StatusCode.INTERNAL,
        f"internal error ({type(exc).__name__}); the server logged the details",
    )


def unary(
    fn: Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]:
    """Map exceptions of a unary handler to gRPC statuses; nothing escapes as a crash."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            return await fn(self, request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            code, message = status_for(exc, fn.__qualname__)
            await context.abort(code, message)
            raise  # unreachable: abort raises

    return wrapper


def server_stream(
    fn: Callable[[Any, Req, grpc.aio.ServicerContext], AsyncIterator[Resp]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext], AsyncIterator[Resp]]:
    """:func:`unary` for server-streaming handlers."""

    @functools.wraps(fn)
    async def wrapper(
        self: Any, request: Req, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Resp]:
        try:
            async for message in fn(self, request, context):
                yield message
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            code, message = status_for(exc, fn.__qualname__)
            await context.abort(code, message)

    return wrapper
