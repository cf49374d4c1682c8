"""Transparent chunking of large inputs, shared by the blocking and the asyncio clients.

A call's texts are split into chunks of at most ``max_batch`` texts (the server's
``--max-texts``), sent with at most ``max_in_flight`` requests in flight, and the answers put
back together in input order. The first error ends the call: the requests still running are
cancelled and the error is raised with its ``texts[i]`` indexes counted from the start of the
whole call. A chunk refused with ``LIMIT_EXCEEDED`` for the number of texts (``--max-texts``,
or zero-shot's ``--max-zero-shot-pairs``) is split to the limit in the error's metadata and
sent again, once; the client remembers the limit for its next calls.

A chunk refused with ``CALLER_LIMIT`` (the server's ``--max-caller-concurrency``: the caller
has too many calls in flight) lowers the number of requests in flight and is sent again after
the server's ``RetryInfo`` delay (:class:`Schedule`): 300 texts sent 4 chunks at a time to a
server allowing 1 call per caller succeed, one chunk at a time. A call that is one request
is not resent: what else is in flight is the caller's.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import re
import time
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
    ResourceExhausted,
    from_rpc_error,
)

log = logging.getLogger(__name__)

#: Texts per request when the client knows no better: the server's default ``--max-texts``.
DEFAULT_MAX_BATCH = 64
#: Requests of one split call in flight at once.
DEFAULT_MAX_IN_FLIGHT = 4

#: The ``limit`` metadata of the LIMIT_EXCEEDED errors a smaller chunk cures.
MAX_TEXTS_LIMIT = "--max-texts"
MAX_PAIRS_LIMIT = "--max-zero-shot-pairs"

#: Refusals with ``CALLER_LIMIT`` one chunk may get before the call fails.
CALLER_LIMIT_RETRIES = 8
#: Wait before resending a chunk refused with ``CALLER_LIMIT`` when the error says none (the
#: server's own ``RetryInfo`` is 0.25 s), and the longest wait, however often it was refused.
DEFAULT_CALLER_RETRY_S = 0.25
MAX_CALLER_RETRY_S = 4.0

R = TypeVar("R")

_TEXT_INDEX = re.compile(r"\btexts\[(\d+)\]")


@dataclass
class Limits:
    """What a client knows of the server's per-request limits: ``max_batch`` texts (learned
    down from a ``--max-texts`` LIMIT_EXCEEDED) and, once learned, zero-shot's
    texts x labels ``max_pairs``."""

    max_batch: int = DEFAULT_MAX_BATCH
    max_pairs: int | None = None
    #: The server's ``--max-caller-concurrency``, once a ``CALLER_LIMIT`` refusal named it.
    caller_limit: int | None = None

    def in_flight(self, max_in_flight: int) -> int:
        """Requests of one call to keep in flight: ``max_in_flight``, or fewer if the server
        allows this caller fewer."""
        return max(min(max_in_flight, self.caller_limit or max_in_flight), 1)

    def learn_caller_limit(self, error: HublessError) -> int | None:
        """The caller limit a ``CALLER_LIMIT`` error names (remembered), else the one known."""
        try:
            value = int(error.metadata.get("limit_value", ""))
        except ValueError:
            value = 0
        if value >= 1:
            self.caller_limit = value
        return self.caller_limit

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


class Schedule(Generic[R]):
    """One split call in progress, for either loop: the chunks still to send (each with the
    time it may go), the cap on requests in flight, and the answers so far.

    In a call split into several requests, a chunk refused with ``CALLER_LIMIT`` (the server's
    ``--max-caller-concurrency``) is not a failure, since the client's own parallelism caused
    it: the cap is halved (at most once per burst of requests, never below 1, never above
    the server's ``limit_value``, which the client remembers) and the chunk is sent again after
    the error's ``retry_delay``, doubled on each refusal of the same chunk. It fails after
    :data:`CALLER_LIMIT_RETRIES` refusals, or when the wait would end after the call's
    ``timeout`` counted from its start. A call of one request is refused as any other
    ``RESOURCE_EXHAUSTED``: the calls in flight beside it are the caller's own."""

    def __init__(
        self,
        call: BatchCall[R],
        limits: Limits,
        max_in_flight: int,
        timeout: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.call = call
        self.limits = limits
        self.clock = clock
        self.cap = limits.in_flight(max_in_flight)
        self.deadline = None if timeout is None else clock() + timeout
        self.pending: deque[tuple[Chunk, float]] = deque((c, 0.0) for c in call.plan(limits))
        self.split = len(self.pending) > 1
        self.parts: dict[int, R] = {}
        self._cuts = 0  # times the cap was lowered
        self._sent_at_cut: dict[int, int] = {}  # chunk offset -> self._cuts when it was sent
        self._refusals: dict[int, int] = {}  # chunk offset -> CALLER_LIMIT refusals

    def due(self, running: int) -> list[Chunk]:
        """The chunks to send now, with ``running`` requests of the call in flight."""
        now = self.clock()
        chunks: list[Chunk] = []
        while self.pending and running + len(chunks) < self.cap and self.pending[0][1] <= now:
            chunk = self.pending.popleft()[0]
            self._sent_at_cut[chunk.offset] = self._cuts
            chunks.append(chunk)
        return chunks

    def wait(self) -> float | None:
        """Seconds until the next chunk waiting for its retry time may be sent; ``None`` when
        none waits for a time (only for a request in flight to end)."""
        if not self.pending:
            return None
        delay = self.pending[0][1] - self.clock()
        return delay if delay > 0 else None

    def answered(self, chunk: Chunk, response: Any) -> None:
        self.parts[chunk.offset] = self.call.convert(response)

    def failed(self, chunk: Chunk, exc: grpc.RpcError) -> None:
        """Send ``chunk`` again (smaller after a LIMIT_EXCEEDED, later after a CALLER_LIMIT),
        or raise the error with its indexes counted from the start of the call."""
        error = from_rpc_error(exc)
        smaller = self.call.retry(chunk, error, self.limits)
        if smaller is not None:
            self.pending.extendleft((c, 0.0) for c in reversed(smaller))
            self.split = self.split or len(smaller) > 1
            return
        when = self._caller_retry(chunk, error)
        if when is None:
            raise shift_error(error, chunk.offset) from exc
        self.pending.appendleft((chunk, when))

    def _caller_retry(self, chunk: Chunk, error: HublessError) -> float | None:
        """When to send ``chunk`` again after a CALLER_LIMIT refusal, or ``None``."""
        if not self.split or not isinstance(error, ResourceExhausted):
            return None
        if error.reason != ErrorReason.CALLER_LIMIT:
            return None
        refusals = self._refusals.get(chunk.offset, 0) + 1
        self._refusals[chunk.offset] = refusals
        if refusals > CALLER_LIMIT_RETRIES:
            return None
        if self._sent_at_cut.get(chunk.offset, self._cuts) == self._cuts:
            self.cap = max(self.cap // 2, 1)  # one cut per burst: later refusals of it wait
            self._cuts += 1
        limit = self.limits.learn_caller_limit(error)
        if limit is not None:
            self.cap = min(self.cap, limit)
        base = error.retry_delay if error.retry_delay is not None else DEFAULT_CALLER_RETRY_S
        when = self.clock() + min(base * 2 ** (refusals - 1), MAX_CALLER_RETRY_S)
        if self.deadline is not None and when > self.deadline:
            return None
        log.debug(
            "chunk at texts[%d] refused (CALLER_LIMIT): %d in flight at most, retry in %.2fs",
            chunk.offset,
            self.cap,
            when - self.clock(),
        )
        return when

    def result(self) -> R:
        return self.call.combine(self.parts)


def run_blocking(
    call: BatchCall[R],
    start: Callable[[Any], grpc.Future],
    limits: Limits,
    max_in_flight: int,
    timeout: float | None = None,
) -> R:
    """Run ``call`` with the blocking stubs: ``start(request)`` starts one request (the
    multi-callable's ``future``), so a failure can cancel the requests still running.
    ``timeout``: the call's deadline, which bounds the waits before a retry."""
    schedule = Schedule(call, limits, max_in_flight, timeout)
    running: dict[grpc.Future, Chunk] = {}
    finished: queue.SimpleQueue[grpc.Future] = queue.SimpleQueue()
    try:
        while schedule.pending or running:
            for chunk in schedule.due(len(running)):
                future = start(call.request(chunk.texts))
                running[future] = chunk
                future.add_done_callback(finished.put)
            if not running:  # only chunks waiting for their retry time
                time.sleep(schedule.wait() or 0.0)
                continue
            try:
                future = finished.get(timeout=schedule.wait())
            except queue.Empty:
                continue
            chunk = running.pop(future)
            try:
                response = future.result()
            except grpc.RpcError as exc:
                schedule.failed(chunk, exc)
                continue
            schedule.answered(chunk, response)
    finally:
        for future in running:
            future.cancel()
    return schedule.result()


async def run_async(
    call: BatchCall[R],
    start: Callable[[Any], Awaitable[Any]],
    limits: Limits,
    max_in_flight: int,
    timeout: float | None = None,
) -> R:
    """Run ``call`` with the ``grpc.aio`` stubs: ``start(request)`` is the awaitable call.
    A failure, or the caller's cancellation, cancels the requests still running."""
    schedule = Schedule(call, limits, max_in_flight, timeout)
    running: dict[asyncio.Future[Any], Chunk] = {}
    try:
        while schedule.pending or running:
            for chunk in schedule.due(len(running)):
                running[asyncio.ensure_future(start(call.request(chunk.texts)))] = chunk
            if not running:  # only chunks waiting for their retry time
                await asyncio.sleep(schedule.wait() or 0.0)
                continue
            done, _ = await asyncio.wait(
                running, timeout=schedule.wait(), return_when=asyncio.FIRST_COMPLETED
            )
            for task in sorted(done, key=lambda t: running[t].offset):
                chunk = running.pop(task)
                try:
                    response = task.result()
                except grpc.RpcError as exc:
                    schedule.failed(chunk, exc)
                    continue
                schedule.answered(chunk, response)
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
    return schedule.result()
