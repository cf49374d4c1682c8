"""Parsers of setting values and the constants they check against.

Each field of :class:`~hubless_server.core.config.Settings` names its parser here; a parser
raises ``ValueError`` with a message a person can act on, and ``load_settings`` turns it into
a :class:`ConfigError` naming the flag or variable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hubless_server.core.tasks import TASKS

ENV_PREFIX = "HUBLESS_"
OTEL_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
"""The OpenTelemetry standard variable, read when ``--otlp-endpoint`` is not given."""
DTYPES = ("auto", "float32", "bfloat16", "float16")
BACKENDS = ("auto", "torch", "onnx")
DEVICES = ("auto", "cpu", "cuda")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
READY_WHEN = ("all", "any")
GOLDEN_CHECKS = ("refuse", "warn", "off")
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class ConfigError(ValueError):
    """A flag or environment variable has an invalid value."""


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def parse_tasks(value: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in value.split(",") if t.strip())
    if not names or names == ("all",):
        return TASKS
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
    return tuple(dict.fromkeys(names))


def parse_overrides(
    value: str, choices: Sequence[str] = DTYPES, what: str = "DTYPE"
) -> dict[str, str]:
    """``embedding=bfloat16,dialogpt-small=float32`` -> {key: dtype}; keys are tasks or
    model names (a model name wins over its task)."""
    result: dict[str, str] = {}
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        key, sep, choice = part.partition("=")
        key, choice = key.strip(), choice.strip()
        if not sep or not key or choice not in choices:
            raise ValueError(
                f"bad override {part!r}: expected TASK_OR_MODEL={what} with {what} one of "
                f"{', '.join(choices)}"
            )
        result[key] = choice
    return result


def parse_backend_overrides(value: str) -> dict[str, str]:
    """``embedding=torch,bart-large-mnli=onnx`` -> {key: backend}."""
    return parse_overrides(value, BACKENDS, "BACKEND")


def choice(options: Sequence[str], upper: bool = False) -> Callable[[str], str]:
    def parse(value: str) -> str:
        value = value.strip().upper() if upper else value.strip().lower()
        if value not in options:
            raise ValueError(f"{value!r} is not one of {', '.join(options)}")
        return value

    return parse


def optional_path(value: str) -> Path | None:
    return Path(value) if value else None


def parse_size(value: str) -> int:
    """Bytes from ``8G``, ``512Mi``, ``1.5GiB``, ``1000000`` (K/M/G/T are powers of 1024);
    ``0``, ``off`` or empty: 0."""
    text = value.strip().lower().replace(" ", "")
    if text in ("", "0", "off", "none"):
        return 0
    number = text.rstrip("bi")
    unit = number[-1:] if number[-1:] in _SIZE_UNITS else ""
    number = number[: len(number) - len(unit)]
    try:
        amount = float(number)
    except ValueError:
        raise ValueError(f"not a size: {value!r} (e.g. 8G, 512M, 1.5GiB)") from None
    if amount < 0 or amount != amount:
        raise ValueError(f"not a size: {value!r}")
    return int(amount * _SIZE_UNITS[unit])


def meta(parse: Callable[[str], Any], help: str, flag_bool: bool = False) -> dict[str, Any]:
    return {"parse": parse, "help": help, "bool": flag_bool}


def flag_name(field_name: str) -> str:
    """``max_texts`` -> ``--max-texts``."""
    return "--" + field_name.replace("_", "-")


def env_name(field_name: str) -> str:
    """``max_texts`` -> ``HUBLESS_MAX_TEXTS``."""
    return ENV_PREFIX + field_name.upper()


EGRESS_MODES = ("off", "warn", "refuse")
"""``--assert-no-egress``: no check, log and count a reachable hub, or also NOT_SERVING."""
_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str) -> float:
    """Seconds from ``300``, ``300s``, ``5m``, ``1.5h``; ``0`` or ``off``: 0."""
    text = value.strip().lower().replace(" ", "")
    if text in ("0", "off", "none"):
        return 0.0
    unit = text[-1:] if text[-1:] in _DURATION_UNITS else ""
    number = text[: len(text) - len(unit)]
    try:
        amount = float(number)
    except ValueError:
        raise ValueError(f"not a duration: {value!r} (e.g. 300, 300s, 5m, 1h)") from None
    if amount < 0 or amount != amount or amount == float("inf"):
        raise ValueError(f"not a duration: {value!r} (a number of seconds, minutes or hours)")
    return amount * _DURATION_UNITS[unit]
