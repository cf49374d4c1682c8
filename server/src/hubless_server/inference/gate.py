"""The inference gate: how many forward passes run at once, across all models."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class InferenceGate:
    """A first-come, first-served counting semaphore around blocking inference calls
    (``--inference-concurrency``).

    With the default of one permit, one forward pass (or one generation step) runs at a time
    in the whole process: torch already spreads a pass over every core (intra-op threads),
    so two passes at once on a few cores only thrash caches and double each other's latency.

    Permits go in arrival order (a thread that releases and asks again queues behind those
    already waiting). A long pass can offer its permit between layers with
    :meth:`yield_point`: the generation step loop hooks it before every transformer block of
    its models (:func:`hubless_server.runtimes.generation.engine.yield_between_blocks`), so a
    request
    of another model waits for one block of a decode step, not the whole step. Measured on 2
    shared cores with 100 open DialoGPT-medium streams (32 decoding, 24 blocks per step): an
    Embed waited for the whole step without it (p50 13 ms idle, 613 ms with the streams).
    """

    def __init__(self, permits: int = 1) -> None:
        self._cond = threading.Condition()
        self._free = permits
        self._queue: collections.deque[object] = collections.deque()
        self._held = threading.local()

    def _acquire(self) -> None:
        with self._cond:
            ticket = object()
            self._queue.append(ticket)
            while self._queue[0] is not ticket or self._free == 0:
                self._cond.wait()
            self._queue.popleft()
            self._free -= 1
            if self._queue and self._free:
                self._cond.notify_all()

    def _release(self) -> None:
        with self._cond:
            self._free += 1
            self._cond.notify_all()

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        self._acquire()
        self._held.depth = getattr(self._held, "depth", 0) + 1
        try:
            return fn(*args)
        finally:
            self._held.depth -= 1
            self._release()

    @property
    def waiting(self) -> int:
        """Threads waiting for a permit."""
        return len(self._queue)

    def yield_point(self) -> None:
        """Inside :meth:`run`: if another thread waits, let it go first, then carry on.
        Anywhere else: nothing."""
        if getattr(self._held, "depth", 0) != 1 or not self._queue:
            return
        self._release()
        self._acquire()
