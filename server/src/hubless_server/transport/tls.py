"""TLS and mutual TLS for the gRPC and metrics ports, with certificates that rotate live.

``--tls-cert-file``/``--tls-key-file`` turn on TLS; ``--tls-client-ca-file`` also requires a
client certificate signed by that CA (mTLS). The files are checked before the server listens
(readable PEM, the key matches the certificate, the CA parses), so a bad mount fails the start
with a message naming the file instead of failing every handshake later.

cert-manager and Kubernetes secrets replace the files in place. gRPC asks
:meth:`TLSFiles.grpc_fetcher` for the current configuration at every new connection; it
compares the files' modification times and sizes (a ``stat`` each, no read) and reloads only
when they changed. A change that does not validate (a half-written rotation) keeps the last good
certificates and logs one warning per change. The metrics port's ``ssl.SSLContext`` is refreshed
from the same files, so both ports always present the same certificate.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger(__name__)


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
        self._contexts: list[ssl.SSLContext] = []
        self._bad_stamp: tuple[tuple[int, int], ...] | None = None
        self.reloads = 0
        self._material = self._load()

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

    def _load(self) -> _Material:
        stamp = _stamp(self._paths())
        cert = _read(self.cert_file, "certificate", "--tls-cert-file")
        key = _read(self.key_file, "private key", "--tls-key-file")
        ca = (
            _read(self.client_ca_file, "client CA bundle", "--tls-client-ca-file")
            if self.client_ca_file
            else None
        )
        material = _Material(cert, key, ca, stamp)
        self._configure(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), material)  # validates
        return material

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
                material = self._load()
            except TLSConfigError as exc:
                self._bad_stamp = stamp
                log.warning("TLS files changed but do not validate; keeping the old ones: %s", exc)
                return False
            self._material = material
            self._bad_stamp = None
            self.reloads += 1
            for context in self._contexts:
                self._configure(context, material)
        log.info(
            "TLS certificates reloaded",
            extra={"fields": {"cert_file": str(self.cert_file), "reloads": self.reloads}},
        )
        return True

    # ---- gRPC --------------------------------------------------------------------------

    def _grpc_configuration(self) -> grpc.ServerCertificateConfiguration:
        material = self._material
        return grpc.ssl_server_certificate_configuration(
            [(material.key, material.cert)], root_certificates=material.client_ca
        )

    def grpc_fetcher(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC at every new connection: a new configuration when the files
        changed, else None (keep the current one)."""
        try:
            return self._grpc_configuration() if self.refresh() else None
        except Exception:  # never fail a handshake because of a reload problem
            log.exception("TLS reload failed; keeping the current certificates")
            return None

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Server credentials that follow the files (client certificates required when a
        client CA is configured)."""
        return grpc.dynamic_ssl_server_credentials(
            self._grpc_configuration(),
            self.grpc_fetcher,
            require_client_authentication=self.mutual,
        )

    # ---- other ports -------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        """A server ``SSLContext`` for the metrics port, refreshed with the files."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        with self._lock:
            self._configure(context, self._material)
            self._contexts.append(context)
        return context
