"""What every servicer shares: request validation, the error wrappers, ModelRef.

Validation raises :class:`~hubless_server.services.errors.RequestError` naming the field path
(``texts[3]``) and, for a server limit, the flag that sets it; :func:`unary` and
:func:`server_stream` turn any exception into a status through :mod:`.errors`, the one place
that maps exceptions to codes and details. A task servicer (:class:`TaskServicer`) declares
its task and how a rejected item reads as a field (:meth:`TaskServicer.invalid_item`).
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import grpc

from hubless.v1 import common_pb2
from hubless_server.core.config import Settings
from hubless_server.inference.batching import PrepareError
from hubless_server.models.registry import ModelRecord, Registry
from hubless_server.observability.request_info import note
from hubless_server.runtimes.base import InputTooLongError, InvalidItemError
from hubless_server.services.errors import (
    INPUT_TOO_LONG,
    ErrorScope,
    RequestError,
    TaskDisabledError,
    abort,
    limit_exceeded,
    reject_undecodable,
)
from hubless_server.services.wire import UndecodableRequest

Req = TypeVar("Req")
Resp = TypeVar("Resp")


@dataclass
class ServiceDeps:
    """What a servicer needs: the settings and the model registry."""

    settings: Settings
    registry: Registry

    def resolve(self, task: str, model: str, items: int) -> ModelRecord:
        """The model answering a request of ``task`` (``model`` empty: the default)."""
        note(items=items)
        if task not in self.registry.tasks:
            raise TaskDisabledError(task, self.registry.unavailable_message(task))
        record = self.registry.resolve(task, model.strip())
        note(model=record.name)
        return record


def model_ref(record: ModelRecord) -> common_pb2.ModelRef:
    """Which installed model answered."""
    return common_pb2.ModelRef(name=record.name, repo_id=record.repo_id, commit=record.commit)


class TaskServicer:
    """Base of the task servicers: the task they serve and how their errors name fields."""

    task: ClassVar[str]
    """The task name (a ``name`` of the task table)."""
    items_field: ClassVar[str] = "texts"
    """The request field whose entries become the batch items."""

    def __init__(self, deps: ServiceDeps) -> None:
        self.deps = deps

    def invalid_item(self, exc: PrepareError, request: Any) -> BaseException:
        """The error to report for an item the runtime rejected: a field error on
        ``<items_field>[index]``, or the cause when it is not the request's fault."""
        field = f"{self.items_field}[{exc.index}]"
        cause = exc.cause
        if isinstance(cause, InputTooLongError) and cause.field:  # not the text: no truncation
            return RequestError(
                cause.field,
                str(cause),
                INPUT_TOO_LONG,
                metadata={"tokens": str(cause.tokens), "max_input_tokens": str(cause.limit)},
            )
        if isinstance(cause, InputTooLongError):
            # field=VALUE as gRPC, grpcurl and the HTTP door's JSON all spell it (the Python
            # client rewrites it to its own truncation="truncate")
            return RequestError(
                field,
                f"{field}: {cause} (truncation=TRUNCATION_ERROR; shorten it or set "
                "truncation=TRUNCATION_TRUNCATE)",
                INPUT_TOO_LONG,
                metadata={"tokens": str(cause.tokens), "max_input_tokens": str(cause.limit)},
            )
        if isinstance(cause, InvalidItemError):
            return RequestError(cause.field, str(cause))
        if isinstance(cause, ValueError):
            return RequestError(field, f"{field}: {cause}")
        return cause


# ---- validation ----------------------------------------------------------------------


def check_texts(texts: Sequence[str], settings: Settings, what: str = "texts") -> list[str]:
    """Non-empty list of non-blank texts within the count and length limits."""
    if not texts:
        raise RequestError(what, f"{what} is empty: send at least one text")
    if len(texts) > settings.max_texts:
        raise limit_exceeded(
            what,
            f"{what} has {len(texts)} entries; at most {settings.max_texts} per request "
            "(--max-texts; split the request)",
            "--max-texts",
            settings.max_texts,
        )
    for index, text in enumerate(texts):
        if not text.strip():
            raise RequestError(f"{what}[{index}]", f"{what}[{index}] is empty or whitespace")
        if len(text) > settings.max_text_chars:
            raise limit_exceeded(
                f"{what}[{index}]",
                f"{what}[{index}] has {len(text)} characters; at most "
                f"{settings.max_text_chars} (--max-text-chars)",
                "--max-text-chars",
                settings.max_text_chars,
            )
    return list(texts)


def truncate_flag(truncation: int) -> bool:
    """True to truncate (UNSPECIFIED, TRUNCATE), False to reject (ERROR)."""
    if truncation in (common_pb2.TRUNCATION_UNSPECIFIED, common_pb2.TRUNCATION_TRUNCATE):
        return True
    if truncation == common_pb2.TRUNCATION_ERROR:
        return False
    raise RequestError("truncation", f"truncation {truncation} is not a known Truncation value")


def check_finite(name: str, value: float) -> None:
    """A float field must be a number (not NaN or infinite)."""
    if not math.isfinite(value):
        raise RequestError(name, f"{name} must be a finite number")


def optional_int(request: Any, name: str) -> int | None:
    """The value of an ``optional int32`` field, None when unset."""
    return int(getattr(request, name)) if request.HasField(name) else None


def check_at_least(name: str, value: int, minimum: int) -> None:
    """An explicit integer field below ``minimum`` is invalid (unset is checked elsewhere)."""
    if value < minimum:
        unset = "leave it unset for the server default"
        raise RequestError(name, f"{name} is {value}; it must be at least {minimum} ({unset})")


def check_cap(name: str, value: int, cap: int, flag: str) -> None:
    """An integer field above the server's cap ``flag`` is a LIMIT_EXCEEDED error."""
    if value > cap:
        raise limit_exceeded(name, f"{name} is {value}; at most {cap} ({flag})", flag, cap)


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The RPC's deadline in ``loop.time()`` seconds, or None."""
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return asyncio.get_running_loop().time() + remaining


# ---- error wrappers -------------------------------------------------------------------


def _reportable(servicer: Any, exc: Exception, request: Any) -> BaseException:
    if isinstance(exc, PrepareError) and isinstance(servicer, TaskServicer):
        return servicer.invalid_item(exc, request)
    if isinstance(exc, PrepareError):
        return exc.cause
    return exc


def _scope(servicer: Any, method: str, request: Any) -> ErrorScope:
    model = getattr(request, "model", "")
    return ErrorScope(
        method=method,
        task=getattr(servicer, "task", ""),
        model=model.strip() if isinstance(model, str) else "",
    )


def unary(
    fn: Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]:
    """Map exceptions of a unary handler to gRPC statuses; nothing escapes as a crash. A body
    that did not parse (:class:`UndecodableRequest`) never reaches the handler."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        if isinstance(request, UndecodableRequest):
            await reject_undecodable(context, request, fn.__qualname__, getattr(self, "task", ""))
        try:
            return await fn(self, request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            scope = _scope(self, fn.__qualname__, request)
            await abort(context, _reportable(self, exc, request), scope)

    return wrapper


def server_stream(
    fn: Callable[[Any, Req, grpc.aio.ServicerContext], AsyncIterator[Resp]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext], AsyncIterator[Resp]]:
    """:func:`unary` for server-streaming handlers."""

    @functools.wraps(fn)
    async def wrapper(
        self: Any, request: Req, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Resp]:
        if isinstance(request, UndecodableRequest):
            await reject_undecodable(context, request, fn.__qualname__, getattr(self, "task", ""))
        try:
            async for message in fn(self, request, context):
                yield message
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            scope = _scope(self, fn.__qualname__, request)
            await abort(context, _reportable(self, exc, request), scope)

    return wrapper
