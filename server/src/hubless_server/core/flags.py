"""Settings as flags and environment variables: ``--foo-bar`` and ``HUBLESS_FOO_BAR`` for
every field of :class:`~hubless_server.core.config.Settings`, ``hubless-serve --help`` and the
documented table (:func:`describe`), all from the fields' metadata; :func:`load_settings`
reads them (flag over variable over default). The exit codes of ``hubless-serve`` are one
table too (:data:`EXIT_CODES`): the ``--help`` epilog and docs/server.md show it."""

from __future__ import annotations

import argparse
import os
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import fields
from enum import IntEnum
from pathlib import Path
from typing import Any

from hubless_server import __version__
from hubless_server.core.config import Settings
from hubless_server.core.tasks import TASKS
from hubless_server.core.values import (
    ENV_PREFIX,
    OTEL_ENDPOINT_ENV,
    ConfigError,
    env_name,
    flag_name,
    optional_path,
    parse_size,
)


def describe() -> list[tuple[str, str, str, str]]:
    """(flag, env, default, help) for every setting: the one documented list."""
    rows = []
    for f in fields(Settings):
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if isinstance(default, tuple):
            default = ",".join(default) if default != TASKS else "all"
        elif isinstance(default, dict) or default is None:
            default = ""
        rows.append((flag_name(f.name), env_name(f.name), str(default), f.metadata["help"]))
    return rows


#: ``--help``'s metavar of the settings that :func:`metavar` would not name well.
_METAVARS = {
    "tasks": "LIST",
    "dtype_overrides": "KEY=DTYPE,...",
    "backend_overrides": "KEY=BACKEND,...",
    "batch_wait_ms": "MS",
    "ready_when": "all|any",
}


def metavar(field_name: str) -> str:
    """What ``--help`` shows as a setting's value: ``PATH`` for files, ``PORT``, ``N`` for
    integers, ``SECONDS`` for the other numbers, ``SIZE``, or a name from the field's last
    word (``DTYPE``, ``HOST``, ``LEVEL``); a setting's metadata may name its own
    (``metavar``)."""
    f = next(f for f in fields(Settings) if f.name == field_name)
    parse = f.metadata["parse"]
    if "metavar" in f.metadata:
        return str(f.metadata["metavar"])
    if field_name in _METAVARS:
        return _METAVARS[field_name]
    if parse in (Path, optional_path):
        return "PATH"
    if field_name.endswith("port"):
        return "PORT"
    if parse is int:
        return "N"
    if parse is float:
        return "SECONDS"
    if parse is parse_size:
        return "SIZE"
    return field_name.rsplit("_", 1)[-1].upper()


#: "default" as a word of its own ("non-default" does not say what the default is).
_SAYS_DEFAULT = re.compile(r"(?<![-\w])(default|required)(?![-\w])")


def _with_default(help_text: str, default: str, flag_bool: bool) -> str:
    """A setting's help with its default, unless the text already says it (or "required")."""
    if _SAYS_DEFAULT.search(help_text):
        return help_text
    if flag_bool:
        default = "on" if default == "True" else "off"
    return f"{help_text} (default: {default or 'unset'})"


class ExitCode(IntEnum):
    """Exit statuses of ``hubless-serve``; :data:`EXIT_CODES` says what each means."""

    OK = 0
    CANNOT_START = 1
    CONFIG = 2
    MODELS_MISSING = 3


EXIT_CODES: dict[ExitCode, str] = {
    ExitCode.OK: "stopped after the drain (SIGTERM, SIGINT)",
    ExitCode.CANNOT_START: "cannot start: a port to listen on is in use or not allowed",
    ExitCode.CONFIG: "invalid setting (a flag, a variable, a TLS, token or trusted-key file) or no "
    "models directory at `--models-dir`",
    ExitCode.MODELS_MISSING: "`--require-models`: once the initial loading is over, a served "
    "task has no model (the log names each and the fetch that installs it)",
}
"""What each exit status means: ``--help`` shows it, docs/server.md has the same table."""


def exit_codes_epilog(codes: Mapping[int, str]) -> str:
    """An ``--help`` epilog listing ``codes`` (markdown backticks dropped), one per line."""
    lines = ["exit codes:"]
    for code, meaning in codes.items():
        text = textwrap.fill(
            meaning.replace("`", ""),
            width=78,
            initial_indent=f"  {int(code):<4}",
            subsequent_indent=" " * 6,
        )
        lines.append(text)
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    description = (
        "Serve the models of a hubless volume over gRPC, offline. Every flag --foo-bar can "
        f"also be set as {ENV_PREFIX}FOO_BAR; the flag wins. Reference: docs/server.md."
    )
    parser = argparse.ArgumentParser(
        prog="hubless-serve",
        description=textwrap.fill(description, width=78),
        epilog=exit_codes_epilog(EXIT_CODES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    defaults = {row[0]: row[2] for row in describe()}
    for f in fields(Settings):
        meta = f.metadata
        help_text = _with_default(meta["help"], defaults[flag_name(f.name)], meta["bool"])
        help_text = f"{help_text} [{env_name(f.name)}]".replace("%", "%%")
        if meta["bool"]:
            parser.add_argument(
                flag_name(f.name),
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            parser.add_argument(
                flag_name(f.name),
                dest=f.name,
                default=None,
                metavar=metavar(f.name),
                help=help_text,
            )
    return parser


def load_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Settings from flags (``argv``), then ``environ`` (default ``os.environ``), then the
    defaults. Raises :class:`ConfigError` with the offending flag/variable named."""
    environ = os.environ if environ is None else environ
    args = vars(build_parser().parse_args(argv))
    values: dict[str, Any] = {}
    for f in fields(Settings):
        parse = f.metadata["parse"]
        raw = args.get(f.name)
        source = flag_name(f.name)
        if raw is None:
            raw = environ.get(env_name(f.name))
            source = env_name(f.name)
            if raw is None:
                continue
        if isinstance(raw, bool):
            values[f.name] = raw
            continue
        try:
            values[f.name] = parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{source}={raw!r}: {exc}") from exc
    if "otlp_endpoint" not in values and environ.get(OTEL_ENDPOINT_ENV):
        values["otlp_endpoint"] = environ[OTEL_ENDPOINT_ENV].strip()  # the standard variable
    if "models_dir" not in values or not str(values["models_dir"]):
        raise ConfigError(
            f"{flag_name('models_dir')} (or {env_name('models_dir')}) is required: the volume "
            "that `hubless-fetch fetch` filled"
        )
    return Settings(**values)
