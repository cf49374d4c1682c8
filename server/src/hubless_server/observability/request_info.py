"""What the services tell the access log about a request: the model that answered it and
its number of items. The access-log interceptor sets an :class:`AccessInfo` for the RPC in a
context variable; :func:`note` fills it from wherever the request is served (no import of
the transport needed: this module sits at the bottom of the server's layers)."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass


@dataclass
class AccessInfo:
    model: str = ""
    items: int = 0
    caller: str = "-"


CURRENT: contextvars.ContextVar[AccessInfo | None] = contextvars.ContextVar(
    "hubless_access", default=None
)


def note(model: str | None = None, items: int | None = None) -> None:
    """Record the answering model and the request's item count for the access log."""
    info = CURRENT.get()
    if info is None:
        return
    if model is not None:
        info.model = model
    if items is not None:
        info.items = items
