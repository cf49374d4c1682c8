"""What is installed, what is loaded, and which model answers a request.

For every served task the registry walks ``Manifest.preference(task)``: a model listed there
but not installed is MISSING; an installed one whose manifest entry fails the volume format's
checks (a name, commit or path that could lead off the volume: ``hubless_volume.schema``),
whose files do not match the manifest (sizes, or sha256 with ``--verify-sha256``) or that
fails to load is FAILED, and the next one is tried. The first model that loads is the task's
default (it answers requests naming no model). Once every task has its default, the
remaining installed models of each task are loaded too: always for sentiment (the request
picks a model by name), and for the other tasks while ``--load-alternates`` is on (the
catalog's alternates are small next to their defaults: DialoGPT-small beside -medium).
Loading runs in a worker thread, one model at a time, while the server already answers
health checks. A load that fails because files are missing (a fetch is changing the volume)
re-reads the manifest and is retried, a few times with backoff (:mod:`.load_retry`).
After the initial loading :mod:`hubless_server.models.reload` keeps the records in step with the
manifest (new, changed and removed models, while serving).

Every load, initial or live, runs the trust checks in its thread: with ``--trusted-key`` the
model's signature before its weights are read (:mod:`.trust`), and once it is loaded its
golden self-test (:mod:`.golden`, ``--golden-check``); a model that either refuses is FAILED
with why, and the next one is tried.

A record's ``error`` goes to clients (``ModelInfo.error``, UNAVAILABLE and NOT_FOUND
messages), so it names models and relative fetch commands only: no volume path, no library
exception text. The log line written when the model fails keeps the full detail.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from hubless_server.core.config import Settings
from hubless_server.core.errors import ModelNotFoundError, TaskUnavailableError
from hubless_server.core.redact import echo
from hubless_server.core.tasks import TASK_SPECS, TASKS, spec_of
from hubless_server.core.threads import run_in_daemon_thread
from hubless_server.inference.batching import Batcher
from hubless_server.models.golden import golden_self_test
from hubless_server.models.load_retry import load_with_retries
from hubless_server.models.manifest_file import count_error, load_manifest
from hubless_server.models.records import ModelRecord, State, VolumeError, check_model_files
from hubless_server.models.trust import RefusedError, verify_signature
from hubless_server.runtimes.base import ModelRuntime, RuntimeOptions
from hubless_server.runtimes.placement import onnx_artifact, resolve_backend, resolve_dtype
from hubless_volume import (
    Manifest,
    ManifestError,
    VolumePathError,
    check_entry,
    default_preference,
)

log = logging.getLogger(__name__)

RuntimeFactory = Callable[[str], type[ModelRuntime[Any, Any]]]
BatcherFactory = Callable[[str, ModelRuntime[Any, Any]], Batcher[Any, Any]]
Listener = Callable[[], Awaitable[None]]

# Tasks whose every installed model is loaded (the request chooses by name).
ALL_MODELS_TASKS = frozenset(spec.name for spec in TASK_SPECS if spec.load_all_models)


def _default_runtime_factory(task: str) -> type[ModelRuntime[Any, Any]]:
    from hubless_server.runtimes import runtime_class

    return runtime_class(task)


class Registry:
    """Models per served task, their states, and loading."""

    def __init__(
        self,
        settings: Settings,
        device: str,
        batcher_factory: BatcherFactory,
        runtime_factory: RuntimeFactory | None = None,
        native_bf16: bool | None = None,
    ) -> None:
        self.settings = settings
        self.models_dir = Path(settings.models_dir)
        self.device = device
        self.tasks: tuple[str, ...] = tuple(t for t in TASKS if t in settings.tasks)
        self._batcher_factory = batcher_factory
        self._runtime_factory = runtime_factory or _default_runtime_factory
        self._native_bf16 = native_bf16
        # The registry's state, changed only through the methods below (the reloader and the
        # load retries call them): the served record per name, each task's preference order,
        # new versions loading beside the served ones, and replaced versions draining.
        self._records: dict[str, ModelRecord] = {}
        self._by_task: dict[str, list[str]] = {t: [] for t in self.tasks}
        self.manifest_error = ""
        self.loading_done = False
        self._listeners: list[Listener] = []
        self._pending: dict[str, ModelRecord] = {}
        self._retired: list[ModelRecord] = []
        self._plan()

    # ---- planning ---------------------------------------------------------------------

    @staticmethod
    def fetch_hint(name: str = "") -> str:
        """The command that installs ``name`` (every default model without one); relative:
        the client does not need to know where the server's volume is mounted."""
        return f"hubless-fetch fetch {name}".rstrip()

    def _plan(self) -> None:
        """The initial plan. Blocking file I/O, bounded: the manifest is read with
        :func:`.manifest_file.load_manifest` (a FIFO or a device there is refused without
        being opened, at most ``MAX_MANIFEST_BYTES`` are read); the server builds the
        registry before any port listens. An absent manifest is an empty volume here."""
        try:
            # the volume format's checks (names, commits, paths, hashes); an entry that fails
            # them is refused alone (FAILED below) and the other models are served
            manifest = load_manifest(self.models_dir, missing_ok=True)
        except ManifestError as exc:
            self.manifest_error = str(exc)
            count_error(exc)
            log.error("cannot read the volume manifest: %s", exc)
            manifest = Manifest()
        for bad in manifest.rejected:
            log.error("refusing model %r: invalid manifest entry: %s", bad.key, bad.error)
        self._records, self._by_task = self.plan(manifest)
        installed = sum(1 for r in self.records.values() if r.entry is not None)
        log.info(
            "volume %s: %d installed model(s) for the served tasks",
            self.models_dir,
            installed,
            extra={"fields": {"tasks": ",".join(self.tasks)}},
        )

    def plan(self, manifest: Manifest) -> tuple[dict[str, ModelRecord], dict[str, list[str]]]:
        """A new record per model of the served tasks under ``manifest`` (installed ones
        LOADING) and each task's names in preference order. Changes nothing: the reloader
        diffs it against what is served."""
        records: dict[str, ModelRecord] = {}
        by_task: dict[str, list[str]] = {t: [] for t in self.tasks}
        rejected = {r.key: r for r in manifest.rejected}
        catalog = default_preference()  # names the MISSING models of an empty volume
        for task in self.tasks:
            names = manifest.preference(task) or list(catalog.get(task, []))
            names += [k for k, r in rejected.items() if r.task == task and k not in names]
            for name in names:
                entry = manifest.models.get(name)
                if entry is not None and entry.task != task:
                    continue
                if name in records:
                    continue
                bad = rejected.get(name)
                if bad is not None and bad.task in (task, None):
                    where = f"{bad.error.field}: " if bad.error.field else ""
                    record = ModelRecord(
                        name,
                        task,
                        None,
                        State.FAILED,
                        error=f"invalid manifest entry, not loaded: {where}{bad.error.message}",
                    )
                elif entry is None:
                    record = ModelRecord(
                        name,
                        task,
                        None,
                        State.MISSING,
                        error=f"not installed; fetch it with `{self.fetch_hint(name)}`",
                    )
                else:
                    record = ModelRecord(name, task, entry, State.LOADING)
                    record.device = self.device
                    record.dtype = resolve_dtype(
                        self.settings.dtype_for(task, name), self.device, self._native_bf16
                    )
                records[name] = record
                by_task[task].append(name)
        return records, by_task

    # ---- loading ----------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """``listener`` is awaited after every state change (health follows it)."""
        self._listeners.append(listener)

    async def _notify(self) -> None:
        for listener in self._listeners:
            await listener()

    async def notify(self) -> None:
        """Tell the listeners that states changed (the reloader's swaps)."""
        await self._notify()

    async def load_all(self) -> None:
        """Load each task's default (fallback order), then the alternates."""
        await self._notify()
        for task in self.tasks:
            for name in self._by_task[task]:
                record = self._records[name]
                if record.state is not State.LOADING:
                    continue
                if await self.load_record(record):
                    record.is_default = True
                    await self._notify()
                    break
                log.warning(
                    "%s model %s unusable, falling back to the next in preference order",
                    task,
                    name,
                    extra={"fields": {"model": name, "error": record.error}},
                )
                await self._notify()
            if self.default(task) is None:
                log.error(
                    "no %s model can be served from %s: %s",
                    task,
                    self.models_dir,
                    self.unavailable_message(task),
                )
        for task in self.tasks:
            for name in self._by_task[task]:
                record = self._records[name]
                if record.state is not State.LOADING:
                    continue
                if task in ALL_MODELS_TASKS or self.settings.load_alternates:
                    await self.load_record(record)
                else:
                    record.state = State.SKIPPED
                    record.error = "installed alternate, not loaded (--no-load-alternates)"
                await self._notify()
        self.loading_done = True
        await self._notify()
        ready = [r.name for r in self.records.values() if r.state is State.READY]
        log.info(
            "model loading finished: %d ready",
            len(ready),
            extra={"fields": {"ready": ",".join(ready)}},
        )

    async def load_once(self, record: ModelRecord) -> bool:
        """Load ``record`` once (no retries); True when it is READY, else it is FAILED."""
        assert record.entry is not None
        try:
            path = record.entry.snapshot_dir(self.models_dir)
        except VolumePathError as exc:  # e.g. a repo folder linked out of the volume
            record.state = State.FAILED
            record.error = "corrupt install: refused, its folder leads off the volume"
            log.error("model %s refused: corrupt install: %s", record.name, exc)
            return False
        log.info(
            "Loading cached model %s (%s@%s)",
            record.name,
            record.repo_id,
            record.commit[:12],
            extra={
                "fields": {
                    "model": record.name,
                    "task": record.task,
                    "path": str(path),
                    "device": record.device,
                    "dtype": record.dtype,
                }
            },
        )
        started = time.perf_counter()
        try:
            runtime = await run_in_daemon_thread(self._load_sync, record, path)
        except Exception as exc:
            record.state = State.FAILED
            record.error = _public(exc)
            log.error(
                "model %s failed to load: %s",
                record.name,
                _describe(exc),
                exc_info=not isinstance(exc, VolumeError | RefusedError),
                extra={"fields": {"model": record.name, "task": record.task}},
            )
            gc.collect()
            return False
        record.load_seconds = time.perf_counter() - started
        info = runtime.info()
        record.device, record.dtype = info.device, info.dtype
        record.backend = info.backend
        record.precision = info.precision
        record.max_input_tokens = info.max_input_tokens
        record.runtime = runtime
        record.batcher = self._batcher_factory(record.name, runtime)
        record.batcher.start()
        record.state = State.READY
        record.error = record.warning
        log.info(
            "Model %s loaded offline in %.2f s",
            record.name,
            record.load_seconds,
            extra={
                "fields": {
                    "model": record.name,
                    "task": record.task,
                    "device": info.device,
                    "dtype": info.dtype,
                    "backend": info.backend,
                    "max_input_tokens": info.max_input_tokens,
                    "load_seconds": round(record.load_seconds, 3),
                }
            },
        )
        return True

    def _load_sync(self, record: ModelRecord, path: Path) -> ModelRuntime[Any, Any]:
        """Check the model's files, then load it. Runs in a daemon thread (:meth:`load_once`):
        the checks and ``from_pretrained`` are blocking file I/O, never on the event loop."""
        assert record.entry is not None
        record.files_missing, record.signed, record.warning = False, False, ""
        trusted_key = self.settings.trusted_key
        try:
            # with a trusted key the signature check hashes every byte: sizes suffice here
            deep = self.settings.verify_sha256 and trusted_key is None
            check_model_files(record.entry, self.models_dir, deep)
            if trusted_key is not None:  # before a byte of the weights is read
                verify_signature(self.models_dir, record.entry, trusted_key)
                record.signed = True
            cls = self._runtime_factory(record.task)
            artifact = onnx_artifact(record.entry, self.models_dir)
            backend = resolve_backend(
                self.settings.backend_for(record.task, record.name),
                record.device,
                spec_of(record.task).runtime,
                artifact is not None,
                record.dtype,
            )
            options = RuntimeOptions(
                device=record.device,
                dtype=record.dtype,
                max_chunk_tokens=self.settings.max_chunk_tokens,
                backend=backend,
                onnx=artifact if backend == "onnx" else None,
                threads=self.settings.intra_op_threads,
            )
            runtime = cls(record.name, path, options)
            runtime.load()
            record.warning = golden_self_test(
                self.settings.golden_check,
                self.models_dir,
                record.entry,
                spec_of(record.task).runtime,
                runtime,
            )
        except Exception as exc:  # files gone now: a fetch moved them (load_record retries)
            missing = check_entry(self.models_dir, record.entry)
            record.files_missing = isinstance(exc, OSError) or any(
                "missing" in problem.reason for problem in missing
            )
            raise
        return runtime

    async def load_record(self, record: ModelRecord) -> bool:
        """Load ``record``, retried while its files are missing (:mod:`.load_retry`)."""
        return await load_with_retries(self, record)

    async def close(self) -> None:
        for record in self.in_memory():
            if record.batcher is not None:
                await record.batcher.close()

    # ---- the state (only these methods change it) ----------------------------------------

    @property
    def records(self) -> Mapping[str, ModelRecord]:
        """The served record of every model of the served tasks, by name (read-only)."""
        return MappingProxyType(self._records)

    @property
    def by_task(self) -> Mapping[str, tuple[str, ...]]:
        """Each served task's model names in preference order (read-only)."""
        return {task: tuple(names) for task, names in self._by_task.items()}

    def get(self, name: str) -> ModelRecord | None:
        """The served record of ``name``; None for a name no served task has."""
        return self._records.get(name)

    def pending(self, name: str) -> ModelRecord | None:
        """The new version of ``name`` loading beside the served one, if any."""
        return self._pending.get(name)

    def in_transit(self) -> tuple[ModelRecord, ...]:
        """The versions beside the served ones: new ones loading, replaced ones draining."""
        return (*self._pending.values(), *self._retired)

    def in_memory(self) -> tuple[ModelRecord, ...]:
        """Every version that may hold weights: served, loading beside, draining."""
        return (*self._records.values(), *self.in_transit())

    def put(self, record: ModelRecord) -> None:
        """Make ``record`` the served record of its name: requests resolved from now on get
        it (the swap of a live update)."""
        self._records[record.name] = record

    def forget(self, name: str) -> None:
        """Drop the record of a model no served task lists any more."""
        self._records.pop(name, None)

    def set_order(self, by_task: dict[str, list[str]]) -> None:
        """Each task's preference order, as a new manifest gives it."""
        self._by_task = {task: list(names) for task, names in by_task.items()}

    def begin_update(self, record: ModelRecord) -> None:
        """``record`` is a new version loading beside the served one."""
        self._pending[record.name] = record

    def end_update(self, name: str) -> None:
        """The new version of ``name`` is loaded (and swapped in) or failed."""
        self._pending.pop(name, None)

    def retire(self, record: ModelRecord) -> None:
        """``record`` is out of service and draining its in-flight requests."""
        self._retired.append(record)

    def release(self, record: ModelRecord) -> None:
        """A retired version has drained and let go of its weights."""
        with contextlib.suppress(ValueError):
            self._retired.remove(record)

    def ready_before(self, task: str, name: str) -> bool:
        """Whether a model earlier than ``name`` in ``task``'s order is READY."""
        for other in self._by_task.get(task, []):
            if other == name:
                return False
            if self._records[other].state is State.READY:
                return True
        return False

    def elect_default(self, task: str) -> None:
        """The task's default is its first READY model in preference order."""
        chosen = False
        for name in self._by_task.get(task, []):
            record = self._records[name]
            record.is_default = not chosen and record.state is State.READY
            chosen = chosen or record.is_default

    # ---- lookups ----------------------------------------------------------------------

    def models_of(self, task: str) -> list[ModelRecord]:
        return [self._records[n] for n in self._by_task.get(task, [])]

    def default(self, task: str) -> ModelRecord | None:
        for record in self.models_of(task):
            if record.is_default and record.state is State.READY:
                return record
        return None

    def serving(self, task: str) -> bool:
        return self.default(task) is not None

    def unavailable_message(self, task: str) -> str:
        records = self.models_of(task)
        if task not in self._by_task:
            return f"the {task} task is disabled on this server (--tasks)"
        if not records:
            reason = " (the volume manifest cannot be read: see the server log)"
            return (
                f"no {task} model is installed{reason if self.manifest_error else ''}; fetch "
                f"one with `{self.fetch_hint()}`"
            )
        parts = [
            f"{r.name}: {r.state.value}"
            + (f" ({r.error})" if r.error and r.state is not State.MISSING else "")
            for r in records
        ]
        first = records[0].name
        unreadable = "; the volume manifest cannot be read (see the server log)"
        return (
            f"no {task} model is available [{'; '.join(parts)}]"
            f"{unreadable if self.manifest_error else ''}; install the preferred one with "
            f"`{self.fetch_hint(first)}`"
        )

    def resolve(self, task: str, name: str = "") -> ModelRecord:
        """The READY model for a request. Raises :class:`TaskUnavailableError` when the task
        has none, :class:`ModelNotFoundError` for a name that is not a ready model of it."""
        if not name:
            record = self.default(task)
            if record is not None:
                return record
            loading = any(r.state is State.LOADING for r in self.models_of(task))
            if loading:
                raise TaskUnavailableError(
                    task, f"the {task} model is still loading; retry shortly", loading=True
                )
            raise TaskUnavailableError(task, self.unavailable_message(task))
        record = self._records.get(name)
        ready = [r.name for r in self.models_of(task) if r.state is State.READY]
        available = ", ".join(ready) or "none"
        if record is None or record.task != task:
            what = f"a model of task {record.task!r}" if record is not None else "unknown"
            raise ModelNotFoundError(
                f"model {echo(name)!r} is {what}, not a model of task {task!r} on this "
                f"server; available {task} models: {available}"
            )
        if record.state is State.LOADING:
            raise TaskUnavailableError(
                task, f"model {name!r} is still loading; retry shortly", loading=True
            )
        if record.state is not State.READY:
            raise ModelNotFoundError(
                f"model {name!r} is {record.state.value}: {record.error}; available {task} "
                f"models: {available}"
            )
        return record


def _describe(exc: BaseException) -> str:
    """The full first line of a load failure, for the log."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, VolumeError):
        return f"corrupt install: {text}"
    if isinstance(exc, RefusedError):
        return f"refused: {text}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _public(exc: BaseException) -> str:
    """A load failure for clients: what is wrong with the install, or only the kind of
    failure (library messages carry paths and internals; the log has them)."""
    if isinstance(exc, VolumeError):
        return f"corrupt install: {exc.public}"
    if isinstance(exc, RefusedError):
        return exc.public
    return f"failed to load ({type(exc).__name__}); the server log has the details"
