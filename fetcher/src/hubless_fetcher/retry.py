"""Retry policy shared by metadata calls and file downloads (tenacity).

Exponential backoff with jitter; a 429/503 ``Retry-After`` is honoured (capped); connection
errors, resets and timeouts are retried; 401/403/404 are not (see :mod:`hubless_fetcher.remote`).
"""

from __future__ import annotations

import email.utils
import logging
import time
from typing import Any

import httpx
import tenacity

from hubless_fetcher.redact import redact
from hubless_fetcher.settings import Settings

logger = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class RetryableError(Exception):
    """A transient failure of one attempt (server busy, short read, bad bytes)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _transport_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [httpx.TransportError, ConnectionError, TimeoutError]
    try:  # huggingface_hub talks through httpx2
        import httpx2

        errors.append(httpx2.TransportError)
    except ImportError:  # pragma: no cover - depends on the huggingface_hub version
        pass
    return tuple(errors)


def _status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def is_retryable(exc: BaseException) -> bool:
    """Whether another attempt may succeed."""
    if isinstance(exc, RetryableError):
        return True
    status = _status_of(exc)
    if status is not None:
        return status in RETRY_STATUS
    return isinstance(exc, _transport_errors())


def retry_after_of(exc: BaseException | None) -> float | None:
    """The server's requested delay carried by ``exc``, if any."""
    if isinstance(exc, RetryableError):
        return exc.retry_after
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    return parse_retry_after(headers.get("Retry-After")) if headers is not None else None


class _Wait(tenacity.wait.wait_base):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.backoff = tenacity.wait_exponential_jitter(
            multiplier=settings.retry_wait, max=settings.retry_max_wait, jitter=settings.retry_wait
        )

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        after = retry_after_of(outcome.exception() if outcome else None)
        if after is not None:
            return min(after, self.settings.retry_after_max)
        return float(self.backoff(retry_state))


def retrying(settings: Settings, what: str) -> tenacity.Retrying:
    """A :class:`tenacity.Retrying` for one request or file described by ``what``."""

    def log(state: tenacity.RetryCallState) -> None:
        exc: Any = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        logger.warning(
            "%s: attempt %d/%d failed (%s); retrying in %.1fs",
            what,
            state.attempt_number,
            settings.retries,
            describe(exc),
            delay,
        )

    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(settings.retries),
        wait=_Wait(settings),
        retry=tenacity.retry_if_exception(is_retryable),
        before_sleep=log,
        reraise=True,
    )


def describe(exc: BaseException | None) -> str:
    """A one-line reason, without headers, and with credentials in a quoted URL redacted
    (:func:`hubless_fetcher.redact.redact`)."""
    if exc is None:
        return "unknown error"
    status = _status_of(exc)
    if status is not None:
        return f"HTTP {status}"
    text = redact(str(exc).splitlines()[0]) if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
