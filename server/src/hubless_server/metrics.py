"""Prometheus metrics (served on ``--metrics-port`` at ``/metrics`` by :mod:`.metrics_http`).

Metric objects are module-level (one registry per process); tests read them through
:data:`REGISTRY`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)

REQUESTS = Counter(
    "hubless_requests",
    "RPCs finished, by method and gRPC status code",
    ["method", "code"],
    registry=REGISTRY,
)
ERRORS = Counter(
    "hubless_errors",
    "RPCs that ended with a status other than OK, by method and code",
    ["method", "code"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "hubless_request_latency_seconds",
    "RPC latency from receipt to the last response byte handed to gRPC",
    ["method"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "hubless_batch_size",
    "Items per executed batch",
    ["model"],
    buckets=_BATCH_BUCKETS,
    registry=REGISTRY,
)
BATCH_TOKENS = Histogram(
    "hubless_batch_padded_tokens",
    "Padded tokens per executed batch (longest item x rows)",
    ["model"],
    buckets=_TOKEN_BUCKETS,
    registry=REGISTRY,
)
BATCH_SECONDS = Histogram(
    "hubless_batch_seconds",
    "Wall time of one batch's predict (including the wait for the inference gate)",
    ["model"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "hubless_queue_depth", "Items waiting in a model's queue", ["model"], registry=REGISTRY
)
DROPPED = Counter(
    "hubless_dropped_items",
    "Queued items never computed: cancelled, expired (deadline) or rejected (queue full)",
    ["model", "reason"],
    registry=REGISTRY,
)
UNDECODABLE = Counter(
    "hubless_undecodable_requests",
    "Requests whose body did not parse as the method's request type (INVALID_ARGUMENT), by method",
    ["method"],
    registry=REGISTRY,
)
MODEL_LOAD_SECONDS = Gauge(
    "hubless_model_load_seconds", "Seconds the model took to load", ["model"], registry=REGISTRY
)
MODEL_READY = Gauge(
    "hubless_model_ready",
    "1 when the model is loaded and serving",
    ["model", "task"],
    registry=REGISTRY,
)
MODEL_RELOADS = Counter(
    "hubless_model_reloads",
    "Live updates from the volume manifest, by model and result: loaded (a new model or "
    "commit swapped in), failed (the old version, if any, keeps serving), removed (drained "
    "and unloaded), unloaded (a superseded alternate), unchanged",
    ["model", "result"],
    registry=REGISTRY,
)


class PrometheusObserver:
    """Batching figures -> Prometheus (see :class:`hubless_server.batching.BatchObserver`)."""

    def queue_depth(self, model: str, depth: int) -> None:
        QUEUE_DEPTH.labels(model).set(depth)

    def batch_done(self, model: str, size: int, padded_tokens: int, seconds: float) -> None:
        BATCH_SIZE.labels(model).observe(size)
        BATCH_TOKENS.labels(model).observe(padded_tokens)
        BATCH_SECONDS.labels(model).observe(seconds)

    def dropped(self, model: str, reason: str, count: int) -> None:
        DROPPED.labels(model, reason).inc(count)


def observe_rpc(method: str, code: str, seconds: float) -> None:
    REQUESTS.labels(method, code).inc()
    if code != "OK":
        ERRORS.labels(method, code).inc()
    LATENCY.labels(method).observe(seconds)
