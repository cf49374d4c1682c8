"""File descriptors: the open-files limit raised at start, and the event loop's error reports
rate-limited.

Each connection, to any port, holds a descriptor; a container's usual soft limit (1024) is
often far below its hard limit. :func:`raise_open_files_limit` lifts the soft limit to the
hard one when ``hubless-serve`` starts, and the start log says what it is (the HTTP door
sizes its connection cap from it). When descriptors run out anyway, asyncio reports every
failed ``accept`` through the loop's exception handler with a traceback;
:class:`LoopErrorThrottle` lets one report per message through per :data:`WINDOW_S`
seconds, the next one saying how many were held back, so running out of descriptors cannot
also fill the disk with log.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WINDOW_S = 60.0
NR_OPEN = Path("/proc/sys/fs/nr_open")


def raise_open_files_limit() -> tuple[int, int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (``fs.nr_open`` when the hard limit is
    unlimited); (soft before, soft now, hard). A refusal leaves the limit as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            target = int(NR_OPEN.read_text().strip())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, exc)
            return soft, soft, hard
        return soft, target, hard
    return soft, soft, hard


class LoopErrorThrottle:
    """An event-loop exception handler: one report per message per ``window_s`` (with its
    traceback), handed to the handler it replaced; the rest only counted."""

    def __init__(
        self,
        previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.previous = previous
        self.window_s = window_s
        self._clock = clock
        self._seen: dict[str, tuple[float, int]] = {}

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))[:200]
        exc = context.get("exception")
        key = f"{message}|{type(exc).__name__ if exc is not None else ''}"
        now = self._clock()
        last, held = self._seen.get(key, (-self.window_s, 0))
        if now - last < self.window_s:
            self._seen[key] = (last, held + 1)
            return
        if len(self._seen) > 256:
            self._seen.clear()
        self._seen[key] = (now, 0)
        if held:
            context = {**context, "message": f"{message} ({held} more in the last minute)"}
        if self.previous is not None:
            self.previous(loop, context)
        else:
            loop.default_exception_handler(context)


def throttle_loop_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Install :class:`LoopErrorThrottle` on ``loop`` (once)."""
    current = loop.get_exception_handler()
    if isinstance(current, LoopErrorThrottle):
        return
    loop.set_exception_handler(LoopErrorThrottle(current))
