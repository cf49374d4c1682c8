"""Scripted misbehaviour of the fake hub itself, and the record of every request it served.

:meth:`hubless_fakehub.HubMirror.add_fault` creates a :class:`Fault`; the request handler asks
the mirror for the first live fault matching each request and applies it (delay, error status,
truncated or corrupted body). :class:`RequestRecord` is what ``HubMirror.requests`` holds.

For faults on the wire between a client and any upstream (cut connections, dripping bytes),
see :mod:`hubless_fakehub.proxy`.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field


@dataclass
class Fault:
    """A scripted misbehaviour for matching requests; see :meth:`HubMirror.add_fault`."""

    repo_id: str | None = None
    path: str | None = None
    api: bool = False
    method: str | None = None
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    truncate_after: int | None = None
    corrupt: bool = False
    delay: float = 0.0
    times: int | None = 1
    hits: int = 0

    def matches(self, *, api: bool, repo_id: str | None, path: str | None, method: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if api != self.api or (self.method and self.method != method):
            return False
        if self.repo_id is not None and self.repo_id != repo_id:
            return False
        return self.path is None or (path is not None and fnmatch.fnmatchcase(path, self.path))


@dataclass(frozen=True)
class RequestRecord:
    """One request the mirror answered."""

    method: str
    url: str
    status: int
    repo_id: str | None = None
    revision: str | None = None
    file: str | None = None
    range: str | None = None
    authorization: str | None = None
