"""Transparent chunking of large inputs, shared by the blocking and the asyncio clients.

A call's texts are split into chunks of at most ``max_batch`` texts (the server's
``--max-texts``), sent with at most ``max_in_flight`` requests in flight, and the answers put
back together in input order. The first error ends the call: the requests still running are
cancelled and the error is raised with its ``texts[i]`` indexes counted from the start of the
whole call. A chunk refused with ``LIMIT_EXCEEDED`` for the number of texts (``--max-texts``,
or zero-shot's ``--max-zero-shot-pairs``) is split to the limit in the error's metadata and
sent again, once; the client remembers the limit for its next calls.
"""

from __future__ import annotations

import asyncio
import queue
import re
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc

from hubless_client.errors import (
    ErrorReason,
    FieldViolation,
    HublessError,
    InvalidArgument,
    from_rpc_error,
)

#: Texts per request when the client knows no better: the server's default ``--max-texts``.
DEFAULT_MAX_BATCH = 64
#: Requests of one split call in flight at once.
DEFAULT_MAX_IN_FLIGHT = 4

#: The ``limit`` metadata of the LIMIT_EXCEEDED errors a smaller chunk cures.
MAX_TEXTS_LIMIT = "--max-texts"
MAX_PAIRS_LIMIT = "--max-zero-shot-pairs"

R = TypeVar("R")

_TEXT_INDEX = re.compile(r"\btexts\[(\d+)\]")


@dataclass
class Limits:
    """What a client knows of the server's per-request limits: ``max_batch`` texts (learned
    down from a ``--max-texts`` LIMIT_EXCEEDED) and, once learned, zero-shot's
    texts x labels ``max_pairs``."""

    max_batch: int = DEFAULT_MAX_BATCH
    max_pairs: int | None = None

    def chunk_size(self, labels: int) -> int:
        """Texts per request for a call with ``labels`` candidate labels (0: not zero-shot)."""
        if labels and self.max_pairs:
            return max(min(self.max_batch, self.max_pairs // labels), 1)
        return self.max_batch

    def learn(self, error: HublessError, texts: int, labels: int) -> int | None:
        """The chunk size that fits a limit ``error`` reports for a request of ``texts``
        texts (remembered for later calls), or ``None`` when smaller chunks would not help."""
        if not isinstance(error, InvalidArgument) or error.reason != ErrorReason.LIMIT_EXCEEDED:
            return None
        try:
            value = int(error.metadata.get("limit_value", ""))
        except ValueError:
            return None
        limit = error.metadata.get("limit", "")
        if limit == MAX_TEXTS_LIMIT:
            size = value
        elif limit == MAX_PAIRS_LIMIT and labels:
            size = value // labels
        else:
            return None
        if not 1 <= size < texts:
            return None
        if limit == MAX_TEXTS_LIMIT:
            self.max_batch = min(self.max_batch, value)
        else:
            self.max_pairs = value
        return size


def check_limits(max_batch: int, max_in_flight: int) -> None:
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, not {max_batch}")
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")


def shift_indexes(text: str, offset: int) -> str:
    """``texts[i]`` in ``text`` -> ``texts[i + offset]``."""
    return _TEXT_INDEX.sub(lambda m: f"texts[{int(m[1]) + offset}]", text)


def shift_error(error: HublessError, offset: int) -> HublessError:
    """``error`` of a chunk starting at text ``offset``, with the ``texts[i]`` of its field
    violations and message counted from the start of the call."""
    if offset == 0:
        return error
    shifted = type(error)(
        shift_indexes(error.details, offset),
        code=error.code,
        rpc_error=error.rpc_error,
        reason=error.reason,
        metadata=error.metadata,
        field_violations=[
            FieldViolation(shift_indexes(v.field, offset), shift_indexes(v.description, offset))
            for v in error.field_violations
        ],
        retry_delay=error.retry_delay,
    )
    return shifted


@dataclass(frozen=True)
class Chunk:
    """Texts ``offset`` to ``offset + len(texts)`` of a call; ``resplit``: may still be split
    after a LIMIT_EXCEEDED (once per text)."""

    offset: int
    texts: list[str]
    resplit: bool = True


def split(texts: list[str], size: int, offset: int = 0, resplit: bool = True) -> list[Chunk]:
    """``texts`` in chunks of at most ``size``; no texts make one empty chunk (the server
    answers it with its own error)."""
    if not texts:
        return [Chunk(offset, [], resplit)]
    return [
        Chunk(offset + start, texts[start : start + size], resplit)
        for start in range(0, len(texts), size)
    ]


@dataclass(frozen=True)
class BatchCall(Generic[R]):
    """One call of a batch RPC, as chunks: ``request(texts)`` builds a chunk's request,
    ``convert`` reads its answer and ``merge`` joins the answers in order. ``labels``: the
    number of zero-shot candidate labels (sent whole with every chunk), 0 otherwise."""

    texts: list[str]
    request: Callable[[list[str]], Any]
    convert: Callable[[Any], R]
    merge: Callable[[Sequence[R]], R]
    labels: int = 0

    def plan(self, limits: Limits) -> list[Chunk]:
        return split(self.texts, limits.chunk_size(self.labels))

    def retry(self, chunk: Chunk, error: HublessError, limits: Limits) -> list[Chunk] | None:
        """The smaller chunks to send instead of ``chunk`` after ``error``, or ``None``."""
        if not chunk.resplit:
            return None
        size = limits.learn(error, len(chunk.texts), self.labels)
        if size is None:
            return None
        return split(chunk.texts, size, chunk.offset, resplit=False)

    def combine(self, parts: dict[int, R]) -> R:
        return self.merge([parts[offset] for offset in sorted(parts)])


def run_blocking(
    call: BatchCall[R],
    start: Callable[[Any], grpc.Future],
    limits: Limits,
    max_in_flight: int,
) -> R:
    """Run ``call`` with the blocking stubs: ``start(request)`` starts one request (the
    multi-callable's ``future``), so a failure can cancel the requests still running."""
    pending = deque(call.plan(limits))
    running: dict[grpc.Future, Chunk] = {}
    finished: queue.SimpleQueue[grpc.Future] = queue.SimpleQueue()
    parts: dict[int, R] = {}
    try:
        while pending or running:
            while pending and len(running) < max_in_flight:
                chunk = pending.popleft()
                future = start(call.request(chunk.texts))
                running[future] = chunk
                future.add_done_callback(finished.put)
            future = finished.get()
            chunk = running.pop(future)
            try:
                response = future.result()
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                smaller = call.retry(chunk, error, limits)
                if smaller is None:
                    raise shift_error(error, chunk.offset) from exc
                pending.extendleft(reversed(smaller))
                continue
            parts[chunk.offset] = call.convert(response)
    finally:
        for future in running:
            future.cancel()
    return call.combine(parts)


async def run_async(
    call: BatchCall[R],
    start: Callable[[Any], Awaitable[Any]],
    limits: Limits,
    max_in_flight: int,
) -> R:
    """Run ``call`` with the ``grpc.aio`` stubs: ``start(request)`` is the awaitable call.
    A failure, or the caller's cancellation, cancels the requests still running."""
    pending = deque(call.plan(limits))
    running: dict[asyncio.Future[Any], Chunk] = {}
    parts: dict[int, R] = {}
    try:
        while pending or running:
            while pending and len(running) < max_in_flight:
                chunk = pending.popleft()
                running[asyncio.ensure_future(start(call.request(chunk.texts)))] = chunk
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=lambda t: running[t].offset):
                chunk = running.pop(task)
                try:
                    response = task.result()
                except grpc.RpcError as exc:
                    error = from_rpc_error(exc)
                    smaller = call.retry(chunk, error, limits)
                    if smaller is None:
                        raise shift_error(error, chunk.offset) from exc
                    pending.extendleft(reversed(smaller))
                    continue
                parts[chunk.offset] = call.convert(response)
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
    return call.combine(parts)
