"""A hang guard for tests of reads that must never block (a FIFO where a file should be)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def soon(call: Callable[[], Any]) -> Any:
    """``call()`` in a thread; a hang guard (the test fails instead of blocking the suite).

    Returns what ``call`` returns and raises what it raises."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "the read blocked"
    if "error" in box:
        raise box["error"]
    return box["value"]
