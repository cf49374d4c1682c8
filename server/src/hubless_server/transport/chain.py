"""How the server is reached: TLS, bearer tokens, the interceptor chain and the health port.

:class:`Transport` turns the settings into what :class:`~hubless_server.app.HublessServer`
assembles, and checks the files before anything listens (a bad certificate or token file is
a :class:`~hubless_server.transport.tls.TLSConfigError` or
:class:`~hubless_server.transport.auth.TokenFileError` naming the file; ``hubless-serve`` exits 2):

- the gRPC port: TLS (mutual with ``--tls-client-ca-file``) through
  :meth:`~hubless_server.transport.tls.TLSFiles.grpc_credentials`, which follows rotated files at
  each
  new connection, or plaintext;
- one interceptor (:mod:`hubless_server.transport.interceptor`) doing, in this order, the
  token check (``--auth-token-file``), tracing (``--otlp-endpoint``: the OpenTelemetry server
  span), the access log (naming the caller, and the trace id when tracing is on), the drain
  window (:mod:`hubless_server.transport.drain`: new calls refused with SHUTTING_DOWN once the
  server stops), the per-caller limit (``--max-caller-concurrency``); built once, so the gRPC
  port and the HTTP door (``--http-port``) share it, and a caller's calls count against its
  limit on both;
- the largest request message gRPC takes, from the request limits
  (:func:`max_receive_bytes`, logged at start): bigger ones are refused before decoding;
- ``--health-port``: a second, plaintext gRPC server with only ``grpc.health.v1``, the same
  statuses, for probes that cannot present a client certificate or do not speak TLS
  (Kubernetes' native gRPC probes);
- a background task that refreshes the TLS files every :data:`TLS_REFRESH_S` seconds, so a
  rotation is loaded (and logged) even when no connection arrives; each port then serves it
  to its next connection (:mod:`hubless_server.transport.tls`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from hubless_server.core.config import Settings
from hubless_server.transport.auth import TokenFile
from hubless_server.transport.caller_limit import CallerLimit
from hubless_server.transport.drain import DrainWindow
from hubless_server.transport.interceptor import HublessInterceptor
from hubless_server.transport.refusals import Refusals
from hubless_server.transport.tls import TLSFiles

if TYPE_CHECKING:
    from hubless_server.observability.tracing import Tracing

log = logging.getLogger(__name__)

TLS_REFRESH_S = 30.0
"""How often the TLS files are checked for a rotation (a stat each) besides new connections."""


MESSAGE_SLACK_BYTES = 64 * 1024
"""Room in a request message for what is not text: the model name, options, field tags."""


def max_receive_bytes(settings: Settings) -> int:
    """The largest request message the gRPC port accepts (``grpc.max_receive_message_length``),
    from the request limits: the biggest valid request is a zero-shot one with
    ``--max-texts`` texts, ``--max-labels`` labels and a template, each of at most
    ``--max-text-chars`` characters of at most 4 bytes in UTF-8, each field with a tag and
    a length of up to 8 bytes, plus :data:`MESSAGE_SLACK_BYTES`:

        (max_texts + max_labels + 1) x (4 x max_text_chars + 8) + 64 KiB

    7,826,312 bytes (7.5 MiB) with the defaults. gRPC refuses a bigger message with
    RESOURCE_EXHAUSTED from its length prefix, before the message is decoded: a 30 MB
    ``EmbedRequest`` of 10 million one-letter texts never becomes 10 million strings."""
    s = settings
    strings = s.max_texts + s.max_labels + 1
    return min(strings * (4 * s.max_text_chars + 8) + MESSAGE_SLACK_BYTES, 2**31 - 1)


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ``::1``."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Transport:
    """TLS files, token file and limits of one server, validated at construction."""

    def __init__(
        self,
        settings: Settings,
        tracing: Tracing | None = None,
        tls_refresh_s: float | None = None,
    ) -> None:
        """``tls_refresh_s``: the period of the TLS refresh task (default
        :data:`TLS_REFRESH_S`, read now)."""
        s = settings
        self.settings = s
        self.tracing = tracing
        self.tls_refresh_s = TLS_REFRESH_S if tls_refresh_s is None else tls_refresh_s
        self._chain: list[grpc.aio.ServerInterceptor] | None = None
        self.drain = DrainWindow()
        self.tls: TLSFiles | None = None
        if s.tls_cert_file is not None and s.tls_key_file is not None:
            self.tls = TLSFiles(s.tls_cert_file, s.tls_key_file, s.tls_client_ca_file)
        self.tokens = TokenFile(s.auth_token_file) if s.auth_token_file is not None else None
        self.health_port = 0
        self._health_server: grpc.aio.Server | None = None
        self._refresher: asyncio.Task[None] | None = None

    @property
    def mode(self) -> str:
        """``plaintext``, ``tls`` or ``mtls``."""
        if self.tls is None:
            return "plaintext"
        return "mtls" if self.tls.mutual else "tls"

    @property
    def refusals(self) -> Refusals:
        """The count of calls without an accepted token, per address, that both doors share
        (one back-off budget per address: :mod:`.refusals`)."""
        interceptor = self.interceptors()[0]
        assert isinstance(interceptor, HublessInterceptor)
        return interceptor.refusals

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """The one :class:`~hubless_server.transport.interceptor.HublessInterceptor`, in a
        list (what ``grpc.aio.server`` and the HTTP door take): the token check first
        (nothing else runs for a refused call), then the tracing span, the access log, the
        drain window, then the per-caller limit (so the refusals of the last two are logged
        and traced, and a call refused while draining takes no caller slot). The same
        instance on every call."""
        if self._chain is not None:
            return self._chain
        s = self.settings
        limit = None
        if s.max_caller_concurrency:
            limit = CallerLimit(s.max_caller_concurrency, by_token=self.tokens is not None)
        interceptor = HublessInterceptor(
            tokens=self.tokens,
            protect_reflection=s.auth_reflection,
            drain=self.drain,
            caller_limit=limit,
            tracing=self.tracing.server_interceptor() if self.tracing is not None else None,
            trace_id=self.tracing.current_trace_id if self.tracing is not None else None,
        )
        self._chain = [interceptor]
        return self._chain

    def grpc_options(self) -> list[tuple[str, Any]]:
        """Options of the main gRPC server that follow the settings: the receive limit
        (:func:`max_receive_bytes`)."""
        return [("grpc.max_receive_message_length", max_receive_bytes(self.settings))]

    def add_port(self, server: grpc.aio.Server, address: str) -> int:
        """Bind the gRPC port, with TLS when configured; the bound port."""
        if self.tls is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, self.tls.grpc_credentials())

    def metrics_ssl_context(self) -> ssl.SSLContext | None:
        """The metrics port's TLS context (same certificate as gRPC, following rotations:
        :meth:`TLSFiles.ssl_context`), or None."""
        return self.tls.ssl_context() if self.tls is not None else None

    def http_ssl_context(self) -> ssl.SSLContext | None:
        """The HTTP door's TLS context (same certificate, and client CA, as gRPC, following
        rotations: :meth:`TLSFiles.ssl_context`), or None. One context for the life of the
        server: hand it to uvicorn as it is."""
        return self.tls.ssl_context() if self.tls is not None else None

    def log_fields(self) -> dict[str, Any]:
        return {
            "transport": self.mode,
            "auth": "token" if self.tokens is not None else "off",
            "reflection": self.settings.reflection,
            "caller_limit": self.settings.max_caller_concurrency,
            "tracing": "otlp" if self.tracing is not None else "off",
            "max_receive_bytes": max_receive_bytes(self.settings),
        }

    def warn_if_exposed(self) -> None:
        """Tokens sent in clear text to a non-loopback address can be read on the way."""
        if self.tokens is not None and self.tls is None and not is_loopback(self.settings.host):
            log.warning(
                "bearer tokens are checked but the gRPC port %s is plaintext: anyone on the "
                "path can read them; add --tls-cert-file/--tls-key-file",
                self.settings.host,
            )

    async def start(self, add_health: Callable[[grpc.aio.Server], None]) -> None:
        """Start the plaintext health port (``--health-port``, on ``--host``; ``add_health``
        registers the server's health service on it) and the TLS refresh task."""
        if self.settings.health_port:
            server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
            add_health(server)
            host = self.settings.host
            if ":" in host and not host.startswith("["):
                host = f"[{host}]"
            health_address = f"{host}:{self.settings.health_port}"
            try:
                self.health_port = server.add_insecure_port(health_address)
            except RuntimeError as exc:
                raise OSError(f"cannot listen on {health_address} (port in use?)") from exc
            await server.start()
            self._health_server = server
            log.info("health checks (plaintext) on %s", health_address)
        if self.tls is not None:
            self._refresher = asyncio.get_running_loop().create_task(
                self._refresh_tls(self.tls), name="hubless-tls-refresh"
            )

    async def _refresh_tls(self, tls: TLSFiles) -> None:
        while True:
            await asyncio.sleep(self.tls_refresh_s)
            try:
                tls.refresh()
            except Exception:  # a reload problem must never end the loop
                log.exception("TLS refresh failed; keeping the current certificates")

    async def stop(self) -> None:
        """Stop the refresh task and the health port (after the main port drained: probes
        keep seeing NOT_SERVING until the end)."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        if self._health_server is not None:
            await self._health_server.stop(0)
            self._health_server = None
