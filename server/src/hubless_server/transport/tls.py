"""TLS and mutual TLS for the gRPC, HTTP and metrics ports, with certificates that rotate live.

``--tls-cert-file``/``--tls-key-file`` turn on TLS; ``--tls-client-ca-file`` also requires a
client certificate signed by that CA (mTLS). The files are checked before the server listens
(readable PEM, the key matches the certificate, the CA parses), so a bad mount fails the start
with a message naming the file instead of failing every handshake later.

cert-manager and Kubernetes secrets replace the files in place. :meth:`TLSFiles.refresh`
compares the files' modification times and sizes (a ``stat`` each, no read) and reloads only
when they changed; a change that does not validate (a half-written rotation) keeps the last
good certificates and logs one warning per change. It runs at every new gRPC connection, at
every handshake on the other ports (at most once a second) and every 30 s
(:class:`~hubless_server.transport.chain.Transport`), and every port follows it on its own:

- gRPC asks :meth:`TLSFiles.grpc_fetcher` at every new connection, which hands gRPC the
  current material whenever it differs from what gRPC was last given (its own record: a
  reload done by the periodic refresh or by another port is handed over too);
- the metrics port and the HTTP door hold the context of :meth:`TLSFiles.ssl_context`, whose
  SNI callback moves each new connection to a context built afresh at every reload, so a
  client CA removed from the file is removed from the port.

Connections already open keep the certificate they started with.
"""

from __future__ import annotations

import logging
import math
import os
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger(__name__)

_CHECK_INTERVAL_S = 1.0
"""A handshake on the metrics or HTTP port checks the files at most this often."""
_LOAD_TRIES = 3
"""Reads of the files before a set that keeps changing under the reader is given up."""


class TLSConfigError(ValueError):
    """A TLS file is missing, unreadable or does not match the others."""


@dataclass(frozen=True)
class _Material:
    cert: bytes
    key: bytes
    client_ca: bytes | None
    stamp: tuple[tuple[int, int], ...]


def _stamp(paths: list[Path]) -> tuple[tuple[int, int], ...]:
    stamps = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            stamps.append((-1, -1))
            continue
        stamps.append((st.st_mtime_ns, st.st_size))
    return tuple(stamps)


def _read(path: Path, what: str, flag: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"{flag} {path}: cannot read the {what} ({exc.strerror})") from None
    if b"-----BEGIN " not in data:
        raise TLSConfigError(f"{flag} {path}: the {what} is not PEM")
    return data


class TLSFiles:
    """The server's certificate, key and optional client CA, validated and reloadable."""

    def __init__(self, cert_file: Path, key_file: Path, client_ca_file: Path | None = None) -> None:
        self.cert_file = Path(cert_file)
        self.key_file = Path(key_file)
        self.client_ca_file = Path(client_ca_file) if client_ca_file else None
        self._lock = threading.Lock()
        self._bad_stamp: tuple[tuple[int, int], ...] | None = None
        self.reloads = 0
        self._material, self._context = self._load()
        self._grpc_stamp: tuple[tuple[int, int], ...] | None = None
        """The stamp of the material last handed to gRPC (gRPC's own, see grpc_fetcher)."""
        self._checked = -math.inf

    @property
    def mutual(self) -> bool:
        """Client certificates are required."""
        return self.client_ca_file is not None

    def _paths(self) -> list[Path]:
        return [
            self.cert_file,
            self.key_file,
            *([self.client_ca_file] if self.client_ca_file else []),
        ]

    def _load(self) -> tuple[_Material, ssl.SSLContext]:
        """The files' material and a new ``SSLContext`` holding it; TLSConfigError when they
        do not validate, or keep changing while they are read."""
        for _ in range(_LOAD_TRIES):
            stamp = _stamp(self._paths())
            cert = _read(self.cert_file, "certificate", "--tls-cert-file")
            key = _read(self.key_file, "private key", "--tls-key-file")
            ca = (
                _read(self.client_ca_file, "client CA bundle", "--tls-client-ca-file")
                if self.client_ca_file
                else None
            )
            material = _Material(cert, key, ca, stamp)
            context = self._new_context()
            self._configure(context, material)  # validates (and reads the pair again)
            if _stamp(self._paths()) == stamp:  # what gRPC gets is what the context holds
                return material, context
        raise TLSConfigError(
            f"--tls-cert-file {self.cert_file}: the TLS files kept changing while read"
        )

    def _new_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def _configure(self, context: ssl.SSLContext, material: _Material) -> None:
        """Load ``material`` into ``context``; TLSConfigError naming the file on a mismatch."""
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
        except ssl.SSLError as exc:
            raise TLSConfigError(
                f"--tls-cert-file {self.cert_file} and --tls-key-file {self.key_file} do not "
                f"form a valid pair (wrong key for this certificate, or not PEM): {exc.reason}"
            ) from None
        if material.client_ca is not None:
            try:
                context.load_verify_locations(cadata=material.client_ca.decode("ascii"))
            except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
                raise TLSConfigError(
                    f"--tls-client-ca-file {self.client_ca_file}: not a usable CA bundle ({exc})"
                ) from None
            context.verify_mode = ssl.CERT_REQUIRED

    def refresh(self) -> bool:
        """Reload the files if they changed and still validate; True when reloaded."""
        stamp = _stamp(self._paths())
        with self._lock:
            if stamp == self._material.stamp or stamp == self._bad_stamp:
                return False
            try:
                material, context = self._load()
            except TLSConfigError as exc:
                self._bad_stamp = stamp
                log.warning("TLS files changed but do not validate; keeping the old ones: %s", exc)
                return False
            self._material, self._context = material, context
            self._bad_stamp = None
            self.reloads += 1
        log.info(
            "TLS certificates reloaded",
            extra={"fields": {"cert_file": str(self.cert_file), "reloads": self.reloads}},
        )
        return True

    def _refresh_due(self) -> None:
        """:meth:`refresh` at most once a second (a handshake asks; a stat per file)."""
        now = time.monotonic()
        if now - self._checked >= _CHECK_INTERVAL_S:
            self._checked = now
            self.refresh()

    # ---- gRPC --------------------------------------------------------------------------

    @staticmethod
    def _grpc_configuration(material: _Material) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(material.key, material.cert)], root_certificates=material.client_ca
        )

    def grpc_fetcher(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC at every new connection: a new configuration when the material
        differs from what gRPC was last handed, else None (keep the current one). gRPC's
        own record matters: the periodic refresh (or an HTTP handshake) may have reloaded the
        files since gRPC's last connection, and gRPC must still get them."""
        try:
            self.refresh()
            with self._lock:
                material = self._material
                if material.stamp == self._grpc_stamp:
                    return None
                self._grpc_stamp = material.stamp
            return self._grpc_configuration(material)
        except Exception:  # never fail a handshake because of a reload problem
            log.exception("TLS reload failed; keeping the current certificates")
            return None

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Server credentials that follow the files (client certificates required when a
        client CA is configured)."""
        with self._lock:
            material = self._material
            self._grpc_stamp = material.stamp
        return grpc.dynamic_ssl_server_credentials(
            self._grpc_configuration(material),
            self.grpc_fetcher,
            require_client_authentication=self.mutual,
        )

    # ---- other ports -------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        """A server ``SSLContext`` for the metrics port and the HTTP door that always
        handshakes with the current files.

        Its SNI callback, run at every handshake (with or without a server name), checks
        the files (at most once a second) and moves the connection to the current context,
        a new ``SSLContext`` built at each reload: a removed client CA is gone from it
        (``load_verify_locations`` on a live context could only add one). The context
        given to the server never changes, so anything holding it (uvicorn, asyncio's
        server) follows rotations without being told."""
        front = self._new_context()
        with self._lock:
            self._configure(front, self._material)
        front.sni_callback = self._select
        return front

    def _select(self, connection: Any, server_name: str | None, front: ssl.SSLContext) -> None:
        try:
            self._refresh_due()
            current = self._context
            if connection.context is not current:
                connection.context = current
        except Exception:  # the handshake goes on with the context it has
            log.exception("TLS: could not switch a connection to the current certificates")
