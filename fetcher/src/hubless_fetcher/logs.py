"""The fetcher's log lines on stderr: ``text`` or ``json`` (``--log-format``,
``HUBLESS_LOG_FORMAT``), in the server's formats (:mod:`hubless_volume.logfmt`: ISO-8601 UTC
timestamps, the same JSON field names), so that a Job's logs parse like the server's.

On a terminal the text format stays short (level and message, no timestamp) and goes through
tqdm, so that it does not break the progress bars. Every line is redacted (credentials in URLs,
the token) by :class:`~hubless_fetcher.redact.RedactingFilter`, whatever the format.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from hubless_fetcher.redact import RedactingFilter
from hubless_fetcher.settings import ConfigError
from hubless_volume.logfmt import FORMATS, formatter

logger = logging.getLogger("hubless_fetcher")


def log_format(flag: str | None, env: dict[str, str]) -> str:
    """``--log-format`` if given, else ``HUBLESS_LOG_FORMAT``, else ``text``;
    :class:`ConfigError` for another value."""
    value = flag or (env.get("HUBLESS_LOG_FORMAT") or "").strip().lower() or FORMATS[0]
    if value not in FORMATS:
        raise ConfigError(f"HUBLESS_LOG_FORMAT={value!r}: one of {', '.join(FORMATS)}")
    return value


def setup_logging(level: int, fmt: str, tty: bool) -> RedactingFilter:
    """One handler on stderr for the ``hubless_fetcher`` loggers, in ``fmt``; returns its
    redacting filter, to which the CLI adds the ``HF_TOKEN`` value.

    The libraries' warnings (huggingface_hub, httpx, ``warnings.warn``) come out the same way:
    the same handler, at WARNING, becomes logging's last resort, which serves only records that
    no configured handler takes (so a process that set up its own logging keeps it), and the
    handler of Python's warnings."""
    redacting = RedactingFilter()
    handler = _handler(fmt, tty, redacting)
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    fallback = _handler(fmt, tty, redacting)
    fallback.setLevel(logging.WARNING)
    logging.lastResort = fallback
    warnings_logger = logging.getLogger("py.warnings")
    warnings_logger.handlers[:] = [fallback]
    warnings_logger.propagate = False
    logging.captureWarnings(True)
    return redacting


def _handler(fmt: str, tty: bool, redacting: RedactingFilter) -> logging.Handler:
    handler: logging.Handler = _TqdmHandler() if tty else _StderrHandler()
    if tty and fmt == "text":
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    else:
        handler.setFormatter(formatter(fmt))
    handler.addFilter(redacting)
    return handler


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to ``sys.stderr`` as it is when a record comes, not as it was when the handler
    was made (tests and embedding programs swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:  # StreamHandler.__init__ sets it
        pass


class _TqdmHandler(logging.Handler):
    """Log lines that do not break the progress bars on a terminal."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never raise
            self.handleError(record)
