"""Log line formats shared by hubless's programs: ``text`` and ``json`` (one object per line).

Both images install this distribution, so a format defined here is the same in the fetcher's
and the server's logs: a log pipeline parses every hubless container with one rule. Standard
library only, like the rest of :mod:`hubless_volume`.

- ``json``: ``{"ts": "2026-12-08T01:02:03.456Z", "level": "ERROR", "logger": "hubless_fetcher",
  "msg": "...", <fields>, "exc": "<traceback>"}``; ``ts`` is ISO-8601 in UTC with
  milliseconds; ``exc`` only when there is one.
- ``text``: ``2026-12-08T01:02:03.456Z ERROR hubless_fetcher message key=value ...``.

Structured fields come from ``extra={"fields": {...}}``; both formats print them. A filter that
has already rendered the traceback into ``record.exc_text`` (redacted, say) is respected.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

#: The formats :func:`formatter` knows, the first the default.
FORMATS = ("text", "json")

_stamp: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text


def timestamp(created: float, msecs: float) -> str:
    """``2026-12-08T01:02:03.456Z`` for a record's ``created`` and ``msecs``. strftime runs
    once per second, not once per line (a server writes a line per call)."""
    global _stamp
    stamp, second = _stamp, int(created)
    if stamp[0] != second:
        stamp = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        _stamp = stamp
    return f"{stamp[1]}.{int(msecs):03d}Z"


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's structured fields (``extra={"fields": {...}}``), or none."""
    extra = getattr(record, "fields", None)
    return dict(extra) if isinstance(extra, dict) else {}


def _traceback(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    if record.exc_text:
        return record.exc_text
    if record.exc_info:
        return formatter.formatException(record.exc_info)
    return None


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, the fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": timestamp(record.created, record.msecs),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        data.update(fields(record))
        exc = _traceback(self, record)
        if exc:
            data["exc"] = exc
        return json.dumps(data, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``2026-12-08T01:02:03.456Z INFO logger message key=value ...``, traceback below."""

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{timestamp(record.created, record.msecs)} {record.levelname} {record.name} "
            f"{record.getMessage()}"
        )
        extra = fields(record)
        if extra:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in extra.items())
        exc = _traceback(self, record)
        if exc:
            line += "\n" + exc
        return line


def _text_value(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c in text for c in ' ="')) else text


def formatter(fmt: str) -> logging.Formatter:
    """The formatter of ``fmt`` (one of :data:`FORMATS`); ``ValueError`` for another."""
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return TextFormatter()
    raise ValueError(f"unknown log format {fmt!r} (one of: {', '.join(FORMATS)})")
