"""The batching core: one queue and one worker per loaded model, independent of gRPC.

A request's items are prepared (tokenised) in a thread pool, then queued one item each, so
items of concurrent requests batch together. A model's worker forms a batch from the oldest
live item and the queued items with the same ``batch_key`` that are closest to it in length
(less padding), within ``max_batch_size`` items and a padding-aware token budget
(``longest num_tokens x total rows <= max_batch_tokens``; an item over the budget on its own
still runs, alone). The batch is handed to the runtime sorted by length. Items whose request
was cancelled or whose deadline passed are dropped before any compute. The oldest item is
always in the next batch, so nothing starves.

``predict`` runs in a worker thread, never on the event loop, and only while holding the
:class:`~hubless_server.inference.gate.InferenceGate` (by default one forward pass at a time across
all
models).

A generation model whose runtime offers a step engine (``step_engine()``: chat, greedy
summaries) also gets a :class:`~hubless_server.inference.scheduler.GenerationScheduler`
(unless ``continuous_batching`` is off): its items, unary or streamed, go to that step loop,
which decodes every running request together one token at a time; the other items (beam
search) stay on this queue. Without a scheduler, streams bypass the queue, count against
``max_queue`` and take the gate for every step, one stream at a time
(:mod:`hubless_server.inference.streaming`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from hubless_server.core.errors import ClosedError, ExpiredError, PrepareError, QueueFullError
from hubless_server.inference.gate import InferenceGate
from hubless_server.inference.scheduler import (
    GenerationObserver,
    GenerationPolicy,
    GenerationScheduler,
)
from hubless_server.inference.streaming import stream_pieces
from hubless_server.observability.batch_trace import BatchTracer, NullTracer, report_queue_wait
from hubless_server.runtimes.base import ModelRuntime, Prepared, StreamPiece, TextItem

if TYPE_CHECKING:  # the settings module reads the task table (gRPC stubs): types only here
    from hubless_server.core.config import Settings

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


INLINE_PREPARE_CHARS = 1024
"""Text requests with at most this many characters in all are tokenised inline."""


def _small_text_request(items: Sequence[Any]) -> bool:
    """Plain text items (embedding, emotion, sentiment) short enough to tokenise inline."""
    total = 0
    for item in items:
        if not isinstance(item, TextItem):
            return False
        total += len(item.text)
        if total > INLINE_PREPARE_CHARS:
            return False
    return True


@dataclass(frozen=True)
class BatchPolicy:
    """How a model's queue forms batches. Built from the server settings only
    (:meth:`from_settings`): the flags are the one home of these figures."""

    max_batch_size: int
    max_batch_tokens: int
    wait_s: float
    max_queue: int
    max_running_sequences: int = 32
    max_kv_tokens: int = 16384
    continuous_batching: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> BatchPolicy:
        """``--max-batch-size``, ``--max-batch-tokens``, ``--batch-wait-ms``, ``--max-queue``;
        for generation ``--max-running-sequences``, ``--max-kv-tokens``,
        ``--continuous-batching``."""
        return cls(
            max_batch_size=settings.max_batch_size,
            max_batch_tokens=settings.max_batch_tokens,
            wait_s=settings.batch_wait_ms / 1000.0,
            max_queue=settings.max_queue,
            max_running_sequences=settings.max_running_sequences,
            max_kv_tokens=settings.max_kv_tokens,
            continuous_batching=settings.continuous_batching,
        )

    def generation(self) -> GenerationPolicy:
        """The step loop's limits; a prefill is bounded like a batch (``max_batch_tokens``)."""
        return GenerationPolicy(
            max_running=self.max_running_sequences,
            max_kv_tokens=self.max_kv_tokens,
            max_queue=self.max_queue,
            max_prefill_tokens=self.max_batch_tokens,
        )


class BatchObserver(Protocol):
    """Receives the batching figures (the server wires Prometheus in): the batch queue's
    and, for a generation model, its step loop's (``GenerationObserver``'s methods)."""

    def queue_depth(self, model: str, depth: int) -> None: ...

    def batch_done(self, model: str, size: int, padded_tokens: int, seconds: float) -> None: ...

    def dropped(self, model: str, reason: str, count: int) -> None: ...

    def queue_wait(self, model: str, seconds: float) -> None: ...

    def first_token(self, model: str, seconds: float) -> None: ...

    def generated(self, model: str, tokens: int) -> None: ...

    def running(self, model: str, sequences: int) -> None: ...


class NullObserver(GenerationObserver):
    """Drops every figure."""

    def queue_depth(self, model: str, depth: int) -> None:
        return None

    def batch_done(self, model: str, size: int, padded_tokens: int, seconds: float) -> None:
        return None

    def dropped(self, model: str, reason: str, count: int) -> None:
        return None

    def queue_wait(self, model: str, seconds: float) -> None:
        return None


class _Request:
    """One request's items behind ONE future: it resolves with every output in order once
    the last item has its output, or with the first failure (the request fails whole, as
    ``gather`` over per-item futures did, without a future and a callback per item)."""

    __slots__ = ("future", "remaining", "results")

    def __init__(self, future: asyncio.Future[list[Any]], size: int) -> None:
        self.future = future
        self.results: list[Any] = [None] * size
        self.remaining = size


class _Slot:
    """Item ``index`` of a :class:`_Request`: what the worker resolves per item."""

    __slots__ = ("index", "request")

    def __init__(self, request: _Request, index: int) -> None:
        self.request = request
        self.index = index

    def done(self) -> bool:
        """The request has its answer already (all outputs, a failure, or cancelled)."""
        return self.request.future.done()

    def set_result(self, value: Any) -> None:
        request = self.request
        if request.future.done():
            return
        request.results[self.index] = value
        request.remaining -= 1
        if request.remaining == 0:
            request.future.set_result(request.results)

    def set_exception(self, exc: BaseException) -> None:
        if not self.request.future.done():
            self.request.future.set_exception(exc)


@dataclass(eq=False)
class _Entry:
    prepared: Prepared[Any]
    slot: _Slot
    deadline: float | None  # loop.time() based
    enqueued: float
    seq: int
    trace: Any = None  # the request's trace context (BatchTracer.capture), None: untraced
    enqueued_ns: int = 0  # wall clock, for the queue-wait span


@dataclass
class PlannedBatch:
    entries: list[Any]
    padded_tokens: int = 0


def padded_cost(items: Sequence[Prepared[Any]]) -> int:
    """Padded tokens a batch costs: longest item x total rows."""
    if not items:
        return 0
    return max(p.num_tokens for p in items) * sum(p.rows for p in items)


def plan_batch(queue: Sequence[Any], policy: BatchPolicy) -> PlannedBatch:
    """Choose the next batch from ``queue`` (oldest first; objects with ``.prepared`` and
    ``.seq``). Pure: the caller removes the chosen entries."""
    if not queue:
        return PlannedBatch([])
    head = queue[0]
    key = head.prepared.batch_key
    length = head.prepared.num_tokens
    candidates = sorted(
        (e for e in queue[1:] if e.prepared.batch_key == key),
        key=lambda e: (abs(e.prepared.num_tokens - length), e.seq),
    )
    chosen = [head]
    longest, rows = head.prepared.num_tokens, head.prepared.rows
    for entry in candidates:
        if len(chosen) >= policy.max_batch_size:
            break
        new_longest = max(longest, entry.prepared.num_tokens)
        new_rows = rows + entry.prepared.rows
        if new_longest * new_rows > policy.max_batch_tokens:
            continue
        chosen.append(entry)
        longest, rows = new_longest, new_rows
    chosen.sort(key=lambda e: (e.prepared.num_tokens, e.seq))
    return PlannedBatch(chosen, longest * rows)


@dataclass
class Batcher(Generic[In, Out]):
    """The queue and worker of one loaded model."""

    name: str
    runtime: ModelRuntime[In, Out]
    policy: BatchPolicy
    executor: Executor  # runs predict / stream (blocking on the gate)
    prepare_executor: Executor  # runs prepare (tokenisers)
    gate: InferenceGate
    observer: BatchObserver = field(default_factory=NullObserver)
    tracer: BatchTracer = field(default_factory=NullTracer)

    def __post_init__(self) -> None:
        self._queue: list[_Entry] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self.active_streams = 0
        self._users = 0  # requests inside prepare/submit/stream: what a drain waits for
        self._idle = asyncio.Event()
        self.generation = self._generation_scheduler()

    def _generation_scheduler(self) -> GenerationScheduler | None:
        """The step loop of a generation model (None: no step engine, or turned off)."""
        if not self.policy.continuous_batching:
            return None
        engine = self.runtime.step_engine()
        if engine is None:
            return None
        return GenerationScheduler(
            self.name,
            engine,
            self.policy.generation(),
            self.executor,
            self.gate,
            self.observer,
        )

    # ---- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker task (on the running loop)."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(
                self._run(), name=f"batcher-{self.name}"
            )
        if self.generation is not None:
            self.generation.start()

    async def close(self) -> None:
        """Fail queued items with :class:`ClosedError` and stop the worker."""
        self._closed = True
        for entry in self._queue:
            if not entry.slot.done():
                entry.slot.set_exception(ClosedError("the server is shutting down"))
        self._queue.clear()
        self.observer.queue_depth(self.name, 0)
        if self.generation is not None:
            await self.generation.close()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def in_use(self) -> int:
        """Requests being prepared, queued, computed or streamed by this batcher."""
        return self._users

    async def drain(self, timeout: float) -> bool:
        """Wait until no request uses this batcher (a replaced model version finishes its
        in-flight work before it is closed); at most ``timeout`` seconds. True when idle."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._users > 0:
            self._idle.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._idle.wait(), remaining)
            except TimeoutError:
                return False
        return True

    @contextlib.contextmanager
    def _use(self) -> Iterator[None]:
        self._users += 1
        try:
            yield
        finally:
            self._users -= 1
            if self._users == 0:
                self._idle.set()

    # ---- requests -------------------------------------------------------------------

    async def prepare(self, items: Sequence[In]) -> list[Prepared[In]]:
        """Tokenise ``items``; :class:`PrepareError` names a bad item.

        Small text requests are tokenised right here on the event loop: for a sentence or
        two the thread hand-off (submit, wake-up, GIL ping-pong) costs more CPU than the
        tokeniser. Anything larger goes to the prepare pool so the loop stays responsive.
        """
        if self._closed:
            raise ClosedError("the server is shutting down")
        runtime = self.runtime

        def prepare_all() -> list[Prepared[In]]:
            prepared = []
            for index, item in enumerate(items):
                try:
                    prepared.append(runtime.prepare(item))
                except Exception as exc:
                    raise PrepareError(index, exc) from exc
            return prepared

        with self._use():
            if _small_text_request(items):
                return prepare_all()
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.prepare_executor, prepare_all)

    async def run(self, items: Sequence[In], deadline: float | None = None) -> list[Out]:
        """Prepare, then :meth:`submit`."""
        with self._use():
            return await self.submit(await self.prepare(items), deadline)

    async def submit(
        self, prepared: Sequence[Prepared[In]], deadline: float | None = None
    ) -> list[Out]:
        """Queue each item, wait for all, return outputs in order. ``deadline`` is in
        ``loop.time()`` seconds. All-or-nothing admission: :class:`QueueFullError` when the
        queue cannot take every item."""
        if self._closed:
            raise ClosedError("the server is shutting down")
        if not prepared:
            return []
        with self._use():
            return await self._submit(prepared, deadline)

    async def _submit(self, prepared: Sequence[Prepared[In]], deadline: float | None) -> list[Out]:
        generation = self.generation
        if generation is not None and all(generation.accepts(p) for p in prepared):
            return await generation.submit(prepared, deadline)  # type: ignore[return-value]
        loop = asyncio.get_running_loop()
        depth = len(self._queue) + self.active_streams
        if depth + len(prepared) > self.policy.max_queue:
            # only a full queue is worth a scan for cancelled and expired entries (the worker
            # drops them before every batch anyway); a scan per request was O(queue)
            self._purge(loop.time())
            depth = len(self._queue) + self.active_streams
        if depth + len(prepared) > self.policy.max_queue:
            self.observer.dropped(self.name, "queue_full", len(prepared))
            raise QueueFullError(self.name, depth, self.policy.max_queue, len(prepared))
        now = loop.time()
        trace = self.tracer.capture()
        now_ns = time.time_ns() if trace is not None else 0
        request = _Request(loop.create_future(), len(prepared))
        entries = [
            _Entry(p, _Slot(request, i), deadline, now, next(self._seq), trace, now_ns)
            for i, p in enumerate(prepared)
        ]
        self._queue.extend(entries)
        self.observer.queue_depth(self.name, len(self._queue))
        self._wake.set()
        try:
            return await request.future
        except BaseException:
            request.future.cancel()  # its queued items are dropped before compute
            raise

    async def stream(
        self, prepared: Prepared[In], deadline: float | None = None
    ) -> AsyncIterator[StreamPiece]:
        """Generate piece by piece: on the step loop when there is one, else alone
        (:mod:`hubless_server.inference.streaming`), admitted like one queued item."""
        if self._closed:
            raise ClosedError("the server is shutting down")
        generation = self.generation
        if generation is not None and generation.accepts(prepared):
            with self._use():
                async for piece in generation.stream(prepared, deadline):
                    yield piece
            return
        depth = len(self._queue) + self.active_streams
        if depth + 1 > self.policy.max_queue:
            self.observer.dropped(self.name, "queue_full", 1)
            raise QueueFullError(self.name, depth, self.policy.max_queue, 1)
        self.active_streams += 1
        try:
            with self._use():
                async for piece in stream_pieces(self.runtime, prepared, self.executor, self.gate):
                    yield piece
        finally:
            self.active_streams -= 1

    # ---- worker ---------------------------------------------------------------------

    def _purge(self, now: float) -> None:
        """Drop cancelled and expired entries (expired ones fail with ExpiredError)."""
        keep: list[_Entry] = []
        cancelled = expired = 0
        for entry in self._queue:
            if entry.slot.done():
                cancelled += 1
            elif entry.deadline is not None and entry.deadline <= now:
                entry.slot.set_exception(ExpiredError("deadline passed while queued"))
                expired += 1
            else:
                keep.append(entry)
        if cancelled or expired:
            self._queue = keep
            if cancelled:
                self.observer.dropped(self.name, "cancelled", cancelled)
            if expired:
                self.observer.dropped(self.name, "expired", expired)
            self.observer.queue_depth(self.name, len(keep))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._purge(loop.time())
            if self._queue and len(self._queue) < self.policy.max_batch_size:
                remaining = self._queue[0].enqueued + self.policy.wait_s - loop.time()
                if remaining > 0:
                    await asyncio.sleep(remaining)
                    self._purge(loop.time())
            if not self._queue:
                self._wake.clear()
                continue
            plan = plan_batch(self._queue, self.policy)
            chosen = set(map(id, plan.entries))
            self._queue = [e for e in self._queue if id(e) not in chosen]
            self.observer.queue_depth(self.name, len(self._queue))
            if not self._queue:
                self._wake.clear()
            traces = report_queue_wait(
                self.tracer,
                self.observer.queue_wait,
                self.name,
                plan.entries,
                loop.time(),
                time.time_ns(),
            )
            try:
                await self._execute(plan.entries, plan.padded_tokens, traces)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug here must not stop the model's worker
                log.exception("batch worker error", extra={"fields": {"model": self.name}})
                for entry in plan.entries:
                    if not entry.slot.done():
                        entry.slot.set_exception(exc)

    async def _execute(
        self, batch: list[_Entry], padded_tokens: int, traces: Sequence[Any] = ()
    ) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        span = self.tracer.batch(self.name, traces, len(batch), padded_tokens)
        try:
            outputs = await loop.run_in_executor(
                self.executor,
                self.gate.run,
                span.wrap(self.runtime.predict),
                [e.prepared for e in batch],
            )
            if len(outputs) != len(batch):
                raise RuntimeError(
                    f"runtime {self.name!r} returned {len(outputs)} outputs for {len(batch)} items"
                )
        except asyncio.CancelledError as exc:
            span.end(exc)
            for entry in batch:
                if not entry.slot.done():
                    entry.slot.set_exception(ClosedError("the server is shutting down"))
            raise
        except Exception as exc:
            span.end(exc)
            if len(batch) > 1:
                # One bad item must not fail its neighbours: retry each alone.
                log.warning(
                    "batch failed; retrying its items one by one",
                    extra={"fields": {"model": self.name, "size": len(batch), "error": repr(exc)}},
                )
                for entry in batch:
                    if not entry.slot.done():
                        retry = [entry.trace] if entry.trace is not None else []
                        await self._execute([entry], padded_cost([entry.prepared]), retry)
                return
            for entry in batch:
                if not entry.slot.done():
                    entry.slot.set_exception(exc)
            return
        span.end()
        self.observer.batch_done(
            self.name, len(batch), padded_tokens, time.perf_counter() - started
        )
        for entry, output in zip(batch, outputs, strict=True):
            if not entry.slot.done():
                entry.slot.set_result(output)
