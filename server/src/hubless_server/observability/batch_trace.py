"""Tracing hooks of the batching core, free of any tracing library.

:class:`~hubless_server.inference.batching.Batcher` reports what happens to queued items through a
:class:`BatchTracer`, the way it reports figures through its ``BatchObserver``: the core
imports neither gRPC nor OpenTelemetry. :class:`NullTracer` (the default) records nothing;
``hubless_server.observability.tracing`` implements the protocol with OpenTelemetry spans when
tracing is on:

- ``queue wait``: one span per request and batch, from the moment the request's items were
  queued until the batch that took them started (child of the request's span);
- ``batch``: one span per executed batch, a child of the oldest request in it and linked to
  every other request's span (a batch serves many traces);
- ``predict``: the runtime's forward pass inside the batch span, once the inference gate is
  held (the batch span also covers the wait for the gate).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class BatchSpan(Protocol):
    """One batch being executed."""

    def wrap(self, fn: Callable[..., T]) -> Callable[..., T]:
        """``fn`` (the runtime's predict) run inside a ``predict`` span; called in a worker
        thread, so the span's parent is explicit, never the thread's current context."""
        ...

    def end(self, error: BaseException | None = None) -> None:
        """The batch finished (``error``: it failed)."""
        ...


class BatchTracer(Protocol):
    """Receives the batching events that make spans."""

    def capture(self) -> Any:
        """The caller's trace context, taken on the request's task when its items are queued;
        None when the request is not traced."""
        ...

    def queued(self, model: str, parent: Any, items: int, start_ns: int, end_ns: int) -> None:
        """``items`` of the request traced by ``parent`` waited from ``start_ns`` to
        ``end_ns`` (wall clock, ns) for the batch that took them."""
        ...

    def batch(self, model: str, parents: Sequence[Any], size: int, padded_tokens: int) -> BatchSpan:
        """A batch of ``size`` items starts; ``parents`` are the traced requests in it,
        oldest first."""
        ...


class _NullSpan:
    def wrap(self, fn: Callable[..., T]) -> Callable[..., T]:
        return fn

    def end(self, error: BaseException | None = None) -> None:
        return None


_NULL_SPAN = _NullSpan()


class NullTracer:
    """Tracing off: nothing is captured, no span is made."""

    def capture(self) -> Any:
        return None

    def queued(self, model: str, parent: Any, items: int, start_ns: int, end_ns: int) -> None:
        return None

    def batch(self, model: str, parents: Sequence[Any], size: int, padded_tokens: int) -> BatchSpan:
        return _NULL_SPAN


class _Queued(Protocol):
    trace: Any
    enqueued: float
    enqueued_ns: int


def report_queue_wait(
    tracer: BatchTracer,
    queue_wait: Callable[[str, float], None],
    model: str,
    entries: Sequence[_Queued],
    now: float,
    now_ns: int,
) -> list[Any]:
    """A batch of ``entries`` starts at ``now`` (``loop.time()``) / ``now_ns`` (wall clock):
    each item's wait goes to ``queue_wait(model, seconds)`` (the metric), and each traced
    request gets one queue-wait span for its items in this batch. Returns the requests'
    trace contexts, oldest first (the batch span's parents)."""
    requests: dict[int, tuple[Any, int, int]] = {}
    for entry in entries:
        queue_wait(model, max(0.0, now - entry.enqueued))
        if entry.trace is None:
            continue
        key = id(entry.trace)
        _, count, start = requests.get(key, (entry.trace, 0, entry.enqueued_ns))
        requests[key] = (entry.trace, count + 1, min(start, entry.enqueued_ns))
    ordered = sorted(requests.values(), key=lambda request: request[2])
    for parent, count, start in ordered:
        tracer.queued(model, parent, count, start, now_ns)
    return [parent for parent, _, _ in ordered]
