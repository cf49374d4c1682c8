"""``hubless-health-probe``: exit 0 iff the server (or one service) reports SERVING.

Made for Docker ``HEALTHCHECK`` and Kubernetes exec probes: no retries, one bounded call,
exit status 0 (healthy) or 1 (unhealthy, with a one-line reason on stderr). Usage errors also
exit 1, since Docker reserves status 2.

Against a server with TLS either probe its plaintext ``--health-port`` (no certificates
needed; what the deployment files do) or the TLS port with ``--tls``/``--ca-file`` and, under
mutual TLS, ``--cert-file``/``--key-file``. Health checks never need a token.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from hubless_client.client import Client
from hubless_client.errors import HublessError
from hubless_client.types import HealthStatus

EXIT_SERVING = 0
EXIT_UNHEALTHY = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_UNHEALTHY, f"{self.prog}: error: {message}\n")


def _positive(value: str) -> float:
    seconds = float(value)
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {value}")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hubless-health-probe",
        description="Exit 0 iff the hubless server reports SERVING (grpc.health.v1), else 1.",
    )
    parser.add_argument("--target", required=True, help="HOST:PORT of the gRPC server")
    parser.add_argument(
        "--service",
        default="",
        help='service to check, e.g. "hubless.v1.SentimentService" (default: the whole server)',
    )
    parser.add_argument(
        "--timeout", type=_positive, default=3.0, help="seconds to wait (default 3)"
    )
    parser.add_argument("--tls", action="store_true", help="connect with TLS (system roots)")
    parser.add_argument(
        "--ca-file",
        "--root-certificates",
        dest="ca_file",
        type=Path,
        help="PEM file of the CA that signed the server's certificate (implies --tls)",
    )
    parser.add_argument(
        "--cert-file", type=Path, help="PEM client certificate for mutual TLS (with --key-file)"
    )
    parser.add_argument("--key-file", type=Path, help="PEM private key of --cert-file")
    parser.add_argument(
        "--server-name",
        help="the name the server's certificate must carry, when it differs from the target's "
        "host (e.g. probing 127.0.0.1 with a certificate for hubless.example)",
    )
    return parser


def probe(
    target: str,
    service: str = "",
    timeout: float = 3.0,
    *,
    tls: bool = False,
    root_certificates: bytes | None = None,
    client_cert: bytes | None = None,
    client_key: bytes | None = None,
    server_name: str | None = None,
) -> tuple[bool, str]:
    """One health check: (serving, one-line description)."""
    what = f"{service!r} at {target}" if service else f"server at {target}"
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    try:
        with Client(
            target,
            timeout=timeout,
            tls=tls,
            root_certificates=root_certificates,
            client_cert=client_cert,
            client_key=client_key,
            retries=False,
            options=options,
        ) as client:
            status = client.health(service)
    except HublessError as exc:
        return False, f"{what}: {exc.code.name}: {exc.details}".rstrip(": ")
    if status is HealthStatus.SERVING:
        return True, f"{what}: SERVING"
    if status is HealthStatus.SERVICE_UNKNOWN:
        return False, f"{what}: unknown service"
    return False, f"{what}: {status.value}"


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.cert_file is None) != (args.key_file is None):
        parser.error("--cert-file and --key-file go together")
    files: dict[str, bytes | None] = {}
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(args, name)
        try:
            files[name] = path.read_bytes() if path is not None else None
        except OSError as exc:
            sys.stderr.write(f"hubless-health-probe: cannot read {path}: {exc}\n")
            return EXIT_UNHEALTHY
    serving, line = probe(
        args.target,
        args.service,
        args.timeout,
        tls=args.tls,
        root_certificates=files["ca_file"],
        client_cert=files["cert_file"],
        client_key=files["key_file"],
        server_name=args.server_name,
    )
    (sys.stdout if serving else sys.stderr).write(line + "\n")
    return EXIT_SERVING if serving else EXIT_UNHEALTHY


if __name__ == "__main__":
    sys.exit(main())
