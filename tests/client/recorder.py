"""What the fake server saw: requests, metadata, deadlines, overlapping requests, and
requests stopped early (tests.client.fake_server)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc


@dataclass
class Recorder:
    """What the fake saw: requests, metadata, deadlines (seconds left on arrival, ``None``
    for none), requests of a method in progress at once (``peak``) and slow requests that
    stopped early because the client cancelled them or their deadline passed."""

    metadata: dict[str, list[dict[str, str]]] = field(default_factory=lambda: defaultdict(list))
    requests: dict[str, list[object]] = field(default_factory=lambda: defaultdict(list))
    deadlines: dict[str, list[float | None]] = field(default_factory=lambda: defaultdict(list))
    attempts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    running: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    peak: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    stopped_early: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    stream_cancelled: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, method: str, request: object, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.requests[method].append(request)
            self.metadata[method].append(
                {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
            )
            self.deadlines[method].append(context.time_remaining())

    @contextmanager
    def track(self, method: str) -> Iterator[None]:
        """Count the requests of ``method`` in progress while the block runs."""
        with self.lock:
            self.running[method] += 1
            self.peak[method] = max(self.peak[method], self.running[method])
        try:
            yield
        finally:
            with self.lock:
                self.running[method] -= 1

    def sleep(self, method: str, seconds: float, context: grpc.ServicerContext) -> None:
        """Sleep, or stop as soon as the call is cancelled or its deadline passes."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if not context.is_active():
                with self.lock:
                    self.stopped_early[method] += 1
                return
            time.sleep(0.01)

    def texts(self, method: str) -> list[list[str]]:
        """The texts of each request of ``method``, in arrival order."""
        return [list(r.texts) for r in self.requests[method]]  # type: ignore[attr-defined]

    def reset(self) -> None:
        with self.lock:
            self.metadata.clear()
            self.requests.clear()
            self.deadlines.clear()
            self.attempts.clear()
            self.running.clear()
            self.peak.clear()
            self.stopped_early.clear()
            self.stream_cancelled.clear()
