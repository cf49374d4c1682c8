"""Looking after a volume: ``remove``, the one pruning function (:func:`prune_unreferenced`,
which applies the retention of previous generations, :mod:`hubless_fetcher.retention`), disk
use (``du``), staging helpers.

Writers hold :class:`~hubless_fetcher.writelock.VolumeWriteLock`; paths into the volume are
joined through :func:`hubless_volume.inside`.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from hubless_fetcher.errors import DiskSpaceError
from hubless_fetcher.retention import KeepPrevious
from hubless_fetcher.settings import STAGING_NAME, ConfigError
from hubless_fetcher.writelock import VolumeWriteLock
from hubless_volume import (
    Manifest,
    ModelEntry,
    PreviousGenerations,
    VolumePathError,
    blobs_dir,
    inside,
    read_volume_file,
    repo_folder_name,
    utc_now,
)

logger = logging.getLogger(__name__)

DEFAULT_KEEP = KeepPrevious()
_MAX_REF_BYTES = 1024  # a ref holds one 40-hex commit


def remove_model(models_dir: Path, name: str, keep: KeepPrevious = DEFAULT_KEEP) -> ModelEntry:
    """Uninstall ``name``: its manifest entry goes first (the server stops seeing it); its
    files become its previous generation, which ``keep`` keeps or lets go (``0``: the
    snapshot links, refs and blobs no other entry references are deleted at once)."""
    with VolumeWriteLock(models_dir):
        manifest = Manifest.load(models_dir)
        previous = PreviousGenerations.load(models_dir)
        entry = manifest.models.pop(name, None)
        if entry is None:
            raise ConfigError(f"{name!r} is not installed in {models_dir}")
        previous.retire(entry, utc_now())
        previous.save(models_dir)  # before the manifest: its files are never unrecorded
        manifest.save(models_dir)
        prune_unreferenced(models_dir, manifest, [entry.repo_id], keep=keep)
        logger.info("removed %s (%s@%s)", name, entry.repo_id, entry.commit[:12])
        return entry


def prune_unreferenced(
    models_dir: Path,
    manifest: Manifest,
    repo_ids: Iterable[str] | None = None,
    *,
    keep: KeepPrevious = DEFAULT_KEEP,
    now: datetime | None = None,
    dry_run: bool = False,
) -> list[Path]:
    """Delete what neither a manifest entry nor a kept previous generation references, and
    return what was deleted (with ``dry_run``, what would be, and nothing changes).

    The one place files leave the volume (``remove``, a model moved to a new commit by
    ``fetch`` or ``import``, the end of every ``fetch``, ``gc``). A file derived from a commit
    (``hubless-optimize``'s ``hubless-onnx/<commit>/model.onnx``, the golden outputs in
    ``hubless-golden/<commit>/``, the signature files in ``hubless-signatures/<commit>/``) is
    referenced while an entry records it, and deleted like any other file otherwise (the entry
    of a new commit starts without any). First the retention: of the
    previous generations recorded on the volume (:class:`hubless_volume.PreviousGenerations`)
    those that ``keep`` lets go at ``now`` are forgotten (the record is saved before any file
    goes) and their repository folders are pruned too. Then, in each repository folder (those
    of ``repo_ids`` plus those, or every ``models--*`` folder for ``None``): the snapshots of
    commits nothing uses, snapshot links nothing lists, blobs no sha256 names, and refs to
    commits nothing uses; the whole folder when nothing in it is referenced. Call it holding
    the volume write lock, after saving ``manifest``, so readers never see an entry whose
    files are gone. Never follows a symlink out of the volume (every folder is joined through
    :func:`inside`; a link is deleted, never its target).
    """
    models_dir = Path(models_dir)
    previous = PreviousGenerations.load(models_dir)
    kept, expired = keep.split(previous, manifest, now or datetime.now(UTC))
    if expired and not dry_run:
        previous.drop(expired)
        previous.save(models_dir)
    if repo_ids is None:
        folders = {p.name for p in _children(models_dir) if p.name.startswith("models--")}
    else:
        folders = {repo_folder_name(r) for r in repo_ids}
        folders |= {repo_folder_name(g.entry.repo_id) for g in expired}
    referenced = [*manifest.models.values(), *(g.entry for g in kept)]
    removed: list[Path] = []
    for folder in sorted(folders):
        entries = [e for e in referenced if repo_folder_name(e.repo_id) == folder]
        try:
            repo = inside(models_dir, folder)
            if not entries:
                if repo.is_dir() and not repo.is_symlink():
                    if not dry_run:
                        shutil.rmtree(repo)
                    removed.append(repo)
                continue
            removed += _prune_repo(models_dir, folder, entries, dry_run)
        except (OSError, VolumePathError) as exc:
            logger.warning("could not prune %s: %s", folder, exc)
    for path in removed:
        logger.debug("%s %s", "would prune" if dry_run else "pruned", path)
    return removed


def _prune_repo(
    models_dir: Path, folder: str, entries: list[ModelEntry], dry_run: bool = False
) -> list[Path]:
    removed: list[Path] = []
    delete = (lambda _path: None) if dry_run else _delete
    commits = {e.commit for e in entries}
    for snapshot in _children(inside(models_dir, folder, "snapshots")):
        if snapshot.name not in commits or snapshot.is_symlink() or not snapshot.is_dir():
            delete(snapshot)
            removed.append(snapshot)
            continue
        wanted = {f.path for e in entries if e.commit == snapshot.name for f in e.files}
        for root, dirs, files in os.walk(snapshot, topdown=False):
            for name in files + [d for d in dirs if Path(root, d).is_symlink()]:
                link = Path(root, name)
                if link.relative_to(snapshot).as_posix() not in wanted:
                    delete(link)
                    removed.append(link)
            for name in [] if dry_run else dirs:
                child = Path(root, name)
                if child.is_dir() and not child.is_symlink() and not any(child.iterdir()):
                    child.rmdir()
    blobs = {f.sha256 for e in entries for f in e.files}
    for blob in _children(inside(models_dir, folder, "blobs")):
        if blob.name not in blobs:
            delete(blob)
            removed.append(blob)
    for ref in _refs(inside(models_dir, folder, "refs")):
        if ref.is_symlink() or _ref_commit(models_dir, ref) not in commits:
            delete(ref)
            removed.append(ref)
    return removed + _prune_artifacts(models_dir, folder, entries, delete)


def _prune_artifacts(
    models_dir: Path, folder: str, entries: list[ModelEntry], delete: Callable[[Path], None]
) -> list[Path]:
    """In the ``hubless-<kind>/<commit>/`` folders of the files derived from a commit
    (``hubless-optimize``'s artifacts, golden outputs, signature files): every file no entry
    references (one of a commit no entry uses, one re-made, a leftover), and folders left
    empty."""
    wanted = {path for e in entries for path in e.derived_paths()}
    removed: list[Path] = []
    repo = inside(models_dir, folder)
    for top in _children(repo):
        if not top.name.startswith("hubless-"):
            continue
        if top.is_symlink() or not top.is_dir():
            delete(top)
            removed.append(top)
            continue
        for commit in _children(top):
            if commit.is_symlink() or not commit.is_dir():
                delete(commit)
                removed.append(commit)
                continue
            files = _children(commit)
            stale = [f for f in files if f.relative_to(repo).as_posix() not in wanted]
            if len(stale) == len(files):  # nothing in it is recorded: the whole folder
                delete(commit)
                removed.append(commit)
                continue
            for file in stale:
                delete(file)
                removed.append(file)
        if all(p in removed for p in _children(top)):
            delete(top)
    return removed


def _delete(path: Path) -> None:
    """Remove a file, a link (not its target) or a real folder."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _ref_commit(models_dir: Path, ref: Path) -> str | None:
    """The commit a ref file names; None when it is not a small regular file of the volume
    (a FIFO, a device: never opened) or not text."""
    try:
        return read_volume_file(models_dir, ref, _MAX_REF_BYTES).decode("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _refs(directory: Path) -> list[Path]:
    """Every ref file under ``refs/`` (``main``, ``refs/pr/1``), links included, no folder
    link followed."""
    found: list[Path] = []
    for root, _dirs, files in os.walk(directory):
        found += [Path(root, name) for name in files]
    return sorted(found)


def _children(directory: Path) -> list[Path]:
    try:
        return sorted(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


@dataclass(frozen=True)
class KeptUse:
    """A previous generation on the volume (``du``, ``list``): the bytes of the blobs that
    only it holds (what pruning it frees), and until when the retention keeps it."""

    name: str
    repo_id: str
    commit: str
    replaced_at: str
    size: int
    until: str  # "next update", a time, or "expired" (the next writer or gc prunes it)


@dataclass(frozen=True)
class DiskUse:
    """Bytes on disk per installed model (blobs it references), held only by previous
    generations, and for the whole volume."""

    per_model: dict[str, int]
    total: int
    staging: int
    previous: list[KeptUse] = field(default_factory=list)


def _allocated(path: Path) -> int:
    st = path.stat()
    return st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size


def previous_use(
    models_dir: Path, manifest: Manifest, keep: KeepPrevious = DEFAULT_KEEP
) -> list[KeptUse]:
    """Every previous generation recorded on the volume, with the bytes only it holds (a blob
    two generations share counts for the first) and until when ``keep`` keeps it."""
    models_dir = Path(models_dir)
    previous = PreviousGenerations.load(models_dir)
    kept, _expired = keep.split(previous, manifest, datetime.now(UTC))
    counted = {(e.repo_id, f.sha256) for e in manifest.models.values() for f in e.files}
    rows: list[KeptUse] = []
    for generation in previous:
        entry = generation.entry
        size = 0
        for sha in sorted({f.sha256 for f in entry.files}):
            if (entry.repo_id, sha) in counted:
                continue
            counted.add((entry.repo_id, sha))
            try:
                blob = inside(blobs_dir(models_dir, entry.repo_id), sha)
                size += 0 if blob.is_symlink() else _allocated(blob)
            except (OSError, VolumePathError):
                continue
        until = keep.until(generation) if generation in kept else "expired"
        rows.append(
            KeptUse(entry.name, entry.repo_id, entry.commit, generation.replaced_at, size, until)
        )
    return rows


def disk_use(models_dir: Path, keep: KeepPrevious = DEFAULT_KEEP) -> DiskUse:
    """Disk use of each model's blobs, of previous generations, of every regular file on the
    volume, and of staging."""
    models_dir = Path(models_dir)
    manifest = Manifest.load(models_dir)
    per_model: dict[str, int] = {}
    for name, entry in sorted(manifest.models.items()):
        blobs = blobs_dir(models_dir, entry.repo_id)
        used = 0
        for sha in {f.sha256 for f in entry.files}:
            try:
                used += _allocated(inside(blobs, sha))
            except (FileNotFoundError, VolumePathError):
                continue
        per_model[name] = used
    total = staging = 0
    seen: set[tuple[int, int]] = set()
    for root, _dirs, files in os.walk(models_dir):
        for file in files:
            path = Path(root) / file
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            size = st.st_blocks * 512
            total += size
            if STAGING_NAME in path.relative_to(models_dir).parts[:1]:
                staging += size
    return DiskUse(per_model, total, staging, previous_use(models_dir, manifest, keep))


def check_free_space(
    models_dir: Path, needed: int, margin: int, free_space: Callable[[Path], int], what: str
) -> int:
    """The disk preflight of every writer (``fetch``, ``import``): returns the free bytes, or
    raises :class:`DiskSpaceError` (exit 3) when ``needed`` bytes still to ``what`` plus
    ``margin`` (``HUBLESS_DISK_MARGIN``) do not fit on ``models_dir``."""
    free = free_space(models_dir)
    if needed + margin > free:
        raise DiskSpaceError(
            f"not enough disk space on {models_dir}: {human(needed)} still to {what} "
            f"+ {human(margin)} margin (HUBLESS_DISK_MARGIN), "
            f"{human(free)} free; free some space or use another --models-dir"
        )
    return free


def link_or_copy(source: Path, target: Path) -> Path:
    """Hard-link (or copy, where links are not supported) ``source`` to ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return target


def human(size: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover
