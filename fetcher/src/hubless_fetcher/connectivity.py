"""One bounded check that the hub (or the mirror at ``HF_ENDPOINT``) answers at all, made once
before any model is resolved.

Without it, a machine with no route to the hub spends every model's retries on the same DNS or
connect failure, one model after another (nine models x five attempts took 151 s to fail).
The check makes one ``HEAD {endpoint}/`` request (name lookup, TCP and TLS connect, one HTTP
answer) within ``HUBLESS_CHECK_TIMEOUT`` seconds in total: any HTTP answer, whatever its
status, proves a route, and the fetch goes on with its usual retries for what fails later.
No answer in time (unknown name, refused or unanswered connection, TLS failure, a server that
accepts but never answers) fails the run at once with :class:`NoRouteError` (exit 9) and
advice: a mirror, a bundle, the offline demo.

It runs in a daemon thread joined with the timeout, because a name lookup (``getaddrinfo``)
is not bounded by the HTTP client's timeouts.
"""

from __future__ import annotations

import logging
import threading
import time

import httpx

from hubless_fetcher.errors import NoRouteError
from hubless_fetcher.retry import describe
from hubless_fetcher.settings import Settings

logger = logging.getLogger(__name__)


def no_route_advice(settings: Settings) -> str:
    """What to do when the hub cannot be reached (logged once, under the reason)."""
    return (
        f"no model was downloaded: {settings.endpoint_shown} cannot be reached from here. "
        "Options:\n"
        "  - a mirror that is reachable: "
        "HF_ENDPOINT=https://hf-mirror.example hubless-fetch fetch\n"
        "  - a bundle from a machine that has the hub: there `hubless-fetch fetch && "
        "hubless-fetch export models.bundle`, here `hubless-fetch import models.bundle`\n"
        "  - no hub at all, to try hubless: `make demo` (a source checkout) runs the whole flow "
        "against a local fake hub\n"
        "  - or fix the network: DNS, firewall, HTTPS_PROXY"
    )


def check_route(settings: Settings) -> float:
    """Raise :class:`NoRouteError` unless ``settings.endpoint`` gives an HTTP answer within
    ``settings.check_timeout`` seconds; return the seconds the check took. Skipped (0.0) when
    the timeout is 0 or in offline mode, ours or huggingface_hub's (which then refuses every
    request: :func:`hubless_fetcher.remote.resolve` says so per model)."""
    from huggingface_hub import constants

    budget = settings.check_timeout
    if budget <= 0 or settings.offline or constants.HF_HUB_OFFLINE:
        return 0.0
    started = time.monotonic()
    outcome: list[BaseException | int] = []
    thread = threading.Thread(
        target=_probe, args=(settings, budget, outcome), name="hubless-route-check", daemon=True
    )
    thread.start()
    thread.join(budget + 0.5)  # the HTTP timeouts end it first, but not a hung name lookup
    seconds = time.monotonic() - started
    where = settings.endpoint_shown
    if not outcome:
        raise NoRouteError(f"cannot reach {where}: no answer within {budget:g}s (name lookup?)")
    result = outcome[0]
    if isinstance(result, BaseException):
        raise NoRouteError(f"cannot reach {where}: {_reason(result, budget)}")
    logger.debug("%s answered HTTP %d in %.2fs", where, result, seconds)
    return seconds


def _probe(settings: Settings, budget: float, outcome: list[BaseException | int]) -> None:
    try:
        with httpx.Client(timeout=httpx.Timeout(budget), follow_redirects=False) as client:
            outcome.append(client.head(settings.endpoint + "/").status_code)
    except BaseException as exc:  # reported by the caller
        outcome.append(exc)


def _reason(exc: BaseException, budget: float) -> str:
    """Which step failed, in words, then the error itself."""
    text = describe(exc)
    if isinstance(exc, httpx.ConnectTimeout):
        return f"the connection was not accepted within {budget:g}s ({text})"
    if isinstance(exc, httpx.ReadTimeout | httpx.WriteTimeout | httpx.PoolTimeout):
        return f"connected, but no HTTP answer within {budget:g}s ({text})"
    lowered = text.lower()
    if "name" in lowered and ("resolution" in lowered or "not known" in lowered):
        return f"the host name does not resolve ({text})"
    if "refused" in lowered:
        return f"the connection was refused ({text})"
    if "ssl" in lowered or "certificate" in lowered:
        return f"the TLS handshake failed ({text})"
    return text
