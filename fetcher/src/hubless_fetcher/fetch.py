"""``fetch``: bring catalog models onto the volume, verified and installed atomically.

One fetch holds the volume lock from start to end, so a second fetcher on the same volume waits,
then finds the models installed and verifies them. Downloads are staged under
``<models_dir>/.staging/`` (same filesystem: installing is a rename) and go through
:func:`hubless_fetcher.install.install_model`, which writes the manifest entry last.
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

from hubless_fetcher.catalog import Catalog, CatalogModel, LockedModel, LockFile
from hubless_fetcher.constants import Settings
from hubless_fetcher.download import BarFactory, Downloader, Wanted, git_blob_id, no_bar
from hubless_fetcher.errors import (
    DiskSpaceError,
    ExitCode,
    FetchError,
    LockMismatchError,
    OfflineError,
    RevisionNotFoundError,
    combine,
)
from hubless_fetcher.install import install_model
from hubless_fetcher.manifest import FileRecord, Manifest, ModelEntry, repo_folder_name
from hubless_fetcher.remote import RemoteSnapshot, file_url, resolve
from hubless_fetcher.verify import check_entry
from hubless_fetcher.volume import hold_volume, human, link_or_copy, prune_repo

logger = logging.getLogger(__name__)

FreeSpace = Callable[[Path], int]
_BY_MODEL = "by-model"


def disk_free(path: Path) -> int:
    """Bytes available to this user on the filesystem holding ``path``."""
    return shutil.disk_usage(path).free


@dataclass
class ModelResult:
    """The outcome for one model, one row of the summary table."""

    name: str
    repo_id: str
    status: str  # installed | up to date | failed | missing
    commit: str = ""
    files: int = 0
    size: int = 0
    seconds: float = 0.0
    error: str = ""
    exit_code: ExitCode = ExitCode.OK


@dataclass
class FetchReport:
    results: list[ModelResult] = field(default_factory=list)

    @property
    def exit_code(self) -> ExitCode:
        return combine([r.exit_code for r in self.results if r.exit_code != ExitCode.OK])


@dataclass
class _Plan:
    """What one model still needs."""

    model: CatalogModel
    snapshot: RemoteSnapshot
    wanted: list[Wanted]
    reused: dict[str, Path]  # key -> existing blob on the volume (no download)
    previous: str | None = None  # commit installed before under this name
    started: float = field(default_factory=time.monotonic)
    ready: dict[str, tuple[str, Path]] = field(default_factory=dict)  # path -> (sha256, staged)

    @property
    def name(self) -> str:
        return self.model.name


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
    """Install the named catalog models (all for none) that are missing or out of date.

    Without ``refresh`` an installed model whose catalog revision is unchanged is up to date
    without asking the hub (a re-run needs no network); ``refresh`` resolves branches and tags
    again and re-fetches a model whose commit moved. ``locked`` installs exactly the lock file.
    ``deep`` re-hashes installed files first and re-fetches any whose sha256 is wrong.
    ``dry_run`` resolves what is missing and reports its size without downloading.
    """
    models = catalog.select(names)
    lock = _load_lock(catalog, models) if locked else None
    models_dir = settings.models_dir
    models_dir.mkdir(parents=True, exist_ok=True)
    report = FetchReport()
    with hold_volume(models_dir):
        manifest = Manifest.load(models_dir)
        if deep:
            for model in models:
                if model.name in manifest.models:
                    _drop_corrupt_blobs(models_dir, manifest.models[model.name])
        todo: list[tuple[CatalogModel, ModelEntry | None]] = []
        for model in models:
            entry = manifest.models.get(model.name)
            if (
                entry is not None
                and _installed_ok(settings, model, entry, lock)
                and not (refresh and not settings.offline and lock is None)
            ):
                report.results.append(_up_to_date(model, entry))
            else:
                todo.append((model, entry))
        if todo and settings.offline:
            for model, entry in todo:
                report.results.append(_offline_missing(model, entry))
        elif todo:
            _fetch_remote(settings, catalog, todo, lock, free_space, bar, report, dry_run)
        manifest = Manifest.load(models_dir)
        if manifest.tasks != catalog.tasks and manifest.models:
            manifest.tasks = {task: list(n) for task, n in catalog.tasks.items()}
            manifest.save(models_dir)
    order = {m.name: i for i, m in enumerate(models)}
    report.results.sort(key=lambda r: order.get(r.name, 0))
    return report


def _drop_corrupt_blobs(models_dir: Path, entry: ModelEntry) -> None:
    """Delete blobs whose content does not match the manifest, so they are fetched again."""
    for problem in check_entry(models_dir, entry, deep=True):
        link = entry.snapshot_dir(models_dir) / problem.path
        logger.warning("%s; deleting it to fetch it again", problem)
        if link.exists():
            link.resolve().unlink()


def _load_lock(catalog: Catalog, models: list[CatalogModel]) -> LockFile:
    lock = LockFile.load(catalog.lock_path)
    stale = [
        m.name
        for m in models
        if m.name not in lock.models
        or lock.models[m.name].repo_id != m.repo_id
        or lock.models[m.name].revision != m.revision
    ]
    if stale:
        raise LockMismatchError(
            f"{catalog.lock_path} is out of date with the catalog for: {', '.join(stale)}; "
            "run `hubless-fetch lock` and commit the result"
        )
    return lock


def _installed_ok(
    settings: Settings, model: CatalogModel, entry: ModelEntry | None, lock: LockFile | None
) -> bool:
    if entry is None or entry.repo_id != model.repo_id:
        return False
    if lock is not None:
        locked = lock.models[model.name]
        if entry.commit != locked.commit or {(f.path, f.size, f.sha256) for f in entry.files} != {
            (f.path, f.size, f.sha256) for f in locked.files
        }:
            return False
    elif model.revision not in (entry.revision, entry.commit):
        return False
    problems = check_entry(settings.models_dir, entry)
    for problem in problems:
        logger.warning("installed model needs repair: %s", problem)
    return not problems


def _up_to_date(model: CatalogModel, entry: ModelEntry) -> ModelResult:
    logger.info("%s: up to date (%s@%s)", model.name, model.repo_id, entry.commit[:12])
    return ModelResult(
        model.name, model.repo_id, "up to date", entry.commit, len(entry.files), entry.size
    )


def _offline_missing(model: CatalogModel, entry: ModelEntry | None) -> ModelResult:
    what = "is not installed" if entry is None else "is installed but outdated or damaged"
    message = (
        f"{model.name} ({model.repo_id}@{model.revision}) {what} and HF_HUB_OFFLINE=1: "
        "fetch it where the hub is reachable, or `hubless-fetch import` a bundle"
    )
    logger.error(message)
    return ModelResult(
        model.name,
        model.repo_id,
        "missing",
        error=message,
        exit_code=OfflineError.exit_code,
    )


def failed_result(
    model: CatalogModel, exc: BaseException, started: float | None = None
) -> ModelResult:
    code = exc.exit_code if isinstance(exc, FetchError) else ExitCode.FAILED
    logger.error("%s: %s", model.name, exc)
    seconds = time.monotonic() - started if started else 0.0
    return ModelResult(
        model.name, model.repo_id, "failed", seconds=seconds, error=str(exc), exit_code=code
    )


def _plan_model(
    settings: Settings, model: CatalogModel, entry: ModelEntry | None, lock: LockFile | None
) -> _Plan | None:
    """Resolve ``model`` on the hub and list what to download; ``None`` when the installed
    entry already matches (``--refresh`` found the same commit)."""
    if lock is not None:
        locked = lock.models[model.name]
        try:
            snapshot = resolve(settings, model.repo_id, locked.commit)
        except RevisionNotFoundError:
            raise LockMismatchError(
                f"{model.repo_id}: locked commit {locked.commit} no longer exists upstream "
                "(history rewritten?); run `hubless-fetch lock` to pin a current one"
            ) from None
        _compare_with_lock(model, locked, snapshot)
        by_path = {f.path: f for f in locked.files}
        wanted = [Wanted(f.path, f.size, sha256=by_path[f.path].sha256) for f in snapshot.files]
    else:
        snapshot = resolve(settings, model.repo_id, model.revision)
        wanted = [Wanted(f.path, f.size, f.sha256, f.blob_id) for f in snapshot.files]
        if (
            entry is not None
            and entry.commit == snapshot.commit
            and entry.revision == model.revision
            and {(f.path, f.size) for f in entry.files} == {(w.path, w.size) for w in wanted}
            and not check_entry(settings.models_dir, entry)
        ):
            return None
    blobs = settings.models_dir / repo_folder_name(model.repo_id) / "blobs"
    by_size: dict[int, set[str]] = {}  # installed files of this repo, any name or commit
    for other in Manifest.load(settings.models_dir).models.values():
        if other.repo_id == model.repo_id:
            for record in other.files:
                by_size.setdefault(record.size, set()).add(record.sha256)
    reused: dict[str, Path] = {}
    for w in wanted:
        blob = _reusable_blob(blobs, w, by_size.get(w.size, set()))
        if blob is not None:
            reused[w.key] = blob
    return _Plan(model, snapshot, wanted, reused, entry.commit if entry is not None else None)


def _reusable_blob(blobs: Path, w: Wanted, same_size: set[str]) -> Path | None:
    """A blob already on the volume with the content ``w`` needs (no download).

    ``same_size`` holds the sha256 of installed files of the repo with ``w``'s size: a small
    git-stored file (known only by its git blob id) is matched by hashing those candidates.
    """
    if w.sha256 is not None:
        blob = blobs / w.sha256
        return blob if blob.is_file() and blob.stat().st_size == w.size else None
    for sha256 in sorted(same_size):
        blob = blobs / sha256
        try:
            data = blob.read_bytes()
        except OSError:
            continue
        if git_blob_id(data) == w.blob_id:
            return blob
    return None


def _compare_with_lock(model: CatalogModel, locked: LockedModel, snapshot: RemoteSnapshot) -> None:
    remote = {f.path: f for f in snapshot.files}
    mine = {f.path: f for f in locked.files}
    differences: list[str] = []
    for path in sorted(set(remote) | set(mine)):
        r, m = remote.get(path), mine.get(path)
        if r is None or m is None:
            differences.append(f"{path} {'only in the lock' if r is None else 'not in the lock'}")
        elif r.size != m.size:
            differences.append(f"{path} size {r.size} != locked {m.size}")
        elif r.sha256 is not None and r.sha256 != m.sha256:
            differences.append(f"{path} sha256 differs")
        elif r.sha256 is None and m.blob_id is not None and r.blob_id != m.blob_id:
            differences.append(f"{path} git blob id differs")
    if differences:
        raise LockMismatchError(
            f"{model.repo_id}@{locked.commit[:12]} differs from the lock: "
            + "; ".join(differences[:5])
            + (" ..." if len(differences) > 5 else "")
        )


def _fetch_remote(
    settings: Settings,
    catalog: Catalog,
    todo: list[tuple[CatalogModel, ModelEntry | None]],
    lock: LockFile | None,
    free_space: FreeSpace,
    bar: BarFactory,
    report: FetchReport,
    dry_run: bool,
) -> None:
    plans: list[_Plan] = []
    for model, entry in todo:
        try:
            plan = _plan_model(settings, model, entry, lock)
        except FetchError as exc:
            report.results.append(failed_result(model, exc))
            continue
        if plan is not None:
            plans.append(plan)
        elif entry is not None:
            report.results.append(_up_to_date(model, entry))
    if not plans:
        return
    if dry_run:
        for plan in plans:
            todo_bytes = sum(w.size for w in plan.wanted if w.key not in plan.reused)
            logger.info(
                "%s: would fetch %d file(s), %s (%s@%s)",
                plan.name,
                len(plan.wanted),
                human(todo_bytes),
                plan.model.repo_id,
                plan.snapshot.commit[:12],
            )
            report.results.append(
                ModelResult(
                    plan.name,
                    plan.model.repo_id,
                    "would fetch",
                    plan.snapshot.commit,
                    len(plan.wanted),
                    plan.snapshot.size,
                )
            )
        return
    staging = settings.staging_dir
    staging.mkdir(parents=True, exist_ok=True)
    downloads = {w.key: w for p in plans for w in p.wanted if w.key not in p.reused}
    _clean_staging(staging, keep=set(downloads))

    needed = sum(w.size - _staged_size(staging / key, w.size) for key, w in downloads.items())
    free = free_space(settings.models_dir)
    if needed + settings.disk_margin > free:
        error = DiskSpaceError(
            f"not enough disk space on {settings.models_dir}: {human(needed)} still to download "
            f"+ {human(settings.disk_margin)} margin (HUBLESS_DISK_MARGIN), "
            f"{human(free)} free; free some space or use another --models-dir"
        )
        for plan in plans:
            report.results.append(failed_result(plan.model, error))
        return
    logger.info(
        "%d model(s) to fetch: %d file(s), %s to download (%s free)",
        len(plans),
        len(downloads),
        human(needed),
        human(free),
    )
    _run_downloads(settings, catalog, plans, downloads, bar, report)


def _run_downloads(
    settings: Settings,
    catalog: Catalog,
    plans: list[_Plan],
    downloads: dict[str, Wanted],
    bar: BarFactory,
    report: FetchReport,
) -> None:
    staging = settings.staging_dir
    by_model = staging / _BY_MODEL
    shutil.rmtree(by_model, ignore_errors=True)
    cancel = threading.Event()
    pending: dict[str, _Plan] = {p.name: p for p in plans}
    for plan in plans:  # files already on the volume: hard-link them in, no transfer
        for w in plan.wanted:
            if w.key in plan.reused:
                staged = link_or_copy(plan.reused[w.key], by_model / plan.name / w.key)
                plan.ready[w.path] = (plan.reused[w.key].name, staged)
    for plan in list(pending.values()):
        if len(plan.ready) == len(plan.wanted):
            _install(settings, catalog, plan, report)
            del pending[plan.name]

    downloader = Downloader(settings, headers=hub_headers(settings), bar=bar, cancel=cancel)
    jobs: queue.SimpleQueue[tuple[str, str, Wanted, Path, str]] = queue.SimpleQueue()
    for key, w in downloads.items():
        plan = next(p for p in plans if w in p.wanted)
        url = file_url(settings, plan.model.repo_id, plan.snapshot.commit, w.path)
        jobs.put((key, url, w, staging / key, plan.name))
    done: queue.SimpleQueue[tuple[str, str | None, BaseException | None]] = queue.SimpleQueue()
    # Daemon threads, not an executor: on Ctrl-C/SIGTERM the process exits at once even while
    # a worker is blocked reading a stalled connection (a partial file stays staged to resume).
    for index in range(min(settings.jobs, len(downloads))):
        threading.Thread(
            target=_worker,
            args=(downloader, jobs, done, cancel),
            name=f"hubless-download-{index}",
            daemon=True,
        ).start()
    try:
        for _ in range(len(downloads)):
            key, digest, exc = done.get()
            _on_file_done(settings, catalog, pending, key, digest, exc, report)
    except BaseException:
        cancel.set()
        raise
    downloader.close()
    shutil.rmtree(by_model, ignore_errors=True)
    with contextlib.suppress(OSError):  # only when empty: partial files stay to resume
        staging.rmdir()


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


def _on_file_done(
    settings: Settings,
    catalog: Catalog,
    pending: dict[str, _Plan],
    key: str,
    digest: str | None,
    exc: BaseException | None,
    report: FetchReport,
) -> None:
    staged = settings.staging_dir / key
    users = [p for p in pending.values() if any(x.key == key for x in p.wanted)]
    if exc is not None or digest is None:
        for plan in users:
            report.results.append(failed_result(plan.model, exc or FetchError(key), plan.started))
            del pending[plan.name]
        return
    if not users:  # its models failed meanwhile: keep the file, the next run reuses it
        return
    for plan in users:
        target = settings.staging_dir / _BY_MODEL / plan.name / key
        for x in plan.wanted:
            if x.key == key:
                plan.ready[x.path] = (digest, link_or_copy(staged, target))
    staged.unlink(missing_ok=True)
    for plan in users:
        if len(plan.ready) == len(plan.wanted):
            _install(settings, catalog, plan, report)
            del pending[plan.name]


def _install(settings: Settings, catalog: Catalog, plan: _Plan, report: FetchReport) -> None:
    files = [
        (FileRecord(w.path, w.size, plan.ready[w.path][0]), plan.ready[w.path][1])
        for w in plan.wanted
    ]
    try:
        entry = install_model(
            settings.models_dir,
            name=plan.name,
            repo_id=plan.model.repo_id,
            revision=plan.model.revision,
            commit=plan.snapshot.commit,
            task=plan.model.task,
            files=files,
            tasks=catalog.tasks,
            verify=False,  # every byte was hashed as it arrived
            move=True,
        )
    except OSError as exc:
        report.results.append(failed_result(plan.model, FetchError(f"install failed: {exc}")))
        return
    if plan.previous is not None and plan.previous != entry.commit:
        prune_repo(settings.models_dir, plan.model.repo_id)  # the old commit's files
    seconds = time.monotonic() - plan.started
    logger.info(
        "installed %s (%s@%s): %d files, %s in %.1fs",
        plan.name,
        plan.model.repo_id,
        entry.commit[:12],
        len(entry.files),
        human(entry.size),
        seconds,
    )
    report.results.append(
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
