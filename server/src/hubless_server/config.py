"""Server settings: one dataclass, every field a flag and an environment variable.

``--foo-bar`` and ``HUBLESS_FOO_BAR`` set the same field; the flag wins over the variable,
the variable over the default. :data:`FIELDS` is the single documented list (the README's
table and ``hubless-serve --help`` are generated from the same help strings).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hubless_server.tasks import TASKS

ENV_PREFIX = "HUBLESS_"
OTEL_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
"""The OpenTelemetry standard variable, read when ``--otlp-endpoint`` is not given."""
DTYPES = ("auto", "float32", "bfloat16", "float16")
BACKENDS = ("auto", "torch", "onnx")
DEVICES = ("auto", "cpu", "cuda")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
READY_WHEN = ("all", "any")
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class ConfigError(ValueError):
    """A flag or environment variable has an invalid value."""


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _tasks(value: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in value.split(",") if t.strip())
    if not names or names == ("all",):
        return TASKS
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
    return tuple(dict.fromkeys(names))


def _overrides(value: str, choices: Sequence[str] = DTYPES, what: str = "DTYPE") -> dict[str, str]:
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


def _backend_overrides(value: str) -> dict[str, str]:
    """``embedding=torch,bart-large-mnli=onnx`` -> {key: backend}."""
    return _overrides(value, BACKENDS, "BACKEND")


def _choice(options: Sequence[str], upper: bool = False) -> Callable[[str], str]:
    def parse(value: str) -> str:
        value = value.strip().upper() if upper else value.strip().lower()
        if value not in options:
            raise ValueError(f"{value!r} is not one of {', '.join(options)}")
        return value

    return parse


def _opt_path(value: str) -> Path | None:
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


def _meta(parse: Callable[[str], Any], help: str, flag_bool: bool = False) -> dict[str, Any]:
    return {"parse": parse, "help": help, "bool": flag_bool}


@dataclass(frozen=True)
class Settings:
    """Everything ``hubless-serve`` can be told. Field ``foo_bar`` is ``--foo-bar`` /
    ``HUBLESS_FOO_BAR``."""

    models_dir: Path = field(
        default=Path(), metadata=_meta(Path, "models volume (read-only is fine); required")
    )
    host: str = field(default="0.0.0.0", metadata=_meta(str, "gRPC listen address"))
    port: int = field(default=50051, metadata=_meta(int, "gRPC port; 0 picks a free port (logged)"))
    port_file: Path | None = field(
        default=None, metadata=_meta(_opt_path, "write the bound gRPC port to this file")
    )
    metrics_port: int = field(
        default=9090, metadata=_meta(int, "Prometheus /metrics port; 0 disables")
    )
    metrics_host: str = field(
        default="",
        metadata=_meta(str, "/metrics listen address; empty = the same as --host"),
    )
    health_port: int = field(
        default=0,
        metadata=_meta(
            int,
            "extra plaintext port serving only grpc.health.v1 (probes while the gRPC port "
            "has TLS); 0 = off",
        ),
    )
    http_port: int = field(
        default=0,
        metadata=_meta(
            int,
            "HTTP/JSON port beside gRPC (OpenAI-compatible /v1/embeddings, /v1/tasks/*, "
            "/healthz, /readyz) on --host, with the same TLS, tokens and limits; 0 = off",
        ),
    )
    tls_cert_file: Path | None = field(
        default=None,
        metadata=_meta(
            _opt_path,
            "PEM certificate (chain) of the gRPC, HTTP and metrics ports; turns on TLS",
        ),
    )
    tls_key_file: Path | None = field(
        default=None, metadata=_meta(_opt_path, "PEM private key of --tls-cert-file")
    )
    tls_client_ca_file: Path | None = field(
        default=None,
        metadata=_meta(
            _opt_path, "PEM CA bundle: require client certificates signed by it (mutual TLS)"
        ),
    )
    auth_token_file: Path | None = field(
        default=None,
        metadata=_meta(
            _opt_path,
            "file of accepted bearer tokens, one per line, re-read on change; every RPC but "
            "health (and reflection) then needs `authorization: Bearer <token>`",
        ),
    )
    auth_reflection: bool = field(
        default=False,
        metadata=_meta(_bool, "reflection needs a token too (default: open)", flag_bool=True),
    )
    reflection: bool = field(
        default=True, metadata=_meta(_bool, "serve gRPC server reflection", flag_bool=True)
    )
    max_caller_concurrency: int = field(
        default=0,
        metadata=_meta(
            int,
            "RPCs in flight per caller (token, or client IP without tokens); beyond it "
            "RESOURCE_EXHAUSTED; 0 = no limit",
        ),
    )
    tasks: tuple[str, ...] = field(
        default=TASKS, metadata=_meta(_tasks, "comma list of tasks to serve; default all")
    )
    device: str = field(default="auto", metadata=_meta(_choice(DEVICES), "auto, cpu or cuda"))
    dtype: str = field(
        default="auto",
        metadata=_meta(
            _choice(DTYPES),
            "auto (bfloat16 on CPUs with native bf16, float16 on CUDA, else float32), "
            "float32, bfloat16 or float16",
        ),
    )
    dtype_overrides: dict[str, str] = field(
        default_factory=dict,
        metadata=_meta(_overrides, "per task or model, e.g. embedding=float32,bart-large=bfloat16"),
    )
    backend: str = field(
        default="auto",
        metadata=_meta(
            _choice(BACKENDS),
            "what runs the encoder models (embedding, emotion, sentiment, zero-shot): auto "
            "(ONNX Runtime for a model with an ONNX artifact from hubless-optimize that would "
            "otherwise run PyTorch float32 on the CPU, else PyTorch), torch or onnx",
        ),
    )
    backend_overrides: dict[str, str] = field(
        default_factory=dict,
        metadata=_meta(_backend_overrides, "per task or model, e.g. embedding=torch"),
    )
    threads: int = field(
        default=0,
        metadata=_meta(
            int,
            "torch (and ONNX Runtime) intra-op threads; 0 = the CPUs this process may use",
        ),
    )
    max_batch_size: int = field(default=64, metadata=_meta(int, "items per batch"))
    max_batch_tokens: int = field(
        default=8192,
        metadata=_meta(int, "padded tokens per batch: longest item x rows <= this"),
    )
    max_chunk_tokens: int = field(
        default=16384,
        metadata=_meta(int, "padded tokens per forward pass; a bigger batch runs in chunks"),
    )
    batch_wait_ms: float = field(
        default=0.0, metadata=_meta(float, "wait this long for a batch to fill; 0 = never wait")
    )
    max_queue: int = field(
        default=1024,
        metadata=_meta(int, "queued items per model; beyond it RESOURCE_EXHAUSTED"),
    )
    continuous_batching: bool = field(
        default=True,
        metadata=_meta(
            _bool,
            "generation models decode every running request together, one token step at a "
            "time (off: unary requests batch whole, each stream decodes alone)",
            flag_bool=True,
        ),
    )
    max_running_sequences: int = field(
        default=32,
        metadata=_meta(
            int, "generation requests decoding at once per model; the others wait in the queue"
        ),
    )
    max_kv_tokens: int = field(
        default=16384,
        metadata=_meta(
            int,
            "KV-cache positions per generation model: running requests x the longest "
            "(prompt + new tokens) <= this (DialoGPT-medium fp32: 192 KiB each)",
        ),
    )
    max_texts: int = field(default=64, metadata=_meta(int, "texts (or turns) per request"))
    max_text_chars: int = field(default=20000, metadata=_meta(int, "characters per text"))
    max_labels: int = field(default=32, metadata=_meta(int, "zero-shot candidate labels"))
    max_new_tokens: int = field(
        default=512, metadata=_meta(int, "cap on chat max_new_tokens and summary max_length")
    )
    default_new_tokens: int = field(
        default=64, metadata=_meta(int, "chat max_new_tokens when the request leaves it unset")
    )
    summary_max_length: int = field(
        default=128, metadata=_meta(int, "summary max_length when the request leaves it unset")
    )
    summary_min_length: int = field(
        default=0, metadata=_meta(int, "summary min_length when the request leaves it unset")
    )
    max_beams: int = field(default=4, metadata=_meta(int, "cap on summarization num_beams"))
    max_zero_shot_pairs: int = field(
        default=256,
        metadata=_meta(
            int,
            "zero-shot texts x candidate_labels per request; each pair is one forward row "
            "(bart-large-mnli on CPU: 64 x 32 took 37.9 s, 256 pairs ~5 s)",
        ),
    )
    max_generation_tokens: int = field(
        default=16384,
        metadata=_meta(
            int,
            "summarization texts x num_beams x max_length per request, the decoder steps it "
            "may cost (64 texts, greedy, max_length 128 = 8192)",
        ),
    )
    inference_concurrency: int = field(
        default=1,
        metadata=_meta(int, "forward passes run at once across all models (see README)"),
    )
    load_alternates: bool = field(
        default=True,
        metadata=_meta(
            _bool,
            "also load installed non-default models of single-model tasks (sentiment always "
            "loads all)",
            flag_bool=True,
        ),
    )
    drain_delay: float = field(
        default=2.0,
        metadata=_meta(
            float,
            "seconds after SIGTERM/SIGINT during which health is NOT_SERVING and new RPCs get "
            "UNAVAILABLE/SHUTTING_DOWN while the listener stays open (load balancers catch "
            "up), before the --grace-period drain",
        ),
    )
    grace_period: float = field(
        default=20.0, metadata=_meta(float, "seconds to drain in-flight RPCs on SIGTERM/SIGINT")
    )
    malloc_trim_interval: float = field(
        default=2.0,
        metadata=_meta(
            float,
            "every this many seconds, give freed heap memory back to the system "
            "(glibc malloc_trim) if RssAnon grew by 32 MiB since the last time; 0 = off",
        ),
    )
    verify_sha256: bool = field(
        default=False,
        metadata=_meta(
            _bool, "hash every file against the manifest before loading (default: sizes)", True
        ),
    )
    reload_interval: float = field(
        default=10.0,
        metadata=_meta(
            float,
            "seconds between checks of the volume manifest; new, changed and removed models "
            "are loaded, swapped in and unloaded live; 0 = off (SIGHUP still reloads)",
        ),
    )
    ready_when: str = field(
        default="all",
        metadata=_meta(
            _choice(READY_WHEN),
            'whole-server health "" is SERVING when all served tasks have a model, or any',
        ),
    )
    require_models: bool = field(
        default=False,
        metadata=_meta(
            _bool,
            "after the initial loading, exit with status 3, naming them, if served tasks "
            "have no model (a volume that lacks what --tasks serves)",
            flag_bool=True,
        ),
    )
    max_model_memory: int = field(
        default=0,
        metadata=_meta(
            parse_size,
            "weights budget, e.g. 8G: an update that would not fit beside the old version "
            "unloads the old one first; 0 = off",
        ),
    )
    otlp_endpoint: str = field(
        default="",
        metadata=_meta(
            str,
            "OpenTelemetry tracing: the OTLP/gRPC collector, e.g. http://otel-collector:4317 "
            "(also read from OTEL_EXPORTER_OTLP_ENDPOINT); empty = tracing off",
        ),
    )
    log_format: str = field(default="text", metadata=_meta(_choice(LOG_FORMATS), "text or json"))
    log_level: str = field(
        default="INFO", metadata=_meta(_choice(LOG_LEVELS, upper=True), "log level")
    )

    def __post_init__(self) -> None:
        problems = []
        for name in (
            "max_batch_size",
            "max_batch_tokens",
            "max_chunk_tokens",
            "max_queue",
            "max_running_sequences",
            "max_kv_tokens",
            "max_texts",
            "max_text_chars",
            "max_labels",
            "max_new_tokens",
            "default_new_tokens",
            "summary_max_length",
            "max_beams",
            "max_zero_shot_pairs",
            "max_generation_tokens",
            "inference_concurrency",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{flag_name(name)} must be at least 1")
        for name in (
            "port",
            "metrics_port",
            "health_port",
            "http_port",
            "max_caller_concurrency",
            "threads",
            "summary_min_length",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{flag_name(name)} must not be negative")
        for name in (
            "batch_wait_ms",
            "drain_delay",
            "grace_period",
            "malloc_trim_interval",
            "reload_interval",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{flag_name(name)} must not be negative")
        if self.max_queue < self.max_texts:
            problems.append("--max-queue must be at least --max-texts")
        if self.default_new_tokens > self.max_new_tokens:
            problems.append("--default-new-tokens must not exceed --max-new-tokens")
        if self.summary_max_length > self.max_new_tokens:
            problems.append("--summary-max-length must not exceed --max-new-tokens")
        if self.summary_min_length > self.summary_max_length:
            problems.append("--summary-min-length must not exceed --summary-max-length")
        if self.max_generation_tokens < self.summary_max_length:
            problems.append("--max-generation-tokens must be at least --summary-max-length")
        problems.extend(self._transport_problems())
        if problems:
            raise ConfigError("; ".join(problems))

    def _transport_problems(self) -> list[str]:
        """TLS files come as a pair (a client CA only with them); ports differ; token-only
        options need tokens."""
        problems = []
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            problems.append("--tls-cert-file and --tls-key-file go together: give both or neither")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            problems.append(
                "--tls-client-ca-file needs --tls-cert-file and --tls-key-file (mutual TLS is TLS)"
            )
        if self.auth_reflection and self.auth_token_file is None:
            problems.append("--auth-reflection needs --auth-token-file")
        ports = {"--port": self.port, "--metrics-port": self.metrics_port}
        if self.health_port:
            clash = [flag for flag, port in ports.items() if port == self.health_port]
            if clash:
                problems.append(f"--health-port must differ from {' and '.join(clash)}")
        if self.http_port:
            ports["--health-port"] = self.health_port
            clash = [flag for flag, port in ports.items() if port == self.http_port]
            if clash:
                problems.append(f"--http-port must differ from {' and '.join(clash)}")
        return problems

    @property
    def intra_op_threads(self) -> int:
        """``threads``, or the number of CPUs this process may run on."""
        return self.threads or available_cpus()

    def dtype_for(self, task: str, model: str) -> str:
        """The configured (maybe "auto") dtype of one model: model override, task override,
        then ``dtype``."""
        return self.dtype_overrides.get(model) or self.dtype_overrides.get(task) or self.dtype

    def backend_for(self, task: str, model: str) -> str:
        """The configured (maybe "auto") backend of one model: model override, task
        override, then ``backend``."""
        overrides = self.backend_overrides
        return overrides.get(model) or overrides.get(task) or self.backend


def available_cpus(cgroup_cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPUs this process may use: its CPU affinity, capped by a cgroup v2 CPU quota.

    A container with a CPU limit still sees every CPU of the node; running more torch
    threads than its quota only gets them throttled.
    """
    try:
        cpus = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        cpus = max(1, os.cpu_count() or 1)
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


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
    if parse in (Path, _opt_path):
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


def _with_default(help_text: str, default: str, flag_bool: bool) -> str:
    """A setting's help with its default, unless the text already says it (or "required")."""
    if "default" in help_text or "required" in help_text:
        return help_text
    if flag_bool:
        default = "on" if default == "True" else "off"
    return f"{help_text} (default: {default or 'unset'})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hubless-serve",
        description="Serve the models of a hubless volume over gRPC, offline. Every flag "
        f"--foo-bar can also be set as {ENV_PREFIX}FOO_BAR; the flag wins.",
    )
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
