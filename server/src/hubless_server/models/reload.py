"""Live model updates: the server follows the volume manifest while it serves.

:class:`Reloader` checks the manifest every ``--reload-interval`` seconds, and at once on
SIGHUP (:meth:`Reloader.request`). A check is cheap while nothing changes: the manifest's
(device, inode, size, mtime) first, then a hash of its bytes, the bytes then parsed (one read,
in a worker thread, of a regular file inside the volume under its size cap:
:class:`~.manifest_file.ManifestWatch`). A manifest that cannot be read, or that is gone after
it was seen, changes nothing served: it is logged once and counted in
``hubless_manifest_errors_total{reason}``, and the next manifest that reads is followed again.
A changed manifest is planned like the initial one (``Registry.plan``) and diffed against what
is served, model by model (:meth:`Reloader.reconcile`), in each task's preference order:

* a new model, or a new version of one (another commit or other files), is checked (sizes,
  sha256 with ``--verify-sha256``), loaded *beside* the serving version, warmed with one
  tiny request through its queue, then swapped in: requests resolved from then on get the new
  version, in-flight ones finish on the old, and the old one is released (queue closed once
  drained, runtime dropped, ``gc``) in the background. ``ModelInfo.replacing_commit`` names
  the other version while both are in memory;
* a version that fails to load or warm up leaves the old one serving: that model reports
  READY with ``error`` saying which commit failed and why; that commit is not tried again
  until its manifest entry changes (SIGHUP retries it);
* with ``--trusted-key`` a new version is loaded only once its signature verifies, and with
  ``--golden-check refuse`` swapped in only once it passes its golden self-test
  (:mod:`.trust`, :mod:`.golden`): one that does not fails like any other, and the old
  version keeps serving. New golden outputs, or (with ``--trusted-key``) a new signature,
  make a new version too;
* a model gone from the manifest is taken out of service at once (its task falls back along
  the preference order), drained and unloaded;
* the default of each task is the first READY model in preference order, so a new preferred
  model becomes the default once loaded; with ``--no-load-alternates`` a superseded default
  is unloaded (SKIPPED) and a SKIPPED alternate is loaded when the task has no model left;
* ``--max-model-memory``: when the estimated weights (:mod:`hubless_server.models.memory`) of
  every version in memory plus the new one would exceed it, the old version is unloaded
  *before* the new one loads, and its task may have no model (NOT_SERVING) meanwhile.

Every change writes one log line and counts in ``hubless_model_reloads_total{model,result}``.
Checks run one at a time, after the initial loading; loads stay one model at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from typing import Any

from hubless_server.core.tasks import spec_of
from hubless_server.models.manifest_file import ManifestWatch, count_error
from hubless_server.models.memory import estimate_weights_bytes, format_bytes
from hubless_server.models.registry import ALL_MODELS_TASKS, ModelRecord, Registry, State
from hubless_server.observability import metrics
from hubless_server.runtimes.base import ChatItem, SummarizeItem, TextItem, ZeroShotItem
from hubless_volume import Manifest, ManifestError, ManifestMissingError, ModelEntry

log = logging.getLogger(__name__)

WARM_TEXT = "Warm-up request."
WARM_ITEMS: dict[str, Any] = {
    "embedding": TextItem(WARM_TEXT),
    "classification": TextItem(WARM_TEXT),
    "zero_shot": ZeroShotItem(WARM_TEXT, ("yes", "no")),
    "seq2seq": SummarizeItem(WARM_TEXT, min_length=0, max_length=2),
    "chat": ChatItem((WARM_TEXT,), max_new_tokens=1),
}
"""One tiny request per runtime kind: a new version answers it before it is swapped in."""
WARM_TIMEOUT_S = 600.0


def version_key(
    entry: ModelEntry, *, golden: bool = False, signature: bool = False
) -> tuple[Any, ...]:
    """What makes two manifest entries the same version (``verified_at`` and the like aside).

    The artifacts count: an ONNX export that ``hubless-optimize`` installs (or drops) after the
    model was loaded is a new version of it, loaded beside and swapped in like a new commit, so
    a server started before the optimizer finished moves to ONNX Runtime without a restart.
    So do, where the server checks them, the golden outputs (``golden``: new goldens are
    self-tested on a version loaded beside) and the signature (``signature``: a model signed
    after it was refused for want of one loads then)."""
    artifacts = tuple((a.kind, a.path, a.sha256) for a in entry.artifacts)
    key: tuple[Any, ...] = (entry.repo_id, entry.commit, tuple(entry.files), artifacts)
    if golden:
        key += (entry.golden,)
    if signature:
        key += (entry.signature,)
    return key


class Reloader:
    """Keeps the registry in step with the manifest; see the module docstring."""

    def __init__(self, registry: Registry, watch: ManifestWatch | None = None) -> None:
        self.registry = registry
        self.settings = registry.settings
        self.interval = registry.settings.reload_interval
        self.watch = watch or ManifestWatch(registry.models_dir)
        self._wake = asyncio.Event()
        self._force = False
        self._waiters: list[asyncio.Future[None]] = []
        self._failed: dict[str, tuple[Any, ...]] = {}  # name -> version that failed
        self._drains: set[asyncio.Task[None]] = set()
        self.checks = 0  # finished checks (tests)

    def _version(self, entry: ModelEntry) -> tuple[Any, ...]:
        """:func:`version_key`, with what this server checks at load."""
        return version_key(
            entry,
            golden=self.settings.golden_check != "off",
            signature=self.settings.trusted_key is not None,
        )

    # ---- the loop ---------------------------------------------------------------------

    def request(self, force: bool = True) -> None:
        """Check now (SIGHUP); ``force`` re-plans even an unchanged manifest and retries
        failed models."""
        self._force = self._force or force
        self._wake.set()

    async def reload_now(self, force: bool = True) -> None:
        """Check now and wait until that check is done (tests, explicit reloads)."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.request(force)
        await waiter

    async def run(self) -> None:
        """Check every ``--reload-interval`` seconds (0: only on :meth:`request`)."""
        await asyncio.to_thread(self._estimate_loaded)  # reads weight-file headers
        while True:
            timeout = self.interval if self.interval > 0 else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            force, self._force = self._force, False
            waiters, self._waiters = self._waiters, []
            try:
                await self.check(force)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("live model update failed; the served models are unchanged")
            finally:
                self.checks += 1
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)

    async def check(self, force: bool = False) -> bool:
        """Reconcile when the manifest changed (or ``force``); True when it ran. The manifest
        is read (once, hashed and parsed) in a worker thread; one that cannot be read, or is
        gone after it was seen, changes nothing served (:meth:`_manifest_failed`)."""
        try:
            manifest = await asyncio.to_thread(self.watch.look, force)
        except ManifestError as exc:
            self._manifest_failed(exc)
            return False
        if manifest is None:
            return False
        self._manifest_back()
        for bad in manifest.rejected:
            log.error("refusing model %r: invalid manifest entry: %s", bad.key, bad.error)
        await self.reconcile(manifest, retry_failed=force)
        return True

    def _manifest_failed(self, exc: ManifestError) -> None:
        """Log and count a manifest that cannot be used; the watch reports each change of
        what is at its path once, so this runs once per disappearance or bad file."""
        reason = count_error(exc)
        self.registry.manifest_error = str(exc)
        loaded = sum(1 for r in self.registry.records.values() if r.state is State.READY)
        if isinstance(exc, ManifestMissingError):
            log.error(
                "the volume manifest %s is gone; the %d loaded model(s) keep serving and "
                "nothing is unloaded until it is back (a fetch replaces it, never removes it)",
                self.watch.path,
                loaded,
                extra={"fields": {"reason": reason}},
            )
        else:
            log.error(
                "cannot read the volume manifest; the %d served model(s) are unchanged: %s",
                loaded,
                exc,
                extra={"fields": {"reason": reason}},
            )

    def _manifest_back(self) -> None:
        """A manifest read after one that could not be (here or at startup): say so once."""
        if not self.registry.manifest_error:
            return
        log.info(
            "the volume manifest is readable again (before: %s); following it",
            self.registry.manifest_error,
        )
        self.registry.manifest_error = ""

    async def close(self) -> None:
        """Cancel the drains in progress (the registry closes their queues)."""
        for task in list(self._drains):
            task.cancel()
        for task in list(self._drains):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # ---- the diff ---------------------------------------------------------------------

    async def reconcile(self, manifest: Manifest, retry_failed: bool = False) -> None:
        """Make the served models what ``manifest`` says (see the module docstring)."""
        reg = self.registry
        planned, by_task = await asyncio.to_thread(reg.plan, manifest)  # reads the catalog
        for name, current in list(reg.records.items()):
            new = planned.get(name)
            if new is not None and new.entry is not None and new.task == current.task:
                continue
            if current.entry is not None:
                self._remove(current)
            self._failed.pop(name, None)
            if new is None:
                reg.forget(name)
            else:
                reg.put(new)
        to_load: dict[str, ModelRecord] = {}
        for name, new in planned.items():
            current = reg.records.get(name)
            if new.entry is None:
                reg.put(new)
            elif current is None or current.entry is None:
                reg.put(new)
                to_load[name] = new
            elif self._version(current.entry) == self._version(new.entry):
                current.entry = new.entry
                if current.state is State.READY:
                    current.error = current.warning  # the served version is the volume's again
                    self._failed.pop(name, None)
                    metrics.MODEL_RELOADS.labels(name, "unchanged").inc()
                elif current.state is State.FAILED and retry_failed:
                    to_load[name] = new
            elif self._failed.get(name) == self._version(new.entry) and not retry_failed:
                continue  # this version failed already: wait for another entry
            else:
                to_load[name] = new
        reg.set_order(by_task)
        for task in reg.tasks:  # a removed default's task falls back before any load
            reg.elect_default(task)
        await reg.notify()
        for task in reg.tasks:
            await self._reconcile_task(task, to_load)
        await reg.notify()

    async def _reconcile_task(self, task: str, to_load: dict[str, ModelRecord]) -> None:
        reg = self.registry
        every_model = task in ALL_MODELS_TASKS or self.settings.load_alternates
        for name in list(reg.by_task.get(task, [])):
            current = reg.records[name]
            new = to_load.get(name)
            if not every_model and reg.ready_before(task, name):
                self._skip(current, new)  # an earlier model serves the task
                continue
            if new is None and current.state is State.SKIPPED and current.entry is not None:
                new = self._fresh(current)  # needed now: the task has no model before it
            if new is None:
                continue
            await self._load_version(new, current if current is not new else None)
            reg.elect_default(task)
            await reg.notify()
        reg.elect_default(task)

    def _fresh(self, record: ModelRecord) -> ModelRecord:
        fresh = ModelRecord(record.name, record.task, record.entry, State.LOADING)
        fresh.device, fresh.dtype = record.device, record.dtype
        return fresh

    def _skip(self, current: ModelRecord, new: ModelRecord | None) -> None:
        """An alternate under ``--no-load-alternates``: not loaded (unloaded if it was)."""
        if current.state is not State.READY and new is None:
            return
        skipped = self._fresh(new or current)
        skipped.state = State.SKIPPED
        skipped.error = "installed alternate, not loaded (--no-load-alternates)"
        self.registry.put(skipped)
        if current.state is State.READY:
            self._retire(current, None)
            metrics.MODEL_RELOADS.labels(current.name, "unloaded").inc()
            log.info(
                "model %s unloaded: a preferred %s model serves (--no-load-alternates)",
                current.name,
                current.task,
            )

    # ---- one model ----------------------------------------------------------------------

    def _remove(self, record: ModelRecord) -> None:
        self.registry.end_update(record.name)
        metrics.MODEL_RELOADS.labels(record.name, "removed").inc()
        metrics.MODEL_READY.labels(record.name, record.task).set(0)
        if record.state is State.READY:
            log.info(
                "model %s (commit %s) removed from the volume: out of service, draining and "
                "unloading it",
                record.name,
                record.commit[:12],
                extra={"fields": {"model": record.name, "task": record.task}},
            )
            self._retire(record, None)
        else:
            log.info("model %s removed from the volume", record.name)

    async def _load_version(self, new: ModelRecord, old: ModelRecord | None) -> bool:
        """Load ``new`` beside ``old`` (the serving version, if any), warm it, swap it in."""
        reg = self.registry
        name = new.name
        serving = old if old is not None and old.state is State.READY else None
        new.weights_bytes = await asyncio.to_thread(self._estimate, new)
        if serving is not None and self._over_budget(new):
            await self._unload_first(new, serving)
            serving = None
        elif serving is not None:
            new.replacing_commit = serving.commit
            reg.begin_update(new)
        else:
            reg.put(new)
        await reg.notify()
        started = time.perf_counter()
        ok = await reg.load_record(new) and await self._warm(new)
        reg.end_update(name)
        if not ok:
            return self._failed_update(new, serving)
        if serving is not None:
            new.is_default = serving.is_default
        reg.put(new)  # the swap: requests resolved from now on get ``new``
        self._failed.pop(name, None)
        metrics.MODEL_RELOADS.labels(name, "loaded").inc()
        if serving is not None:
            self._retire(serving, new)
        log.info(
            "model %s: commit %s loaded and swapped in after %.2f s%s",
            name,
            new.commit[:12],
            time.perf_counter() - started,
            f"; draining commit {serving.commit[:12]}" if serving is not None else "",
            extra={"fields": {"model": name, "task": new.task, "commit": new.commit}},
        )
        return True

    def _failed_update(self, new: ModelRecord, serving: ModelRecord | None) -> bool:
        metrics.MODEL_RELOADS.labels(new.name, "failed").inc()
        if new.entry is not None:
            self._failed[new.name] = self._version(new.entry)
        if serving is not None:
            serving.error = (
                f"update to commit {new.commit[:12]} failed ({new.error}); commit "
                f"{serving.commit[:12]} keeps serving"
            )
            log.error(
                "model %s: %s",
                new.name,
                serving.error,
                extra={"fields": {"model": new.name, "task": new.task}},
            )
        else:
            self.registry.put(new)
            log.error(
                "model %s: commit %s not served: %s",
                new.name,
                new.commit[:12],
                new.error,
                extra={"fields": {"model": new.name, "task": new.task}},
            )
        return False

    async def _warm(self, record: ModelRecord) -> bool:
        """One tiny request through the new version's queue before it takes traffic."""
        assert record.batcher is not None
        item = WARM_ITEMS.get(spec_of(record.task).runtime)
        if item is None:
            return True
        try:
            await asyncio.wait_for(record.batcher.run([item]), WARM_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("model %s failed its warm-up request", record.name, exc_info=True)
            await record.batcher.close()
            record.state = State.FAILED
            record.error = f"warm-up request failed ({type(exc).__name__})"
            record.runtime = record.batcher = None
            gc.collect()
            return False
        return True

    def _retire(self, record: ModelRecord, successor: ModelRecord | None) -> asyncio.Task[None]:
        """Out of service already; release it once its in-flight requests are done."""
        self.registry.retire(record)
        task = asyncio.get_running_loop().create_task(
            self._drain(record, successor), name=f"drain-{record.name}"
        )
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)
        return task

    async def _drain(self, record: ModelRecord, successor: ModelRecord | None) -> None:
        batcher = record.batcher
        try:
            if batcher is not None:
                grace = self.settings.grace_period
                if not await batcher.drain(grace):
                    log.warning(
                        "model %s: %d request(s) still on commit %s after %.0f s "
                        "(--grace-period); closing it",
                        record.name,
                        batcher.in_use,
                        record.commit[:12],
                        grace,
                    )
                await batcher.close()
        finally:
            record.runtime = None
            if batcher is not None:
                batcher.runtime = None  # type: ignore[assignment]  # closed: never used again
            self.registry.release(record)
            if successor is not None and successor.replacing_commit == record.commit:
                successor.replacing_commit = ""
            del batcher
            await asyncio.to_thread(gc.collect)
            log.info(
                "model %s: commit %s released",
                record.name,
                record.commit[:12],
                extra={"fields": {"model": record.name}},
            )

    # ---- memory guard -----------------------------------------------------------------

    def _estimate(self, record: ModelRecord) -> int:
        if record.entry is None:
            return 0
        return estimate_weights_bytes(
            record.entry, self.registry.models_dir, record.device, record.dtype
        )

    def _estimate_loaded(self) -> None:
        """Estimates of the models loaded at startup (their files are still there)."""
        if not self.settings.max_model_memory:
            return
        for record in self.registry.records.values():
            if record.state is State.READY and not record.weights_bytes:
                record.weights_bytes = self._estimate(record)

    def held_bytes(self) -> int:
        """Estimated weights of every version in memory (serving, loading, draining)."""
        reg = self.registry
        held = [r for r in reg.records.values() if r.state is State.READY]
        return sum(r.weights_bytes for r in (*held, *reg.in_transit()))

    def _over_budget(self, new: ModelRecord) -> bool:
        cap = self.settings.max_model_memory
        return bool(cap) and self.held_bytes() + new.weights_bytes > cap

    async def _unload_first(self, new: ModelRecord, serving: ModelRecord) -> None:
        """Take the serving version out before loading ``new`` (``--max-model-memory``)."""
        reg = self.registry
        reg.put(new)
        reg.elect_default(new.task)
        fallback = reg.default(new.task)
        log.warning(
            "model %s: commit %s (%s of weights) does not fit beside commit %s under "
            "--max-model-memory %s (%s held): unloading the old version first; %s until "
            "the new one is loaded",
            new.name,
            new.commit[:12],
            format_bytes(new.weights_bytes),
            serving.commit[:12],
            format_bytes(self.settings.max_model_memory),
            format_bytes(self.held_bytes()),
            f"{fallback.name} answers {new.task} requests"
            if fallback is not None
            else f"the {new.task} task is NOT_SERVING",
            extra={"fields": {"model": new.name, "task": new.task}},
        )
        await self.registry.notify()
        await self._retire(serving, None)
