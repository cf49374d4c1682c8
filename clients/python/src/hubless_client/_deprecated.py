"""Deprecated method names kept as aliases: each warns once per process, then calls the new
method (so a subclass overriding the new name is honoured)."""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

#: The old names, as ``Class.old``, that have warned already.
_warned: set[str] = set()
_lock = threading.Lock()

#: The old method names of both clients and their new ones.
RENAMED = {
    "emotion": "detect_emotion",
    "sentiment": "analyze_sentiment",
    "zero_shot": "classify_zero_shot",
    "reply_stream": "stream_reply",
    "models": "list_models",
    "model": "get_model",
}


def _warn_once(cls: str, old: str, new: str) -> None:
    key = f"{cls}.{old}"
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(
        f"{cls}.{old}() is deprecated and will be removed; use {cls}.{new}()",
        DeprecationWarning,
        stacklevel=3,
    )


def alias(new: Callable[P, R], old: str) -> Callable[P, R]:
    """A deprecated method ``old`` that warns (once) and calls ``self.<new>``."""
    name = new.__name__

    @functools.wraps(new)
    def deprecated(self: Any, *args: Any, **kwargs: Any) -> Any:
        _warn_once(type(self).__name__, old, name)
        return getattr(self, name)(*args, **kwargs)

    deprecated.__name__ = old
    deprecated.__qualname__ = new.__qualname__.rsplit(".", 1)[0] + "." + old
    deprecated.__doc__ = f"Deprecated alias of :meth:`{name}` (warns once)."
    return deprecated  # type: ignore[return-value]


def reset() -> None:
    """Forget which aliases warned (for tests)."""
    with _lock:
        _warned.clear()
