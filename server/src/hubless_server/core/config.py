"""Server settings: one dataclass, every field a flag and an environment variable.

``--foo-bar`` and ``HUBLESS_FOO_BAR`` set the same field; the flag wins over the variable,
the variable over the default. The fields' metadata (parser, help) is the single documented
list: :mod:`.flags` builds ``hubless-serve --help``, the environment variables and the
docs' table from it; :mod:`.values` holds the parsers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hubless_server.core.tasks import TASKS
from hubless_server.core.threads import available_cpus
from hubless_server.core.values import (
    BACKENDS,
    DEVICES,
    DTYPES,
    EGRESS_MODES,
    GOLDEN_CHECKS,
    LOG_FORMATS,
    LOG_LEVELS,
    READY_WHEN,
    ConfigError,
    choice,
    flag_name,
    meta,
    optional_path,
    parse_backend_overrides,
    parse_bool,
    parse_duration,
    parse_overrides,
    parse_size,
    parse_tasks,
)


@dataclass(frozen=True)
class Settings:
    """Everything ``hubless-serve`` can be told. Field ``foo_bar`` is ``--foo-bar`` /
    ``HUBLESS_FOO_BAR``."""

    models_dir: Path = field(
        default=Path(), metadata=meta(Path, "models volume (read-only is fine); required")
    )
    host: str = field(default="0.0.0.0", metadata=meta(str, "gRPC listen address"))
    port: int = field(default=50051, metadata=meta(int, "gRPC port; 0 picks a free port (logged)"))
    port_file: Path | None = field(
        default=None, metadata=meta(optional_path, "write the bound gRPC port to this file")
    )
    metrics_port: int = field(
        default=9090, metadata=meta(int, "Prometheus /metrics port; 0 disables")
    )
    metrics_host: str = field(
        default="",
        metadata=meta(str, "/metrics listen address; empty = the same as --host"),
    )
    health_port: int = field(
        default=0,
        metadata=meta(
            int,
            "extra plaintext port serving only grpc.health.v1 (probes while the gRPC port "
            "has TLS); 0 = off",
        ),
    )
    http_port: int = field(
        default=0,
        metadata=meta(
            int,
            "HTTP/JSON port beside gRPC (OpenAI-compatible /v1/embeddings, /v1/tasks/*, "
            "/healthz, /readyz) on --host, with the same TLS, tokens and limits; 0 = off",
        ),
    )
    http_max_connections: int = field(
        default=0,
        metadata=meta(
            int,
            "open HTTP connections at most; a new one beyond it closes the oldest idle one "
            "(or is refused when none is idle); 0 = a quarter of the open-files limit, "
            "64 to 4096",
        ),
    )
    http_max_connections_per_peer: int = field(
        default=0,
        metadata=meta(
            int,
            "open HTTP connections from one client address at most (a proxy in front is one "
            "address), the oldest idle one closed first; 0 = half of --http-max-connections",
        ),
    )
    tls_cert_file: Path | None = field(
        default=None,
        metadata=meta(
            optional_path,
            "PEM certificate (chain) of the gRPC, HTTP and metrics ports; turns on TLS",
        ),
    )
    tls_key_file: Path | None = field(
        default=None, metadata=meta(optional_path, "PEM private key of --tls-cert-file")
    )
    tls_client_ca_file: Path | None = field(
        default=None,
        metadata=meta(
            optional_path, "PEM CA bundle: require client certificates signed by it (mutual TLS)"
        ),
    )
    auth_token_file: Path | None = field(
        default=None,
        metadata=meta(
            optional_path,
            "file of accepted bearer tokens, one per line, re-read on change; every RPC but "
            "health (and reflection) then needs `authorization: Bearer <token>`",
        ),
    )
    auth_reflection: bool = field(
        default=False,
        metadata=meta(parse_bool, "reflection needs a token too (default: open)", flag_bool=True),
    )
    reflection: bool = field(
        default=True, metadata=meta(parse_bool, "serve gRPC server reflection", flag_bool=True)
    )
    max_caller_concurrency: int = field(
        default=0,
        metadata=meta(
            int,
            "RPCs in flight per caller (token, or client IP without tokens); beyond it "
            "RESOURCE_EXHAUSTED; 0 = no limit",
        ),
    )
    tasks: tuple[str, ...] = field(
        default=TASKS, metadata=meta(parse_tasks, "comma list of tasks to serve; default all")
    )
    device: str = field(default="auto", metadata=meta(choice(DEVICES), "auto, cpu or cuda"))
    dtype: str = field(
        default="auto",
        metadata=meta(
            choice(DTYPES),
            "auto (bfloat16 on CPUs with native bf16, float16 on CUDA, else float32), "
            "float32, bfloat16 or float16",
        ),
    )
    dtype_overrides: dict[str, str] = field(
        default_factory=dict,
        metadata=meta(
            parse_overrides, "per task or model, e.g. embedding=float32,bart-large=bfloat16"
        ),
    )
    backend: str = field(
        default="auto",
        metadata=meta(
            choice(BACKENDS),
            "what runs the encoder models (embedding, emotion, sentiment, zero-shot): auto "
            "(ONNX Runtime for a model with an ONNX artifact from hubless-optimize that would "
            "otherwise run PyTorch float32 on the CPU, else PyTorch), torch or onnx",
        ),
    )
    backend_overrides: dict[str, str] = field(
        default_factory=dict,
        metadata=meta(parse_backend_overrides, "per task or model, e.g. embedding=torch"),
    )
    threads: int = field(
        default=0,
        metadata=meta(
            int,
            "torch (and ONNX Runtime) intra-op threads; 0 = the CPUs this process may use",
        ),
    )
    max_batch_size: int = field(default=64, metadata=meta(int, "items per batch"))
    max_batch_tokens: int = field(
        default=8192,
        metadata=meta(
            int,
            "padded tokens per batch: longest item x rows <= this; generation: prompt tokens "
            "prefilled between two decode steps (a longer chat prompt in chunks)",
        ),
    )
    max_chunk_tokens: int = field(
        default=16384,
        metadata=meta(int, "padded tokens per forward pass; a bigger batch runs in chunks"),
    )
    batch_wait_ms: float = field(
        default=0.0, metadata=meta(float, "wait this long for a batch to fill; 0 = never wait")
    )
    max_queue: int = field(
        default=1024,
        metadata=meta(int, "queued items per model; beyond it RESOURCE_EXHAUSTED"),
    )
    continuous_batching: bool = field(
        default=True,
        metadata=meta(
            parse_bool,
            "generation models decode every running request together, one token step at a "
            "time (off: unary requests batch whole, each stream decodes alone)",
            flag_bool=True,
        ),
    )
    max_running_sequences: int = field(
        default=32,
        metadata=meta(
            int, "generation requests decoding at once per model; the others wait in the queue"
        ),
    )
    max_kv_tokens: int = field(
        default=16384,
        metadata=meta(
            int,
            "KV-cache positions per generation model: running requests x the longest "
            "(prompt + new tokens) <= this (DialoGPT-medium fp32: 192 KiB each)",
        ),
    )
    max_texts: int = field(default=64, metadata=meta(int, "texts (or turns) per request"))
    max_text_chars: int = field(default=20000, metadata=meta(int, "characters per text"))
    max_labels: int = field(default=32, metadata=meta(int, "zero-shot candidate labels"))
    max_new_tokens: int = field(
        default=512, metadata=meta(int, "cap on chat max_new_tokens and summary max_length")
    )
    default_new_tokens: int = field(
        default=64, metadata=meta(int, "chat max_new_tokens when the request leaves it unset")
    )
    summary_max_length: int = field(
        default=128, metadata=meta(int, "summary max_length when the request leaves it unset")
    )
    summary_min_length: int = field(
        default=0, metadata=meta(int, "summary min_length when the request leaves it unset")
    )
    max_beams: int = field(default=4, metadata=meta(int, "cap on summarization num_beams"))
    max_zero_shot_pairs: int = field(
        default=256,
        metadata=meta(
            int,
            "zero-shot texts x candidate_labels per request; each pair is one forward row "
            "(bart-large-mnli on CPU: 64 x 32 took 37.9 s, 256 pairs ~5 s)",
        ),
    )
    max_generation_tokens: int = field(
        default=16384,
        metadata=meta(
            int,
            "summarization texts x num_beams x max_length per request, the decoder steps it "
            "may cost (64 texts, greedy, max_length 128 = 8192)",
        ),
    )
    inference_concurrency: int = field(
        default=1,
        metadata=meta(
            int,
            "forward passes run at once across all models; docs/operations.md, Precision and "
            "threads",
        ),
    )
    load_alternates: bool = field(
        default=True,
        metadata=meta(
            parse_bool,
            "also load installed non-default models of single-model tasks (sentiment always "
            "loads all)",
            flag_bool=True,
        ),
    )
    drain_delay: float = field(
        default=2.0,
        metadata=meta(
            float,
            "seconds after SIGTERM/SIGINT during which health is NOT_SERVING and new RPCs get "
            "UNAVAILABLE/SHUTTING_DOWN while the listener stays open (load balancers catch "
            "up), before the --grace-period drain",
        ),
    )
    grace_period: float = field(
        default=20.0, metadata=meta(float, "seconds to drain in-flight RPCs on SIGTERM/SIGINT")
    )
    malloc_trim_interval: float = field(
        default=2.0,
        metadata=meta(
            float,
            "every this many seconds, give freed heap memory back to the system "
            "(glibc malloc_trim) if RssAnon grew by 32 MiB since the last time; 0 = off; "
            "docs/operations.md, Memory",
        ),
    )
    verify_sha256: bool = field(
        default=False,
        metadata=meta(
            parse_bool, "hash every file against the manifest before loading (default: sizes)", True
        ),
    )
    trusted_key: Path | None = field(
        default=None,
        metadata=meta(
            optional_path,
            "PEM public key of the models' signer (hubless-fetch sign): a model whose "
            "signature is missing or does not verify with it is not loaded (FAILED, the "
            "reason in ListModels); a live update to such a commit keeps the old one "
            "serving; docs/signing.md",
        ),
    )
    golden_check: str = field(
        default="refuse",
        metadata={
            **meta(
                choice(GOLDEN_CHECKS),
                "after each load, run the model's golden outputs (hubless-optimize) through "
                "it: refuse a model that answers beyond the tolerances of its precision "
                "(FAILED, the difference in ListModels), warn (serve it, say why) or off; a "
                "model without goldens loads as before; docs/signing.md",
            ),
            "metavar": "refuse|warn|off",
        },
    )
    reload_interval: float = field(
        default=10.0,
        metadata=meta(
            float,
            "seconds between checks of the volume manifest; new, changed and removed models "
            "are loaded, swapped in and unloaded live; 0 = off (SIGHUP still reloads)",
        ),
    )
    ready_when: str = field(
        default="all",
        metadata=meta(
            choice(READY_WHEN),
            'whole-server health "" is SERVING when every task with a model installed (every '
            "task of --tasks when it names some, or with --require-models) has one loaded, or "
            "when any task has",
        ),
    )
    require_models: bool = field(
        default=False,
        metadata=meta(
            parse_bool,
            "after the initial loading, exit with status 3, naming them, if served tasks "
            "have no model (a volume that lacks what --tasks serves)",
            flag_bool=True,
        ),
    )
    max_model_memory: int = field(
        default=0,
        metadata=meta(
            parse_size,
            "weights budget, e.g. 8G: an update that would not fit beside the old version "
            "unloads the old one first; 0 = off",
        ),
    )
    otlp_endpoint: str = field(
        default="",
        metadata=meta(
            str,
            "OpenTelemetry tracing: the OTLP/gRPC collector, e.g. http://otel-collector:4317 "
            "(also read from OTEL_EXPORTER_OTLP_ENDPOINT); empty = tracing off",
        ),
    )
    log_format: str = field(default="text", metadata=meta(choice(LOG_FORMATS), "text or json"))
    log_level: str = field(
        default="INFO", metadata=meta(choice(LOG_LEVELS, upper=True), "log level")
    )
    assert_no_egress: str = field(
        default="off",
        metadata={
            **meta(
                choice(EGRESS_MODES),
                "air-gapped installs: at start and every --egress-check-interval, try a DNS "
                "lookup and a TCP connection to the hub (HF_ENDPOINT, else huggingface.co); "
                "if either succeeds, log an error and set hubless_egress_reachable (warn), and "
                'report whole-server health "" NOT_SERVING (refuse); docs/air-gap.md',
            ),
            "metavar": "off|warn|refuse",
        },
    )
    egress_check_interval: float = field(
        default=300.0,
        metadata={
            **meta(
                parse_duration,
                "time between two --assert-no-egress checks: seconds, or 5m, 1h; 0 = at start only",
            ),
            "metavar": "DURATION",
        },
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
            "http_max_connections",
            "http_max_connections_per_peer",
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
