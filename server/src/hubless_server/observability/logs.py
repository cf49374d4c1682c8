"""Structured logging: ``text`` (key=value) or ``json`` (one object per line).

Structured fields go in ``extra={"fields": {...}}``; both formats print them.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_stamp: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text


def _timestamp(created: float) -> str:
    """``2026-11-25T13:00:00``: strftime once per second, not once per line (every RPC
    writes an access line)."""
    global _stamp
    stamp, second = _stamp, int(created)
    if stamp[0] != second:
        stamp = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        _stamp = stamp
    return stamp[1]


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    extra = getattr(record, "fields", None)
    return dict(extra) if isinstance(extra, dict) else {}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, the fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": _timestamp(record.created) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        data.update(_fields(record))
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``2026-11-25T13:00:00.000Z INFO hubless_server.x message key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        ts = _timestamp(record.created)
        line = (
            f"{ts}.{int(record.msecs):03d}Z {record.levelname} {record.name} {record.getMessage()}"
        )
        extra = _fields(record)
        if extra:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in extra.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text_value(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c in text for c in ' ="')) else text


def configure_logging(fmt: str = "text", level: str = "INFO") -> None:
    """Send every log record to stderr in ``fmt``; replaces existing root handlers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
