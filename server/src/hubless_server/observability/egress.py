"""``--assert-no-egress``: check, at start and every interval, that the server cannot reach the hub.

Why: an air-gapped install is only as air-gapped as its network policy, and a policy edited
for something else (an egress rule for a collector, a namespace moved, a node pool with a
NAT gateway) opens the way out without anyone noticing; the server itself never talks to the
hub, so nothing fails. This check makes the gap something the server asserts: it looks up the
name of the configured hub endpoint (``HF_ENDPOINT``, else ``https://huggingface.co``) and
tries a TCP connection to it, each with a short timeout (:data:`TIMEOUT_S`), in a worker
thread; nothing is sent on a connection that opens, it is closed at once. If either succeeds
it logs an error naming what succeeded and sets ``hubless_egress_reachable`` to 1 (0 when
neither does); with ``refuse`` the server reports whole-server health NOT_SERVING until a
check fails to reach the hub again (:attr:`EgressCheck.refusing`, which ``app.py`` folds into
the health status).

What counts: a DNS answer with addresses (a resolver that answers names from outside, or a
hosts-file entry for the hub) and an accepted TCP connection. An NXDOMAIN or no answer is the
gap holding, and so is a refused or timed-out connection. A hub endpoint given as an IP
address is not looked up, only connected to. Proxies (``HTTPS_PROXY``) are not tried.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from hubless_server.observability.metrics import EGRESS_REACHABLE

log = logging.getLogger(__name__)

MODES = ("off", "warn", "refuse")
DEFAULT_ENDPOINT = "https://huggingface.co"
TIMEOUT_S = 2.0
"""Seconds the DNS lookup, and each TCP connection attempt, may take."""
MAX_ADDRESSES = 4
"""Addresses of the name tried at most (IPv4 and IPv6 alike)."""


class EgressConfigError(ValueError):
    """The hub endpoint to check is not a URL with a host."""


@dataclass(frozen=True)
class Target:
    """Where the hub is: the host of its endpoint and the port a client would connect to."""

    host: str
    port: int

    @property
    def is_address(self) -> bool:
        """An IP address (nothing to look up) rather than a name."""
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def from_endpoint(cls, endpoint: str) -> Target:
        """``https://huggingface.co`` -> huggingface.co:443; ``http://10.0.0.5:8080`` ->
        10.0.0.5:8080. Raises :class:`EgressConfigError` naming what is wrong."""
        try:
            parts = urlsplit(endpoint.strip())
            port = parts.port
        except ValueError as exc:
            raise EgressConfigError(f"hub endpoint {endpoint!r}: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise EgressConfigError(
                f"hub endpoint {endpoint!r} is not an http(s) URL with a host (e.g. "
                f"{DEFAULT_ENDPOINT}): set HF_ENDPOINT to the hub --assert-no-egress must not "
                "reach"
            )
        return cls(parts.hostname, port or (443 if parts.scheme == "https" else 80))


def hub_endpoint(environ: Mapping[str, str] | None = None) -> str:
    """The hub the fetcher would use: ``HF_ENDPOINT``, else :data:`DEFAULT_ENDPOINT`."""
    environ = os.environ if environ is None else environ
    return environ.get("HF_ENDPOINT", "").strip() or DEFAULT_ENDPOINT


@dataclass(frozen=True)
class Probe:
    """What one check found: the addresses the name resolved to (none when the lookup failed
    or the host is an address), the address that accepted a TCP connection (empty when none
    did), and why each step that failed failed."""

    target: Target
    resolved: tuple[str, ...] = ()
    connected: str = ""
    failures: tuple[str, ...] = ()

    @property
    def reachable(self) -> bool:
        return bool(self.resolved or self.connected)

    def succeeded(self) -> str:
        """What succeeded, for the error line ('' when nothing did)."""
        found = []
        if self.resolved:
            found.append(
                f"the DNS lookup of {self.target.host} answered {', '.join(self.resolved)}"
            )
        if self.connected:
            found.append(f"a TCP connection to {self.connected} was accepted")
        return " and ".join(found)


def _lookup(host: str, port: int, timeout: float) -> tuple[tuple[str, ...], str]:
    """Addresses of ``host`` (and '') or () and why not. ``getaddrinfo`` has no timeout: it
    runs in a daemon thread that is left to finish on its own when it takes too long."""
    answer: list[Any] = []

    def resolve() -> None:
        try:
            answer.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except (OSError, UnicodeError) as exc:
            answer.append(exc)

    thread = threading.Thread(target=resolve, name="hubless-egress-dns", daemon=True)
    thread.start()
    thread.join(timeout)
    if not answer:
        return (), f"DNS lookup of {host}: no answer within {timeout:g} s"
    if isinstance(answer[0], BaseException):
        return (), f"DNS lookup of {host}: {answer[0]}"
    addresses = dict.fromkeys(str(info[4][0]) for info in answer[0])
    return tuple(addresses), ""


def _connect(address: str, port: int, timeout: float) -> str:
    """'' when a TCP connection to ``address:port`` opened (closed at once, nothing sent),
    else why not."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return ""
    except OSError as exc:
        return f"TCP connection to {Target(address, port)}: {exc.strerror or exc}"


def probe(target: Target, timeout: float = TIMEOUT_S) -> Probe:
    """One check of ``target`` (blocking: run it off the event loop)."""
    failures: list[str] = []
    resolved: tuple[str, ...] = ()
    if target.is_address:
        addresses: tuple[str, ...] = (target.host,)
    else:
        resolved, why = _lookup(target.host, target.port, timeout)
        if why:
            failures.append(why)
        addresses = resolved
    for address in addresses[:MAX_ADDRESSES]:
        why = _connect(address, target.port, timeout)
        if not why:
            return Probe(target, resolved, str(Target(address, target.port)), tuple(failures))
        failures.append(why)
    return Probe(target, resolved, "", tuple(failures))


class EgressCheck:
    """``--assert-no-egress MODE``: :func:`probe` the hub at :meth:`start` and every
    ``interval_s`` seconds (0: at start only); ``on_change`` is awaited when
    :attr:`refusing` changes (the server recomputes its health). Off: does nothing."""

    def __init__(
        self,
        mode: str,
        interval_s: float,
        endpoint: str,
        on_change: Callable[[], Awaitable[None]] | None = None,
        *,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        if mode not in MODES:
            raise EgressConfigError(f"--assert-no-egress {mode!r} is not one of {MODES}")
        self.mode = mode
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.target = Target.from_endpoint(endpoint) if mode != "off" else None
        self.on_change = on_change
        self.last: Probe | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def refusing(self) -> bool:
        """Whether whole-server health must be NOT_SERVING: ``refuse``, and the hub was
        reachable at the last check, or no check has finished yet."""
        return self.mode == "refuse" and (self.last is None or self.last.reachable)

    def start(self) -> None:
        """The first check now, then one per interval, on the running loop (off: no-op)."""
        if self.target is None or self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="hubless-egress")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.target is not None:
            with contextlib.suppress(KeyError):
                EGRESS_REACHABLE.remove(str(self.target))

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # never end the loop over a failed check
                log.exception("egress check failed")
            if self.interval_s <= 0:
                return
            await asyncio.sleep(self.interval_s)

    async def check(self) -> Probe:
        """Probe the hub now (in a worker thread), then log, set the metric and tell
        ``on_change`` when :attr:`refusing` changed."""
        assert self.target is not None, "--assert-no-egress off: nothing to check"
        was_refusing, previous = self.refusing, self.last
        result = await asyncio.to_thread(probe, self.target, self.timeout_s)
        self.last = result
        EGRESS_REACHABLE.labels(str(self.target)).set(1 if result.reachable else 0)
        fields = {
            "target": str(self.target),
            "mode": self.mode,
            "resolved": ",".join(result.resolved),
            "connected": result.connected,
        }
        if result.reachable:
            consequence = (
                'whole-server health "" is NOT_SERVING until the hub is unreachable again'
                if self.mode == "refuse"
                else "serving on (--assert-no-egress warn)"
            )
            log.error(
                "--assert-no-egress: this server can reach the hub %s: %s; the air gap is "
                "open (check the network policy and the DNS configuration); %s",
                self.target,
                result.succeeded(),
                consequence,
                extra={"fields": fields},
            )
        elif previous is None or previous.reachable:
            log.info(
                "--assert-no-egress: the hub %s is unreachable (%s)",
                self.target,
                "; ".join(result.failures),
                extra={"fields": fields},
            )
        if self.refusing != was_refusing and self.on_change is not None:
            await self.on_change()
        return result
