"""The generation scheduler: token-level continuous batching, one step loop per model.

Independent of gRPC, like :mod:`hubless_server.inference.batching`. Requests (unary or
streamed) wait in a FIFO queue; the step loop (an asyncio task) admits them into the running
batch and drives the model's :class:`~hubless_server.runtimes.generation.engine.StepEngine` one
iteration at a time:

* a **prefill** iteration runs, in one padded forward pass, the prompts of every request that
  arrived since the last prefill (oldest first, at most ``max_prefill_tokens`` padded tokens);
  each gets its first token and joins the running batch;
* a **decode** iteration gives every running request its next token in one forward pass.

The budget ``max_prefill_tokens`` holds per decode step: between two tokens of a running
request, prefills of at most that many padded tokens run, then a decode comes first. So
prompts that arrive while a step runs are prefilled together at the next step boundary,
without waiting for a decode of the requests that were just prefilled, and a burst of
arrivals never starves the running requests. A prompt longer than the budget is prefilled in
chunks of ``max_prefill_tokens`` tokens, one chunk between two decode steps (chunked prefill,
engines that are :attr:`~hubless_server.runtimes.generation.engine.StepEngine.chunked`: the
causal LMs; an encoder sees a whole text, so a BART text over the budget runs alone, whole);
requests behind it join its last chunk when they fit.

A request that finished (EOS or its ``max_new_tokens``) leaves in the same
iteration; one that was cancelled or whose deadline passed leaves at the start of the next:
either way its rows are cut out of the KV cache at once. Streams get their new text after
every iteration; unary requests their answer when they finish.

No request holds a thread: each iteration is one job in the inference pool that takes the
:class:`~hubless_server.inference.gate.InferenceGate` for its forward pass only, then hands the
results back to the event loop, so other models' batches interleave between steps; within a step the
pass offers the gate before every transformer block (:func:`.engine.yield_between_blocks`),
so another model's request waits for one block, not a whole step of 32 rows.

Limits: at most ``max_running`` requests run (or are being prefilled) at once, and together
at most ``max_kv_tokens`` padded KV positions (rows x the longest prompt + ``max_new_tokens``: the
memory a batch may grow to, reserved up front so nothing is ever preempted); a request alone
above the budget still runs, alone. Beyond the limits requests wait; more than ``max_queue``
waiting is :class:`~hubless_server.inference.batching.QueueFullError` (RESOURCE_EXHAUSTED).

Why our own step loop and not transformers' continuous batching manager
(``model.init_continuous_batching()`` / ``generate_batch``, 5.24; ``bench/eval_step_loop.py``,
``bench/README.md`` "Generation: the step loop"): for 8 chat prompts x 16 new tokens of the
full-size DialoGPT-medium stand-in on 2 shared cores, best of 5, this loop made 10.7 tokens/s
at 99 CPU-ms per token, the manager 8.4 at 116, batched ``generate`` 8.0 at 114 (an earlier,
noisier run: 20.1 / 9.9 / 7.2 tokens/s). The manager also samples from one global seed (a
seeded request's text would depend on its companions), runs its own thread for its lifetime
outside the inference gate, serves decoder-only models only (not BART), and sizes its paged
cache from free memory (10 GB for those 8 requests).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from hubless_server.core.errors import ClosedError, ExpiredError, QueueFullError
from hubless_server.inference.gate import InferenceGate
from hubless_server.runtimes.base import GenerationOutput, Prepared, StreamPiece
from hubless_server.runtimes.generation.engine import StepEngine, yield_between_blocks
from hubless_server.runtimes.generation.sequence import Sequence as GenSequence
from hubless_server.runtimes.generation.sequence import TextDeltas

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationPolicy:
    """The step loop's limits (from ``--max-running-sequences``, ``--max-kv-tokens``,
    ``--max-queue`` and ``--max-batch-tokens`` for a prefill)."""

    max_running: int = 32
    max_kv_tokens: int = 16384
    max_queue: int = 1024
    max_prefill_tokens: int = 8192


class GenerationObserver:
    """Receives the step loop's figures (the server wires Prometheus in); no-ops here."""

    def first_token(self, model: str, seconds: float) -> None:
        return None

    def generated(self, model: str, tokens: int) -> None:
        return None

    def running(self, model: str, sequences: int) -> None:
        return None

    def dropped(self, model: str, reason: str, count: int) -> None:
        return None


@dataclass(eq=False)
class _Request:
    prepared: Prepared[Any]
    seq: GenSequence
    deadline: float | None  # loop.time() based
    arrived: float  # perf_counter
    future: asyncio.Future[GenerationOutput] | None = None  # unary
    pieces: asyncio.Queue[StreamPiece | BaseException] | None = None  # stream
    deltas: TextDeltas | None = None
    cancelled: bool = False
    answered: bool = False  # got its first token

    @property
    def gone(self) -> bool:
        """The caller no longer waits (stream closed, unary future cancelled)."""
        return self.cancelled or (self.future is not None and self.future.done())

    def fail(self, exc: BaseException) -> None:
        if self.future is not None:
            if not self.future.done():
                self.future.set_exception(exc)
        elif self.pieces is not None and not self.cancelled:
            self.pieces.put_nowait(exc)


@dataclass
class _Prefill:
    """One prefill iteration's plan: the requests (the pending ones first) and the prompt
    tokens each runs (None: all that remain)."""

    group: list[_Request]
    width: int | None
    cost: int  # padded prompt tokens


@dataclass
class _Result:
    """What one iteration produced for one request (computed in the worker thread)."""

    request: _Request
    new_tokens: int
    piece: StreamPiece | None = None
    output: GenerationOutput | None = None


@dataclass
class GenerationScheduler:
    """The queue and step loop of one generation model."""

    name: str
    engine: StepEngine
    policy: GenerationPolicy
    executor: Executor  # runs one iteration at a time
    gate: InferenceGate
    observer: Any = field(default_factory=GenerationObserver)

    def __post_init__(self) -> None:
        self._waiting: collections.deque[_Request] = collections.deque()
        self._running: list[_Request] = []
        self._prefilling: list[_Request] = []  # prompts prefilled in part (chunked)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._spent = 0  # padded prompt tokens prefilled since the running rows' last decode
        self.iterations = 0
        if hasattr(self.gate, "yield_point"):
            yield_between_blocks(self.engine.model, self.gate)

    # ---- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"generation-{self.name}"
            )

    async def close(self) -> None:
        """Fail waiting and running requests with ``ClosedError``; stop the loop."""
        self._closed = True
        for request in [*self._waiting, *self._prefilling, *self._running]:
            request.fail(ClosedError("the server is shutting down"))
        self._waiting.clear()
        self._running, self._prefilling = [], []
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Requests admitted: generating, or with their prompt being prefilled."""
        return len(self._running) + len(self._prefilling)

    def accepts(self, prepared: Prepared[Any]) -> bool:
        """Whether this item is generated on the step loop (else the batch queue runs it)."""
        return self.engine.accepts(prepared)

    # ---- requests -------------------------------------------------------------------

    def _admit(
        self, prepared: Sequence[Prepared[Any]], deadline: float | None, stream: bool
    ) -> list[_Request]:
        if self._closed:
            raise ClosedError("the server is shutting down")
        loop = asyncio.get_running_loop()
        self._purge(loop.time())
        depth = len(self._waiting)
        if depth + len(prepared) > self.policy.max_queue:
            self.observer.dropped(self.name, "queue_full", len(prepared))
            raise QueueFullError(self.name, depth, self.policy.max_queue, len(prepared))
        now = time.perf_counter()
        requests = []
        for p in prepared:
            request = _Request(p, self.engine.sequence(p), deadline, now)
            if stream:
                request.pieces = asyncio.Queue()
                request.deltas = TextDeltas()
            else:
                request.future = loop.create_future()
            requests.append(request)
        self._waiting.extend(requests)
        self._wake.set()
        return requests

    async def submit(
        self, prepared: Sequence[Prepared[Any]], deadline: float | None = None
    ) -> list[GenerationOutput]:
        """Generate every item (all-or-nothing admission); answers in order."""
        if not prepared:
            return []
        requests = self._admit(prepared, deadline, stream=False)
        futures = [r.future for r in requests if r.future is not None]
        try:
            return list(await asyncio.gather(*futures))
        except BaseException:
            for future in futures:
                if not future.done():
                    future.cancel()
            raise

    async def stream(
        self, prepared: Prepared[Any], deadline: float | None = None
    ) -> AsyncIterator[StreamPiece]:
        """The item's text piece by piece; the last piece is ``final``. Closing the iterator
        (client gone) makes the request leave the batch at the next step."""
        (request,) = self._admit([prepared], deadline, stream=True)
        assert request.pieces is not None
        try:
            while True:
                piece = await request.pieces.get()
                if isinstance(piece, BaseException):
                    raise piece
                yield piece
                if piece.final:
                    return
        finally:
            request.cancelled = True

    # ---- the step loop --------------------------------------------------------------

    def _purge(self, now: float) -> None:
        """Drop waiting requests that were cancelled or expired (those fail)."""
        if not self._waiting:
            return
        keep: collections.deque[_Request] = collections.deque()
        cancelled = expired = 0
        for request in self._waiting:
            if request.gone:
                cancelled += 1
            elif request.deadline is not None and request.deadline <= now:
                request.fail(_expired())
                expired += 1
            else:
                keep.append(request)
        self._waiting = keep
        if cancelled:
            self.observer.dropped(self.name, "cancelled", cancelled)
        if expired:
            self.observer.dropped(self.name, "expired", expired)

    def _leaving(self, now: float) -> list[_Request]:
        """Running requests to cut out: cancelled, or past their deadline (those fail)."""
        leaving = []
        for request in [*self._prefilling, *self._running]:
            if request.gone:
                self.observer.dropped(self.name, "cancelled", 1)
                leaving.append(request)
            elif request.deadline is not None and request.deadline <= now:
                request.fail(_expired())
                self.observer.dropped(self.name, "expired", 1)
                leaving.append(request)
        return leaving

    def _joining(self, staying: list[_Request], group: list[_Request], budget: int) -> int:
        """How many waiting requests (oldest first, never skipping the oldest) join a prefill
        of ``group`` (the pending ones) beside the ``staying`` running ones: within the
        running and KV limits, and ``budget`` padded tokens once the group is not empty."""
        policy = self.policy
        count = 0
        longest = max((r.seq.unprefilled for r in group), default=0)
        for head in self._waiting:
            rows = len(group) + count
            if len(staying) + rows >= policy.max_running:
                break
            if staying or rows:
                seqs = [r.seq for r in (*staying, *group, head)]
                seqs += [r.seq for r in itertools.islice(self._waiting, count)]
                if self.engine.kv_cost(seqs) > policy.max_kv_tokens:
                    break
                if rows and max(longest, head.seq.unprefilled) * (rows + 1) > budget:
                    break
            longest = max(longest, head.seq.unprefilled)
            count += 1
        return count

    def _plan(self, staying: list[_Request]) -> _Prefill | None:
        """The prefill to run now, or None: decode (or idle). Prefills run while the padded
        tokens they add since the running rows' last decode fit ``max_prefill_tokens``; a
        prompt over the budget alone is cut into chunks of the budget (chunked engines)."""
        partial = self._prefilling
        if not partial and not self._waiting:
            return None
        budget = self.policy.max_prefill_tokens
        spent = self._spent if staying else 0
        count = self._joining(staying, partial, budget - spent)
        group = [*partial, *itertools.islice(self._waiting, count)]
        if not group:  # the running or KV limits are full
            return None
        longest = max(r.seq.unprefilled for r in group)
        cost = longest * len(group)
        width: int | None = None
        if cost > budget - spent:
            if spent:  # the running rows decode first
                return None
            if len(group) == 1 and self.engine.chunked:
                width = budget
                cost = budget
        for _ in range(count):
            self._waiting.popleft()
        self._prefilling = group
        return _Prefill(group, width, cost)

    async def _run(self) -> None:
        while True:
            if not self._running and not self._waiting and not self._prefilling:
                self._wake.clear()
                await self._wake.wait()
            try:
                await self._iteration()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug here must not stop the model's step loop
                log.exception("generation loop error", extra={"fields": {"model": self.name}})
                failed = [*self._running, *self._prefilling, *self._waiting]
                for request in failed:
                    request.fail(exc)
                self._running, self._prefilling, self._waiting = [], [], collections.deque()
                self._spent = 0
                engine = self.engine
                with contextlib.suppress(Exception):
                    await asyncio.get_running_loop().run_in_executor(
                        self.executor, engine.release, [*engine.rows, *engine.pending]
                    )

    async def _iteration(self) -> None:
        """Admit, run one job, deliver its results."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._purge(now)
        leaving = self._leaving(now)
        staying = [r for r in self._running if r not in leaving]
        self._running = staying
        self._prefilling = [r for r in self._prefilling if r not in leaving]
        prefill = self._plan(staying)
        gone = [r.seq for r in leaving]
        if prefill is None and not staying:
            if gone:  # free their cache now, not when the next request comes
                await self._job(gone, None)
            self.observer.running(self.name, self.running)
            self._spent = 0
            return
        if prefill is None or not staying:  # a decode, or nobody waits for one
            self._spent = 0
        if prefill is not None and staying:
            self._spent += prefill.cost
        results = await self._job(gone, prefill)
        if prefill is not None:
            group = prefill.group
            self._prefilling = [r for r in group if not r.seq.tokens and not r.seq.done]
            self._running = staying + [r for r in group if r.seq.tokens]
        self._deliver(results)
        self._running = [r for r in self._running if not r.seq.done]
        self.observer.running(self.name, self.running)

    async def _job(self, leaving: list[GenSequence], prefill: _Prefill | None) -> list[_Result]:
        """One iteration in the inference pool (a prefill, else a decode of the running
        requests when there are any); failures fail the requests it touched."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.executor, self._iterate, leaving, prefill)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            touched = prefill.group if prefill is not None else self._running
            log.exception(
                "generation step failed",
                extra={"fields": {"model": self.name, "requests": len(touched)}},
            )
            for request in touched:
                request.fail(exc)
                request.seq.finished = True  # leaves: done
            with contextlib.suppress(Exception):
                await loop.run_in_executor(
                    self.executor, self.engine.release, [r.seq for r in touched]
                )
            return []

    def _iterate(self, leaving: list[GenSequence], prefill: _Prefill | None) -> list[_Result]:
        """Worker thread: release, then one forward pass (prefill or decode) under the gate,
        then cut out what finished and build the answers and stream pieces."""
        engine = self.engine
        if leaving:
            engine.release(leaving)
        if prefill is not None:
            self.iterations += 1
            seqs = [r.seq for r in prefill.group]
            if prefill.width is None:
                self.gate.run(engine.prefill, seqs)
            else:
                self.gate.run(engine.prefill, seqs, prefill.width)
            stepped = [r for r in prefill.group if r.seq.tokens]  # prompts complete
        elif self._running:
            self.iterations += 1
            self.gate.run(engine.decode)
            stepped = list(self._running)
        else:
            return []
        finished = [r.seq for r in stepped if r.seq.done]
        if finished:
            engine.release(finished)
        return [self._result(r) for r in stepped]

    def _result(self, request: _Request) -> _Result:
        seq = request.seq
        result = _Result(request, 1)
        if request.pieces is not None and request.deltas is not None and not request.cancelled:
            text = self.engine.text(seq)
            if seq.done:
                output = self.engine.output(request.prepared, seq)
                result.piece = StreamPiece(
                    request.deltas.finish(text),
                    final=True,
                    tokens=output.tokens,
                    finished=output.finished,
                    truncated=output.truncated,
                )
            else:
                piece = request.deltas.push(text)
                if piece:
                    result.piece = StreamPiece(piece, tokens=len(seq.tokens))
        elif seq.done and not request.gone:
            result.output = self.engine.output(request.prepared, seq)
        return result

    def _deliver(self, results: list[_Result]) -> None:
        now = time.perf_counter()
        tokens = 0
        for result in results:
            request = result.request
            tokens += result.new_tokens
            if not request.answered:
                request.answered = True
                self.observer.first_token(self.name, now - request.arrived)
            if request.gone:
                continue
            if result.piece is not None and request.pieces is not None:
                request.pieces.put_nowait(result.piece)
            if result.output is not None and request.future is not None:
                request.future.set_result(result.output)
        if tokens:
            self.observer.generated(self.name, tokens)


def _expired() -> Exception:
    return ExpiredError("deadline passed while generating")
