"""Credentials never reach a message: the one redaction helper.

``HF_ENDPOINT`` may carry credentials (``http://user:token@mirror``, or a query such as
``?token=...``), and errors from HTTP libraries may quote the URL they failed on. Every
message that shows an endpoint or a URL goes through :func:`redact` (``Settings.endpoint_shown``
is the endpoint already redacted), and the CLI's log handler redacts every line it writes
(:class:`RedactingFilter`) as a last line of defence. ``HF_TOKEN`` itself is never formatted
into a message; the filter removes its value too should a library quote it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

MASK = "***"

# scheme://userinfo@ -> scheme://***@ (userinfo ends at the last "@" before the host's end)
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s?#]*@)")
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&;](?:[A-Za-z0-9_.-]*(?:token|key|secret|password|passwd|pwd|sig|signature|"
    r"credential|auth|authorization|session))=)"
    r"(?P<value>[^&;#\s'\"]*?)(?=[:,.)]?(?:[&;#\s'\"]|$))",
    re.IGNORECASE,
)
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{8,}\b")


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with the userinfo of every URL, secret-looking query values (``token=``,
    ``sig=``, ``X-Amz-Signature=``, ...), Hugging Face tokens (``hf_...``) and the given
    ``secrets`` replaced by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, MASK)
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    text = _SECRET_QUERY.sub(lambda m: f"{m['key']}{MASK}", text)
    return _HF_TOKEN.sub(f"hf_{MASK}", text)


class RedactingFilter(logging.Filter):
    """Rewrites each log record's message through :func:`redact` (``secrets`` added with
    :meth:`add_secret`, e.g. the ``HF_TOKEN`` value once the settings are read)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def add_secret(self, secret: str | None) -> None:
        if secret:
            self.secrets.add(secret)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message, self.secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_text is None and record.exc_info[1] is not None:
            record.exc_text = redact(
                logging.Formatter().formatException(record.exc_info), self.secrets
            )
        return True
