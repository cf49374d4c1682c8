"""Run a runtime's blocking ``stream`` generator in a thread and hand its pieces to the
event loop through an asyncio queue.

Each step of the generator runs under the :class:`~hubless_server.inference.gate.InferenceGate`, so
a long generation interleaves piece by piece with other models' batches instead of holding
the cores for its whole length. Closing the async iterator (client cancelled, deadline,
error) sets the ``cancelled`` event: the runtime stops at its next step and the thread ends.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from typing import Any

from hubless_server.inference.gate import InferenceGate
from hubless_server.runtimes.base import ModelRuntime, Prepared, StreamPiece

log = logging.getLogger(__name__)

_END = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


async def stream_pieces(
    runtime: ModelRuntime[Any, Any],
    prepared: Prepared[Any],
    executor: Executor,
    gate: InferenceGate,
) -> AsyncIterator[StreamPiece]:
    """Yield the runtime's pieces as they are produced, without blocking the loop."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    cancelled = threading.Event()

    def post(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # loop already closed: nobody is listening any more
            cancelled.set()

    def produce() -> None:
        iterator = None
        try:
            iterator = iter(runtime.stream(prepared, cancelled))
            while not cancelled.is_set():
                piece = gate.run(next, iterator, _END)
                if piece is _END:
                    break
                post(piece)
        except BaseException as exc:
            post(_Failure(exc))
        finally:
            if iterator is not None and hasattr(iterator, "close"):
                try:
                    iterator.close()
                except Exception:
                    log.debug("closing the stream generator failed", exc_info=True)
            post(_END)

    worker = loop.run_in_executor(executor, produce)
    try:
        while True:
            item = await queue.get()
            if item is _END:
                break
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        cancelled.set()
        del worker  # the thread ends at the runtime's next step; nothing waits for it
