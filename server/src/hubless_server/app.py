"""Assemble and run the gRPC server: services, health, reflection, metrics, loading, drain.

The server listens before any model is loaded: every health status starts NOT_SERVING (the
Models service SERVING), models load in a background thread, and each task's status flips to
SERVING as soon as its default model is ready. The overall status ``""`` becomes SERVING once
the initial loading is over and every task with a model installed has one loaded
(``--ready-when all``, the default; every task of ``--tasks`` when it names some, or with
``--require-models``: :func:`awaited_tasks`) or at least one task does (``--ready-when any``).
After the initial loading :class:`~hubless_server.models.reload.Reloader` follows the volume
manifest (``--reload-interval``, SIGHUP: :meth:`HublessServer.reload`); a task keeps SERVING
through a swap of its model. With ``--assert-no-egress refuse`` ``""`` is also held
NOT_SERVING while the hub is reachable (:class:`~.observability.egress.EgressCheck`).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from hubless.v1 import models_pb2
from hubless_server.core.config import Settings
from hubless_server.core.tasks import TASK_SPECS, TASKS
from hubless_server.core.threads import available_cpus
from hubless_server.inference.batching import Batcher, BatchPolicy
from hubless_server.inference.gate import InferenceGate
from hubless_server.models.registry import Registry, RuntimeFactory, State
from hubless_server.models.reload import ManifestWatch, Reloader
from hubless_server.observability import metrics
from hubless_server.observability.egress import EgressCheck, hub_endpoint
from hubless_server.observability.malloc_trim import MallocTrimmer
from hubless_server.observability.metrics import PrometheusObserver, ServedModels
from hubless_server.observability.metrics_http import MetricsServer
from hubless_server.observability.tracing import Tracing
from hubless_server.runtimes.base import ModelRuntime
from hubless_server.runtimes.placement import resolve_device
from hubless_server.services import SERVICERS
from hubless_server.services.common import ServiceDeps
from hubless_server.services.models import ModelsService
from hubless_server.services.wire import add_service
from hubless_server.transport.chain import Transport
from hubless_server.transport.guarded import add_health
from hubless_server.transport.open_files import throttle_loop_errors
from hubless_server.transport.reflection import enable_reflection
from hubless_volume import atomic_write_text

log = logging.getLogger(__name__)

SERVICE_OF_TASK = {spec.name: spec.service_name for spec in TASK_SPECS}
"""Task -> gRPC service name, which is also the task's health service name."""
MODELS_DESCRIPTOR = models_pb2.DESCRIPTOR.services_by_name["ModelsService"]
MODELS_SERVICE = MODELS_DESCRIPTOR.full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
OVERALL = ""

_GRPC_OPTIONS = [
    ("grpc.so_reuseport", 0),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
]


def _address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def write_port_file(path: Path, port: int) -> None:
    """Write ``port`` atomically (readers never see an empty file):
    :func:`hubless_volume.atomic_write_text`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, f"{port}\n")


def awaited_tasks(registry: Registry, settings: Settings) -> tuple[str, ...]:
    """The tasks whole-server readiness waits for under ``--ready-when all``: every served
    task when ``--tasks`` names some or ``--require-models`` is on, otherwise the tasks with a
    model on the volume (in its manifest, loadable or not). A subset fetch (``hubless-fetch
    fetch all-minilm-l6-v2 distilbert-sst2``) is then ready once those load, while a model
    that is installed but fails to load still keeps the server NOT_SERVING."""
    if settings.require_models or set(settings.tasks) != set(TASKS):
        return registry.tasks
    installed = {r.task for r in registry.records.values() if r.state is not State.MISSING}
    return tuple(t for t in registry.tasks if t in installed)


class HublessServer:
    """One server instance; ``await start()``, then ``await stop(grace)``."""

    def __init__(
        self,
        settings: Settings,
        runtime_factory: RuntimeFactory | None = None,
        native_bf16: bool | None = None,
        tracer_provider: Any = None,
    ) -> None:
        """``tracer_provider``: an OpenTelemetry tracer provider to trace with (tests);
        otherwise tracing follows ``--otlp-endpoint``."""
        self.settings = settings
        self._runtime_factory = runtime_factory
        self._native_bf16 = native_bf16
        self._tracer_provider = tracer_provider
        self.tracing: Tracing | None = None
        self.port = 0
        self.metrics_port = 0
        self.http_port = 0
        self._http: Any = None  # httpapi.server.HttpServer, imported only with --http-port
        self._server: grpc.aio.Server | None = None
        self._metrics: MetricsServer | None = None
        self._loader: asyncio.Task[None] | None = None
        self._stopping = False
        self.registry: Registry | None = None
        self.reloader: Reloader | None = None
        self._reload_task: asyncio.Task[None] | None = None
        self.health = HealthServicer()
        self.gate = InferenceGate(settings.inference_concurrency)
        self._prepare_pool = ThreadPoolExecutor(
            max_workers=max(2, available_cpus()), thread_name_prefix="hubless-prepare"
        )
        self._infer_pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="hubless-infer")
        self._observer = PrometheusObserver()
        self.transport: Transport | None = None
        self.trimmer = MallocTrimmer(settings.malloc_trim_interval)
        self.served_models = ServedModels()  # hubless_model_info
        # --assert-no-egress; a bad HF_ENDPOINT fails here (EgressConfigError, exit 2)
        self.egress = EgressCheck(
            settings.assert_no_egress,
            settings.egress_check_interval,
            hub_endpoint(),
            on_change=self._sync_health,
        )

    def _make_batcher(self, name: str, runtime: ModelRuntime[Any, Any]) -> Batcher[Any, Any]:
        policy = BatchPolicy.from_settings(self.settings)
        batcher: Batcher[Any, Any] = Batcher(
            name, runtime, policy, self._infer_pool, self._prepare_pool, self.gate, self._observer
        )
        if self.tracing is not None:
            batcher.tracer = self.tracing.batch_tracer()
        return batcher

    async def start(self) -> int:
        """Listen, then load models in the background. Returns the bound gRPC port."""
        s = self.settings
        throttle_loop_errors(asyncio.get_running_loop())  # accept errors: not one per event
        # TLS and token files first: a bad one fails the start before anything else.
        self.tracing = Tracing.from_settings(s.otlp_endpoint, self._tracer_provider)
        transport = self.transport = Transport(s, self.tracing)
        metrics.set_build_info()
        device = resolve_device(s.device)
        watch = ManifestWatch(s.models_dir)
        watch.prime()  # before the registry reads it: a change in between is seen, not lost
        registry = Registry(
            s, device, self._make_batcher, self._runtime_factory, native_bf16=self._native_bf16
        )
        self.registry = registry
        self.reloader = Reloader(registry, watch)
        deps = ServiceDeps(s, registry)
        server = grpc.aio.server(
            interceptors=transport.interceptors(),
            options=[*_GRPC_OPTIONS, *transport.grpc_options()],  # + the receive limit
        )
        # Never-raising request deserializers: a body that does not parse is answered
        # INVALID_ARGUMENT by the servicer's error wrapper, not UNKNOWN with a traceback.
        for spec in TASK_SPECS:  # every task's service, served or not (TASK_DISABLED)
            add_service(server, spec.service, SERVICERS[spec.name](deps))
        add_service(server, MODELS_DESCRIPTOR, ModelsService(deps))
        add_health(server, self.health)
        if s.reflection:
            enable_reflection([*SERVICE_OF_TASK.values(), MODELS_SERVICE, HEALTH_SERVICE], server)
        for name in (*SERVICE_OF_TASK.values(), OVERALL):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(MODELS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        address = _address(s.host, s.port)
        try:
            self.port = transport.add_port(server, address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {address} (port in use?)") from exc
        await server.start()
        self._server = server
        log.info(
            "listening on %s",
            _address(s.host, self.port),
            extra={
                "fields": {
                    "port": self.port,
                    "device": device,
                    "tasks": ",".join(s.tasks),
                    **transport.log_fields(),
                }
            },
        )
        transport.warn_if_exposed()
        try:
            await transport.start(lambda health_server: add_health(health_server, self.health))
        except OSError:
            await server.stop(0)
            raise
        if s.port_file is not None:
            write_port_file(s.port_file, self.port)
        if s.metrics_port:
            self._metrics = MetricsServer(
                s.metrics_host or s.host,
                s.metrics_port,
                metrics.REGISTRY,
                ssl_context=transport.metrics_ssl_context(),
            )
            try:
                self.metrics_port = await self._metrics.start()
            except OSError as exc:
                await server.stop(0)
                await transport.stop()
                raise OSError(f"cannot serve metrics on port {s.metrics_port}: {exc}") from exc
        if s.http_port:
            try:
                await self._start_http(deps, transport)
            except OSError:
                await server.stop(0)
                await transport.stop()
                if self._metrics is not None:
                    await self._metrics.stop()
                raise
        registry.add_listener(self._sync_health)
        self.trimmer.start()
        self.egress.start()
        self._loader = asyncio.get_running_loop().create_task(
            self._load(registry), name="hubless-loader"
        )
        return self.port

    async def _start_http(self, deps: ServiceDeps, transport: Transport) -> None:
        """The HTTP door (``--http-port``) over the same servicers and interceptors."""
        from hubless_server.transport.chain import is_loopback
        from hubless_server.transport.http.routes import HttpApi
        from hubless_server.transport.http.server import HttpServer

        api = HttpApi(
            deps,
            transport.interceptors(),
            self.health,
            tokens=transport.tokens,
            loopback_only=is_loopback(self.settings.host),
            auth_refusals=transport.refusals,
        )
        context = transport.http_ssl_context()
        self._http = HttpServer(
            api.asgi,
            self.settings.host,
            self.settings.http_port,
            limits=api.limits,
            ssl_context=(lambda: context) if context is not None else None,
            grace_s=self.settings.grace_period,
            on_malformed_head=api.malformed_head,
        )
        self.http_port = await self._http.start()

    async def _load(self, registry: Registry) -> None:
        try:
            await registry.load_all()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("model loading aborted")
        if self.reloader is not None and not self._stopping:
            self._reload_task = asyncio.get_running_loop().create_task(
                self.reloader.run(), name="hubless-reloader"
            )

    def reload(self) -> None:
        """Check the volume manifest now (SIGHUP); a no-op before the server started."""
        if self.reloader is not None:
            log.info("reload requested: checking the volume manifest now")
            self.reloader.request()

    async def reload_now(self) -> None:
        """Check the volume manifest now and wait until the check is done (after the initial
        loading: waits for it too)."""
        if self.reloader is None:
            return
        await self.wait_loaded()
        await self.reloader.reload_now()

    async def _sync_health(self) -> None:
        """Health statuses and model gauges from the registry's current state."""
        registry = self.registry
        if registry is None or self._stopping:
            return
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        any_serving = False
        for spec in TASK_SPECS:
            ok = spec.name in registry.tasks and registry.serving(spec.name)
            any_serving = any_serving or ok
            await self.health.set(spec.service_name, serving if ok else not_serving)
        if self.settings.ready_when == "any":
            ready = any_serving
        else:
            awaited = awaited_tasks(registry, self.settings)
            ready = bool(awaited) and all(registry.serving(t) for t in awaited)
        # --assert-no-egress refuse: a reachable hub (or no check finished yet) holds "" back
        held = self.egress.refusing
        overall = serving if registry.loading_done and ready and not held else not_serving
        await self.health.set(OVERALL, overall)
        for record in registry.records.values():
            metrics.MODEL_READY.labels(record.name, record.task).set(
                1 if record.state is State.READY else 0
            )
            if record.state is State.READY:
                metrics.MODEL_LOAD_SECONDS.labels(record.name).set(record.load_seconds)
        self.served_models.update(self._served(registry))

    def _served(self, registry: Registry) -> list[tuple[str, str, str, str, str, bool]]:
        """``hubless_model_info``'s labels of every served version: the registry's READY
        records (a new version loading beside is not served yet, a replaced one draining no
        longer is). Signed: ``--trusted-key`` verified its signature when it loaded."""
        return [
            (r.name, r.task, r.commit, r.backend, r.dtype, r.signed)
            for r in registry.records.values()
            if r.state is State.READY and r.entry is not None
        ]

    async def wait_loaded(self) -> None:
        """Wait until the initial model loading is over (tests, benchmarks)."""
        if self._loader is not None:
            await asyncio.shield(self._loader)

    async def stop(self, grace: float | None = None, drain_delay: float | None = None) -> None:
        """Drain: every health status NOT_SERVING and new hubless RPCs refused (UNAVAILABLE,
        SHUTTING_DOWN, :mod:`hubless_server.transport.drain`) at once, the listeners still open, for
        ``drain_delay`` seconds (default ``--drain-delay``) while in-flight RPCs go on; then
        stop accepting and give in-flight RPCs ``grace`` seconds (default
        ``--grace-period``) before cancelling them."""
        if self._stopping:
            return
        self._stopping = True
        grace = self.settings.grace_period if grace is None else grace
        delay = self.settings.drain_delay if drain_delay is None else drain_delay
        await self.health.enter_graceful_shutdown()
        if self.transport is not None:
            self.transport.drain.start()
        if self._loader is not None and not self._loader.done():
            self._loader.cancel()
        if self._reload_task is not None:
            self._reload_task.cancel()
        if self._server is not None and delay > 0:
            log.info(
                "health NOT_SERVING; refusing new RPCs (UNAVAILABLE, SHUTTING_DOWN) for %.1f s "
                "before closing the listeners",
                delay,
                extra={"fields": {"drain_delay_s": delay}},
            )
            await asyncio.sleep(delay)
        if self._server is not None:
            log.info("draining in-flight RPCs", extra={"fields": {"grace_s": grace}})
            drains = [self._server.stop(grace)]
            if self._http is not None:
                drains.append(self._http.stop())
            await asyncio.gather(*drains)
        if self.transport is not None:
            await self.transport.stop()
        if self.reloader is not None:
            await self.reloader.close()
        if self.registry is not None:
            await self.registry.close()
        if self._metrics is not None:
            await self._metrics.stop()
        await self.trimmer.stop()
        await self.egress.stop()
        self.served_models.clear()
        self._prepare_pool.shutdown(wait=False, cancel_futures=True)
        self._infer_pool.shutdown(wait=False, cancel_futures=True)
        if self.tracing is not None:
            self.tracing.shutdown()
        log.info("server stopped")

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()
