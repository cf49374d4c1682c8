"""``fetch``: bring catalog models onto the volume, verified and installed atomically.

One :class:`FetchRun` is one ``fetch``: it holds the volume write lock from start to end (a
second fetcher on the same volume waits, then finds the models installed and verifies them),
reads the manifest once and keeps it up to date as models are installed. Downloads are staged
under ``<models_dir>/.staging/`` (same filesystem: installing is a rename) and go through
:func:`hubless_fetcher.install.install_model`, which writes the manifest entry last. What each
model needs is planned first (:mod:`hubless_fetcher.plan`), then all files download in parallel.
Before the first model that needs the hub, one bounded connectivity check
(:mod:`hubless_fetcher.connectivity`) fails the run at once when the hub cannot be reached.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hubless_fetcher.catalog import Catalog, CatalogModel
from hubless_fetcher.connectivity import check_route, no_route_advice
from hubless_fetcher.download import BarFactory, Downloader, Wanted, no_bar
from hubless_fetcher.errors import DiskSpaceError, FetchError, LockMismatchError, NoRouteError
from hubless_fetcher.install import install_model
from hubless_fetcher.lockfile import LockFile
from hubless_fetcher.plan import Plan, plan_model
from hubless_fetcher.remote import file_url
from hubless_fetcher.results import (
    FetchReport,
    ModelResult,
    failed_result,
    no_route,
    offline_missing,
    up_to_date,
    would_fetch,
)
from hubless_fetcher.settings import Settings
from hubless_fetcher.volume import check_free_space, human, link_or_copy, prune_unreferenced
from hubless_fetcher.writelock import VolumeWriteLock
from hubless_volume import (
    FileRecord,
    Manifest,
    ModelEntry,
    PreviousGenerations,
    VolumePathError,
    check_entry,
    inside,
)

logger = logging.getLogger(__name__)

FreeSpace = Callable[[Path], int]
_BY_MODEL = "by-model"


def disk_free(path: Path) -> int:
    """Bytes available to this user on the filesystem holding ``path``."""
    return shutil.disk_usage(path).free


@dataclass(frozen=True)
class FetchOptions:
    """How a fetch treats the catalog and what is installed (the ``fetch`` command's flags).

    Without ``refresh`` an installed model whose catalog revision is unchanged is up to date
    without asking the hub (a re-run needs no network); ``refresh`` resolves branches and tags
    again and re-fetches a model whose commit moved. ``locked`` installs exactly the lock file.
    ``deep`` re-hashes installed files first and re-fetches any whose sha256 is wrong.
    ``dry_run`` resolves what is missing and reports its size without downloading.
    """

    locked: bool = False
    refresh: bool = False
    deep: bool = False
    dry_run: bool = False


def fetch_models(
    settings: Settings,
    catalog: Catalog,
    names: list[str] | None = None,
    *,
    locked: bool = False,
    refresh: bool = False,
    deep: bool = False,
    dry_run: bool = False,
    free_space: FreeSpace = disk_free,
    bar: BarFactory = no_bar,
) -> FetchReport:
    """Install the named catalog models (all for none) that are missing or out of date
    (see :class:`FetchOptions` for the flags)."""
    options = FetchOptions(locked=locked, refresh=refresh, deep=deep, dry_run=dry_run)
    return FetchRun(settings, catalog, options, free_space=free_space, bar=bar).run(names)


@dataclass
class FetchRun:
    """One fetch: what it was asked, the volume's manifest (read once, under the volume write
    lock, and updated as models are installed) and the report it fills."""

    settings: Settings
    catalog: Catalog
    options: FetchOptions = field(default_factory=FetchOptions)
    free_space: FreeSpace = disk_free
    bar: BarFactory = no_bar
    report: FetchReport = field(default_factory=FetchReport)
    manifest: Manifest = field(default_factory=Manifest)
    lock_file: LockFile | None = None

    @property
    def models_dir(self) -> Path:
        return self.settings.models_dir

    @property
    def staging(self) -> Path:
        return self.settings.staging_dir

    def run(self, names: list[str] | None = None, tasks: list[str] | None = None) -> FetchReport:
        """Fetch the named catalog models and those of ``tasks`` (all for neither); returns
        the filled report."""
        models = self.catalog.select(names, tasks)
        if self.options.locked:
            self.lock_file = _load_lock_file(self.catalog, models)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        with VolumeWriteLock(self.models_dir):
            self.manifest = Manifest.load(self.models_dir)
            PreviousGenerations.load(self.models_dir)  # a malformed record: refused up front
            if self.options.deep:
                for model in models:
                    if model.name in self.manifest.models:
                        self._drop_corrupt_blobs(self.manifest.models[model.name])
            todo = self._outdated(models)
            if todo and self.settings.offline:
                for model, entry in todo:
                    self.report.results.append(offline_missing(model, entry))
            elif todo and self._hub_reachable([model for model, _ in todo]):
                self._fetch_remote(todo)
            if self.manifest.tasks != self.catalog.tasks and self.manifest.models:
                self.manifest.tasks = {task: list(n) for task, n in self.catalog.tasks.items()}
                self.manifest.save(self.models_dir)
            if not self.options.dry_run:  # previous generations whose retention has passed
                keep = self.settings.keep_previous
                prune_unreferenced(self.models_dir, self.manifest, [], keep=keep)
        order = {m.name: i for i, m in enumerate(models)}
        self.report.results.sort(key=lambda r: order.get(r.name, 0))
        return self.report

    def _hub_reachable(self, todo: list[CatalogModel]) -> bool:
        """The connectivity check, once, before the first model that needs the hub: when it
        fails, no model is tried (each would spend its retries on the same failure)."""
        try:
            check_route(self.settings)
        except NoRouteError as exc:  # said once, with what to do, on stderr
            logger.error("%s\n%s", exc, no_route_advice(self.settings))
            self.report.results += [no_route(model) for model in todo]
            return False
        return True

    # ---- what is installed --------------------------------------------------------------

    def _drop_corrupt_blobs(self, entry: ModelEntry) -> None:
        """Delete blobs whose content does not match the manifest, so they are fetched again."""
        for problem in check_entry(self.models_dir, entry, deep=True):
            logger.warning("%s; deleting it to fetch it again", problem)
            if not problem.path:
                continue
            with contextlib.suppress(VolumePathError, OSError):
                link = entry.file_path(self.models_dir, problem.path)
                if link.exists():
                    link.resolve().unlink()

    def _outdated(self, models: list[CatalogModel]) -> list[tuple[CatalogModel, ModelEntry | None]]:
        """The models to fetch; the others are reported up to date."""
        todo: list[tuple[CatalogModel, ModelEntry | None]] = []
        recheck = self.options.refresh and not self.settings.offline and self.lock_file is None
        for model in models:
            entry = self.manifest.models.get(model.name)
            if entry is not None and self._installed_ok(model, entry) and not recheck:
                self.report.results.append(up_to_date(model, entry))
            else:
                todo.append((model, entry))
        return todo

    def _installed_ok(self, model: CatalogModel, entry: ModelEntry) -> bool:
        if entry.repo_id != model.repo_id:
            return False
        if self.lock_file is not None:
            locked = self.lock_file.models[model.name]
            if entry.commit != locked.commit or {
                (f.path, f.size, f.sha256) for f in entry.files
            } != {(f.path, f.size, f.sha256) for f in locked.files}:
                return False
        elif model.revision not in (entry.revision, entry.commit):
            return False
        problems = check_entry(self.models_dir, entry)
        for problem in problems:
            logger.warning("installed model needs repair: %s", problem)
        return not problems

    # ---- planning and downloading -------------------------------------------------------

    def _fetch_remote(self, todo: list[tuple[CatalogModel, ModelEntry | None]]) -> None:
        plans: list[Plan] = []
        for model, entry in todo:
            started = time.monotonic()
            try:
                plan = plan_model(self.settings, self.manifest, model, entry, self.lock_file)
            except FetchError as exc:
                self.report.results.append(failed_result(model, exc, time.monotonic() - started))
                continue
            if plan is not None:
                plan.resolve_seconds = time.monotonic() - started
                plans.append(plan)
            elif entry is not None:
                self.report.results.append(up_to_date(model, entry))
        if not plans:
            return
        if self.options.dry_run:
            for plan in plans:
                self.report.results.append(would_fetch(plan))
            return
        self.staging.mkdir(parents=True, exist_ok=True)
        downloads = {w.key: w for p in plans for w in p.wanted if w.key not in p.reused}
        _clean_staging(self.staging, keep=set(downloads))

        needed = sum(
            w.size - _staged_size(inside(self.staging, key), w.size) for key, w in downloads.items()
        )
        try:
            free = check_free_space(
                self.models_dir, needed, self.settings.disk_margin, self.free_space, "download"
            )
        except DiskSpaceError as error:
            for plan in plans:
                self.report.results.append(failed_result(plan.model, error, plan.resolve_seconds))
            return
        logger.info(
            "%d model(s) to fetch: %d file(s), %s to download (%s free)",
            len(plans),
            len(downloads),
            human(needed),
            human(free),
        )
        self._download(plans, downloads)

    def _download(self, plans: list[Plan], downloads: dict[str, Wanted]) -> None:
        by_model = self.staging / _BY_MODEL
        shutil.rmtree(by_model, ignore_errors=True)
        cancel = threading.Event()
        pending: dict[str, Plan] = {p.name: p for p in plans}
        for plan in plans:  # files already on the volume: hard-link them in, no transfer
            plan.started = time.monotonic()
            for w in plan.wanted:
                if w.key in plan.reused:
                    staged = link_or_copy(plan.reused[w.key], by_model / plan.name / w.key)
                    plan.ready[w.path] = (plan.reused[w.key].name, staged)
        for plan in list(pending.values()):
            if plan.complete:
                self._install(plan)
                del pending[plan.name]

        downloader = Downloader(
            self.settings, headers=hub_headers(self.settings), bar=self.bar, cancel=cancel
        )
        jobs: queue.SimpleQueue[tuple[str, str, Wanted, Path, str]] = queue.SimpleQueue()
        for key, w in downloads.items():
            plan = next(p for p in plans if w in p.wanted)
            url = file_url(self.settings, plan.model.repo_id, plan.snapshot.commit, w.path)
            jobs.put((key, url, w, inside(self.staging, key), plan.name))
        done: queue.SimpleQueue[tuple[str, str | None, BaseException | None]] = queue.SimpleQueue()
        # Daemon threads, not an executor: on Ctrl-C/SIGTERM the process exits at once even
        # while a worker is blocked reading a stalled connection (a partial file stays staged
        # to resume).
        for index in range(min(self.settings.jobs, len(downloads))):
            threading.Thread(
                target=_worker,
                args=(downloader, jobs, done, cancel),
                name=f"hubless-download-{index}",
                daemon=True,
            ).start()
        try:
            for _ in range(len(downloads)):
                key, digest, exc = done.get()
                self._on_file_done(pending, key, digest, exc)
        except BaseException:
            cancel.set()
            raise
        downloader.close()
        shutil.rmtree(by_model, ignore_errors=True)
        with contextlib.suppress(OSError):  # only when empty: partial files stay to resume
            self.staging.rmdir()

    def _on_file_done(
        self,
        pending: dict[str, Plan],
        key: str,
        digest: str | None,
        exc: BaseException | None,
    ) -> None:
        staged = inside(self.staging, key)
        users = [p for p in pending.values() if any(x.key == key for x in p.wanted)]
        if exc is not None or digest is None:
            for plan in users:
                error = exc or FetchError(key)
                self.report.results.append(failed_result(plan.model, error, plan.elapsed()))
                del pending[plan.name]
            return
        if not users:  # its models failed meanwhile: keep the file, the next run reuses it
            return
        for plan in users:
            target = self.staging / _BY_MODEL / plan.name / key
            for x in plan.wanted:
                if x.key == key:
                    plan.ready[x.path] = (digest, link_or_copy(staged, target))
        staged.unlink(missing_ok=True)
        for plan in users:
            if plan.complete:
                self._install(plan)
                del pending[plan.name]

    # ---- installing ---------------------------------------------------------------------

    def _install(self, plan: Plan) -> None:
        files = [
            (FileRecord(w.path, w.size, plan.ready[w.path][0]), plan.ready[w.path][1])
            for w in plan.wanted
        ]
        old = self.manifest.models.get(plan.name)
        try:
            entry = install_model(
                self.models_dir,
                name=plan.name,
                repo_id=plan.model.repo_id,
                revision=plan.model.revision,
                commit=plan.snapshot.commit,
                task=plan.model.task,
                files=files,
                tasks=self.catalog.tasks,
                verify=False,  # every byte was hashed as it arrived
                move=True,
                manifest=self.manifest,
            )
        except (OSError, VolumePathError) as exc:
            error = FetchError(f"install failed: {exc}")
            self.report.results.append(failed_result(plan.model, error, plan.elapsed()))
            return
        if old is not None and (old.repo_id, old.commit) != (entry.repo_id, entry.commit):
            repos = {old.repo_id, entry.repo_id}  # the old commit is now a previous generation
            keep = self.settings.keep_previous
            prune_unreferenced(self.models_dir, self.manifest, repos, keep=keep)
        seconds = plan.elapsed()
        logger.info(
            "installed %s (%s@%s): %d files, %s in %.1fs",
            plan.name,
            plan.model.repo_id,
            entry.commit[:12],
            len(entry.files),
            human(entry.size),
            seconds,
        )
        self.report.results.append(
            ModelResult(
                plan.name,
                plan.model.repo_id,
                "installed",
                entry.commit,
                len(entry.files),
                entry.size,
                seconds,
            )
        )


def _load_lock_file(catalog: Catalog, models: list[CatalogModel]) -> LockFile:
    lock_file = LockFile.load(catalog.lock_path)
    stale = [
        m.name
        for m in models
        if m.name not in lock_file.models
        or lock_file.models[m.name].repo_id != m.repo_id
        or lock_file.models[m.name].revision != m.revision
    ]
    if stale:
        raise LockMismatchError(
            f"{catalog.lock_path} is out of date with the catalog for: {', '.join(stale)}; "
            "run `hubless-fetch lock` and commit the result"
        )
    return lock_file


def _worker(
    downloader: Downloader,
    jobs: queue.SimpleQueue[tuple[str, str, Wanted, Path, str]],
    done: queue.SimpleQueue[tuple[str, str | None, BaseException | None]],
    cancel: threading.Event,
) -> None:
    while not cancel.is_set():
        try:
            key, url, w, dest, model = jobs.get_nowait()
        except queue.Empty:
            return
        started = time.monotonic()
        try:
            digest = downloader.download(url, w, dest)
        except BaseException as exc:
            done.put((key, None, exc))
            continue
        logger.info(
            "%s: downloaded %s (%s) in %.1fs",
            model,
            w.path,
            human(w.size),
            time.monotonic() - started,
        )
        done.put((key, digest, None))


def _staged_size(path: Path, size: int) -> int:
    try:
        have = path.stat().st_size
    except FileNotFoundError:
        return 0
    return have if have <= size else 0


def _clean_staging(staging: Path, keep: set[str]) -> None:
    """Remove staged leftovers that this run does not need (partial files it needs are kept:
    their downloads resume)."""
    for child in staging.iterdir():
        if child.name in keep:
            continue
        logger.debug("removing stale staging entry %s", child)
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def hub_headers(settings: Settings) -> dict[str, str]:
    from huggingface_hub.utils import build_hf_headers

    from hubless_fetcher import __version__

    return build_hf_headers(
        token=settings.token, library_name="hubless-fetcher", library_version=__version__
    )
