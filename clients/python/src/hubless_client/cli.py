"""``hubless-client``: the client distribution's command line. ``status`` is the fleet view.

``hubless-client status --servers a:50051,b:50051`` asks every replica for its models
(``ModelsService.ListModels``, :func:`hubless_client.fleet.fleet_status`), prints per replica
each model's task, served commit, backend, dtype and state, and exits by what it found:
0 when every model is served at one commit across the replicas, 1 on skew (naming the model,
replicas and commits), 2 when a replica could not be asked (naming it). ``--json`` prints the
same as one JSON object for scripts. A usage error exits 3, apart from 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

from hubless_client import __version__
from hubless_client.fleet import DEFAULT_TIMEOUT, FleetStatus, fleet_status, served_commit

EXIT_CONSISTENT = 0
EXIT_SKEW = 1
EXIT_UNREACHABLE = 2
EXIT_USAGE = 3

#: Characters of a commit shown in the table (``--json`` has them all).
SHORT_COMMIT = 12

EPILOG = f"""\
exit codes:
  {EXIT_CONSISTENT}  every model is served at the same commit by every replica that lists it
  {EXIT_SKEW}  skew: a model is served at different commits (or missing on some replicas)
  {EXIT_UNREACHABLE}  a replica could not be asked (unreachable, TLS or token refused): named
  {EXIT_USAGE}  usage error (bad flag, unreadable file, token over plaintext)
"""


class UsageError(Exception):
    """A bad flag or file: exit :data:`EXIT_USAGE` with one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _positive(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {value}")
    return seconds


def _servers(value: str) -> list[str]:
    servers = [s.strip() for s in value.split(",") if s.strip()]
    if not servers:
        raise argparse.ArgumentTypeError("give HOST:PORT[,HOST:PORT...]")
    return servers


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hubless-client",
        description="Command line of the hubless Python client.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = commands.add_parser(
        "status",
        help="what every replica serves, and whether they agree (the fleet view)",
        description="Ask each replica for its models (ModelsService.ListModels) and compare "
        "the commit each serves.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status.add_argument(
        "--servers",
        required=True,
        type=_servers,
        action="extend",
        metavar="HOST:PORT[,HOST:PORT...]",
        help="the replicas' gRPC addresses, comma-separated (the flag may be repeated)",
    )
    status.add_argument(
        "--timeout",
        type=_positive,
        default=DEFAULT_TIMEOUT,
        help=f"seconds each replica has to answer (default {DEFAULT_TIMEOUT:g})",
    )
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.add_argument(
        "--token-file",
        type=Path,
        help="file holding the bearer token (one line; blank lines and # comments ignored)",
    )
    status.add_argument(
        "--allow-insecure-token",
        action="store_true",
        help="send the token over plaintext to another host (a network you trust)",
    )
    status.add_argument("--tls", action="store_true", help="connect with TLS (system roots)")
    status.add_argument(
        "--ca-file",
        type=Path,
        help="PEM file of the CA that signed the servers' certificates (implies --tls)",
    )
    status.add_argument(
        "--cert-file", type=Path, help="PEM client certificate for mutual TLS (with --key-file)"
    )
    status.add_argument("--key-file", type=Path, help="PEM private key of --cert-file")
    status.add_argument(
        "--server-name",
        help="the name the servers' certificates carry, when it differs from the addresses",
    )
    return parser


def read_token(path: Path) -> str:
    """The one token in ``path`` (blank lines and ``#`` comment lines ignored)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--token-file {path}: cannot read it: {exc}") from None
    lines = [line.strip() for line in text.splitlines()]
    tokens = [line for line in lines if line and not line.startswith("#")]
    if len(tokens) != 1:
        found = "no token" if not tokens else f"{len(tokens)} tokens"
        raise UsageError(f"--token-file {path}: holds {found}; give a file with one token")
    return tokens[0]


def _read(path: Path | None, flag: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot read it: {exc.strerror or exc}") from None


def client_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~hubless_client.Client` arguments the flags ask for."""
    if (args.cert_file is None) != (args.key_file is None):
        raise UsageError("--cert-file and --key-file go together")
    options: dict[str, Any] = {
        "tls": args.tls,
        "root_certificates": _read(args.ca_file, "--ca-file"),
        "client_cert": _read(args.cert_file, "--cert-file"),
        "client_key": _read(args.key_file, "--key-file"),
        "allow_insecure_token": args.allow_insecure_token,
    }
    if args.token_file is not None:
        options["token"] = read_token(args.token_file)
    if args.server_name:
        options["options"] = [("grpc.ssl_target_name_override", args.server_name)]
    return options


def exit_code(status: FleetStatus) -> int:
    """2 if a replica could not be asked, else 1 on skew, else 0."""
    if status.unreachable:
        return EXIT_UNREACHABLE
    return EXIT_SKEW if status.skew else EXIT_CONSISTENT


def render(status: FleetStatus) -> str:
    """The human-readable report: a table of every replica's models, then the verdict."""
    header = ("REPLICA", "MODEL", "TASK", "COMMIT", "BACKEND", "DTYPE", "STATE")
    rows: list[tuple[str, ...]] = []
    for replica in status.replicas:
        if replica.error is not None:
            rows.append((replica.target, "-", "-", "-", "-", "-", "unreachable"))
            continue
        for m in replica.models:
            commit = served_commit(m)
            state = m.state.value
            if commit != m.commit:  # a live update: the new commit is loading
                state = f"{state} {m.commit[:SHORT_COMMIT]}"
            rows.append(
                (
                    replica.target,
                    m.name,
                    str(m.task) or "-",
                    commit[:SHORT_COMMIT] or "-",
                    m.backend or "-",
                    m.dtype or "-",
                    state,
                )
            )
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]
    lines.append("")
    for replica in status.unreachable:
        lines.append(f"unreachable: {replica.target}: {replica.error}")
    for skew in status.skew:
        lines.append(f"skew: {skew.describe(SHORT_COMMIT)}")
    if status.consistent:
        count = len(status.replicas)
        lines.append(f"consistent: every model is served at one commit by all {count} replicas")
    return "\n".join(lines) + "\n"


def status_command(args: argparse.Namespace, out: IO[str]) -> int:
    try:
        status = fleet_status(args.servers, timeout=args.timeout, **client_options(args))
    except ValueError as exc:  # options the client refuses (a token over plaintext...)
        raise UsageError(str(exc)) from None
    out.write(json.dumps(status.to_dict(), indent=2) + "\n" if args.json else render(status))
    return exit_code(status)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return status_command(args, sys.stdout)
    except UsageError as exc:
        sys.stderr.write(f"hubless-client: error: {exc}\n")
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
