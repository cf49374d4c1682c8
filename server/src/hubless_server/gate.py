"""The inference gate: how many forward passes run at once, across all models."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class InferenceGate:
    """A counting semaphore around blocking inference calls (``--inference-concurrency``).

    With the default of one permit, one forward pass (or one generation step) runs at a time
    in the whole process: torch already spreads a pass over every core (intra-op threads),
    so two passes at once on a few cores only thrash caches and double each other's latency.
    """

    def __init__(self, permits: int = 1) -> None:
        self._sem = threading.BoundedSemaphore(permits)

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        with self._sem:
            return fn(*args)
