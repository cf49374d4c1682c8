"""``hubless-health-probe``: exit 0 iff the server (or one service) reports SERVING.

Made for Docker ``HEALTHCHECK`` and Kubernetes exec probes: no retries, one bounded call,
exit status 0 (healthy) or 1 (unhealthy, with a one-line reason on stderr). Usage errors also
exit 1, since Docker reserves status 2.
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
    parser.add_argument("--tls", action="store_true", help="connect with TLS")
    parser.add_argument(
        "--root-certificates", type=Path, help="PEM file of the CA to trust (implies --tls)"
    )
    return parser


def probe(
    target: str,
    service: str = "",
    timeout: float = 3.0,
    *,
    tls: bool = False,
    root_certificates: bytes | None = None,
) -> tuple[bool, str]:
    """One health check: (serving, one-line description)."""
    what = f"{service!r} at {target}" if service else f"server at {target}"
    try:
        with Client(
            target,
            timeout=timeout,
            tls=tls,
            root_certificates=root_certificates,
            retries=False,
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
    args = build_parser().parse_args(argv)
    root = None
    if args.root_certificates is not None:
        try:
            root = args.root_certificates.read_bytes()
        except OSError as exc:
            sys.stderr.write(f"hubless-health-probe: cannot read {args.root_certificates}: {exc}\n")
            return EXIT_UNHEALTHY
    serving, line = probe(
        args.target, args.service, args.timeout, tls=args.tls, root_certificates=root
    )
    (sys.stdout if serving else sys.stderr).write(line + "\n")
    return EXIT_SERVING if serving else EXIT_UNHEALTHY


if __name__ == "__main__":
    sys.exit(main())
