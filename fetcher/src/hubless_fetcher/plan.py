"""What one catalog model still needs: resolve it, list its files, reuse what the volume has.

A :class:`Plan` is made per model by :func:`plan_model` before anything is downloaded: the
commit (from the hub, or from the lock file with ``--locked``), every selected file with the
hash its bytes must have, and the blobs already on the volume that need no transfer (any name
or commit of the same repository). The hub's names (commit, file paths, hashes) become paths
on the volume, so they are checked with :func:`hubless_volume.inside` here, before any byte is
written.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from hubless_fetcher.catalog import CatalogModel
from hubless_fetcher.download import Wanted, git_blob_id
from hubless_fetcher.errors import FetchError, LockMismatchError, RevisionNotFoundError
from hubless_fetcher.lockfile import LockedModel, LockFile
from hubless_fetcher.remote import RemoteSnapshot, resolve
from hubless_fetcher.settings import Settings
from hubless_volume import (
    Manifest,
    ModelEntry,
    VolumePathError,
    blobs_dir,
    check_entry,
    inside,
    read_regular_file,
    snapshot_file,
)


@dataclass
class Plan:
    """What one model still needs, and (while downloading) which of its files are ready."""

    model: CatalogModel
    snapshot: RemoteSnapshot
    wanted: list[Wanted]
    reused: dict[str, Path]  # key -> existing blob on the volume (no download)
    previous: str | None = None  # commit installed before under this name
    resolve_seconds: float = 0.0  # spent resolving it (planning), before any download
    started: float = field(default_factory=time.monotonic)  # reset when the downloads start
    ready: dict[str, tuple[str, Path]] = field(default_factory=dict)  # path -> (sha256, staged)

    @property
    def name(self) -> str:
        return self.model.name

    def elapsed(self) -> float:
        """Seconds spent on this model: resolving it, then since the downloads started."""
        return self.resolve_seconds + time.monotonic() - self.started

    @property
    def complete(self) -> bool:
        """Every file is downloaded (or reused) and staged: the model can be installed."""
        return len(self.ready) == len(self.wanted)


def plan_model(
    settings: Settings,
    manifest: Manifest,
    model: CatalogModel,
    entry: ModelEntry | None,
    lock_file: LockFile | None,
) -> Plan | None:
    """Resolve ``model`` and list what to download; ``None`` when the installed ``entry``
    already matches (``--refresh`` found the same commit). ``manifest`` is the run's copy."""
    if lock_file is not None:
        locked = lock_file.models[model.name]
        try:
            snapshot = resolve(settings, model.repo_id, locked.commit)
        except RevisionNotFoundError:
            raise LockMismatchError(
                f"{model.repo_id}: locked commit {locked.commit} no longer exists upstream "
                "(history rewritten?); run `hubless-fetch lock` to pin a current one"
            ) from None
        compare_with_lock(model, locked, snapshot)
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
    _check_paths(settings, model, snapshot.commit, wanted)
    blobs = blobs_dir(settings.models_dir, model.repo_id)
    by_size: dict[int, set[str]] = {}  # installed files of this repo, any name or commit
    for other in manifest.models.values():
        if other.repo_id == model.repo_id:
            for record in other.files:
                by_size.setdefault(record.size, set()).add(record.sha256)
    reused: dict[str, Path] = {}
    for w in wanted:
        blob = _reusable_blob(blobs, w, by_size.get(w.size, set()))
        if blob is not None:
            reused[w.key] = blob
    return Plan(model, snapshot, wanted, reused, entry.commit if entry is not None else None)


def _check_paths(
    settings: Settings, model: CatalogModel, commit: str, wanted: list[Wanted]
) -> None:
    """Refuse a listing whose commit, file paths or hashes would lead off the volume."""
    try:
        for w in wanted:
            snapshot_file(settings.models_dir, model.repo_id, commit, w.path)
            inside(settings.staging_dir, w.key)
    except VolumePathError as exc:
        raise FetchError(f"{model.repo_id}@{commit[:12]}: refused: {exc}") from None


def _reusable_blob(blobs: Path, w: Wanted, same_size: set[str]) -> Path | None:
    """A blob already on the volume with the content ``w`` needs (no download).

    ``same_size`` holds the sha256 of installed files of the repo with ``w``'s size: a small
    git-stored file (known only by its git blob id) is matched by hashing those candidates.
    """
    if w.sha256 is not None:
        try:
            blob = inside(blobs, w.sha256)
        except VolumePathError:
            return None
        return blob if blob.is_file() and blob.stat().st_size == w.size else None
    for sha256 in sorted(same_size):
        try:
            blob = inside(blobs, sha256)
            data = read_regular_file(blob, w.size)  # never a FIFO or a device
        except (OSError, VolumePathError):
            continue
        if git_blob_id(data) == w.blob_id:
            return blob
    return None


def compare_with_lock(model: CatalogModel, locked: LockedModel, snapshot: RemoteSnapshot) -> None:
    """Raise :class:`LockMismatchError` unless the hub's listing of the locked commit has the
    lock file's files, sizes and hashes."""
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
