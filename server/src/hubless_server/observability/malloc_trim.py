"""Give the memory that glibc's malloc keeps after ``free`` back to the system.

Why: the server's anonymous memory (RssAnon) grew with traffic and did not level off, and
most of that growth was *freed* memory the allocator kept. Every batch allocates its
tensors, tokeniser buffers and oneDNN scratch in sizes that depend on the batch's shape, so
the heap fragments: a free block that is not at the top of its heap (or arena) is not
returned, and above the mmap threshold glibc raises that threshold after each large
``free``, so the next large tensors come from the heap too. ``malloc_trim(0)`` walks every
arena and hands the free pages back (``MADV_DONTNEED``); what is in use stays.

Measured with ``bench/memory_growth.py`` (a real ``hubless-serve``, the soak's models, 50
clients, calls of 1 to 8 texts of 1 to 6 sentences, bf16 under autocast, 2 shared cores):
without trims RssAnon went 1,691 -> 2,440 MiB from 1,000 to 8,000 calls, and one
``malloc_trim(0)`` (from gdb) then brought it to 1,240. ``MALLOC_ARENA_MAX=2`` changed nothing
(2,068 MiB after 8,000 calls against 2,160): fragmentation, not the number of arenas. With a
trim every 2 s: 1,154 -> 1,749 MiB over the same calls, and in interleaved runs a mean of
1,246 against 1,747 MiB for +5 % server CPU per call (the trims, 17-51 ms each, and the page
faults of reusing what they gave back). A fixed mmap threshold instead left nothing to trim but
cost +70 % CPU per call. docs/operations.md ("Memory") has all the figures.

What stays after a trim in bf16 is live and bounded: oneDNN's primitive cache and PyTorch's
(ideep) kernel cache, one JIT-compiled kernel per operation shape, at most 1,024 each
(``ONEDNN_PRIMITIVE_CACHE_CAPACITY``, ``LRU_CACHE_CAPACITY``); with both off, and nothing to
trim, 5,000 calls left RssAnon within 15 MiB.

:class:`MallocTrimmer` checks RssAnon (``/proc/self/status``) every ``interval_s`` seconds
and calls ``malloc_trim(0)`` in a worker thread when it grew by :data:`MIN_GROWTH_BYTES` since
the last trim, so an idle server does nothing. Without glibc (musl, macOS) it is off.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hubless_server.observability import metrics

log = logging.getLogger(__name__)

MIN_GROWTH_BYTES = 32 * 1024 * 1024
"""Trim only once RssAnon grew by this much since the last trim (or start)."""

STATUS = Path("/proc/self/status")


def rss_anon_bytes(status: Path = STATUS) -> int | None:
    """This process's anonymous resident memory, or None where ``/proc`` does not say."""
    try:
        for line in status.read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def glibc_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None when the C library is not glibc."""
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        gnu_get_libc_version = libc.gnu_get_libc_version  # glibc only
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    gnu_get_libc_version.restype = ctypes.c_char_p
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


class MallocTrimmer:
    """Every ``interval_s`` seconds: ``malloc_trim(0)`` if RssAnon grew by ``min_growth``."""

    def __init__(
        self,
        interval_s: float,
        *,
        min_growth: int = MIN_GROWTH_BYTES,
        trim: Callable[[int], int] | None = None,
        rss_anon: Callable[[], int | None] = rss_anon_bytes,
    ) -> None:
        self.interval_s = interval_s
        self.min_growth = min_growth
        self._trim = trim if trim is not None else glibc_malloc_trim()
        self._rss_anon = rss_anon
        self._floor: int | None = None
        self._task: asyncio.Task[None] | None = None
        self.trims = 0
        self.released = 0

    @property
    def available(self) -> bool:
        return self._trim is not None and self._rss_anon() is not None

    def start(self) -> None:
        """Start the periodic check on the running loop (a no-op when off or unavailable)."""
        if self.interval_s <= 0 or self._task is not None:
            return
        if not self.available:
            log.info("malloc_trim is not available here (not glibc, or no /proc): not trimming")
            return
        self._floor = self._rss_anon()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="hubless-trim")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check()
            except Exception:  # never end the loop over a failed check
                log.exception("malloc_trim check failed")

    async def check(self) -> bool:
        """Trim now if RssAnon grew enough since the last trim; True when it trimmed."""
        anon = self._rss_anon()
        if anon is None:
            return False
        if self._floor is None or anon < self._floor:
            self._floor = anon  # it shrank by itself: measure growth from here
        if anon - self._floor < self.min_growth:
            return False
        self._floor = await asyncio.to_thread(self.trim_now)
        return True

    def trim_now(self) -> int:
        """``malloc_trim(0)`` now (blocking: call it off the event loop); RssAnon after."""
        assert self._trim is not None
        before = self._rss_anon() or 0
        started = time.perf_counter()
        self._trim(0)
        seconds = time.perf_counter() - started
        after = self._rss_anon() or 0
        released = max(0, before - after)
        self.trims += 1
        self.released += released
        metrics.MALLOC_TRIM_SECONDS.observe(seconds)
        metrics.MALLOC_TRIM_RELEASED.inc(released)
        log.debug(
            "malloc_trim released %.0f MiB in %.1f ms",
            released / 2**20,
            seconds * 1e3,
            extra={"fields": _fields(before, after, seconds)},
        )
        return after


def _fields(before: int, after: int, seconds: float) -> dict[str, Any]:
    return {
        "rss_anon_before_mib": round(before / 2**20, 1),
        "rss_anon_after_mib": round(after / 2**20, 1),
        "ms": round(seconds * 1e3, 2),
    }
