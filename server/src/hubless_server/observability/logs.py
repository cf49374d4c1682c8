"""Structured logging: ``text`` (key=value) or ``json`` (one object per line).

The formats are the volume distribution's (:mod:`hubless_volume.logfmt`), shared with
``hubless-fetch``: one log pipeline rule parses every hubless container. Structured fields go
in ``extra={"fields": {...}}``; both formats print them.
"""

from __future__ import annotations

import logging
import sys

from hubless_volume.logfmt import JsonFormatter, TextFormatter, formatter

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging"]


def configure_logging(fmt: str = "text", level: str = "INFO") -> None:
    """Send every log record to stderr in ``fmt``; replaces existing root handlers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
