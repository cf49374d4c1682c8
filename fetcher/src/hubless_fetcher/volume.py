"""Looking after a volume: ``remove`` (pruning), disk use (``du``), staging helpers.

Writers hold :class:`~hubless_fetcher.writelock.VolumeWriteLock`; paths into the volume are
joined through :func:`hubless_volume.inside`.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from hubless_fetcher.settings import STAGING_NAME, ConfigError
from hubless_fetcher.writelock import VolumeWriteLock
from hubless_volume import Manifest, ModelEntry, VolumePathError, blobs_dir, inside, repo_dir

logger = logging.getLogger(__name__)


def remove_model(models_dir: Path, name: str) -> ModelEntry:
    """Uninstall ``name``: its manifest entry goes first (the server stops seeing it), then the
    snapshot links, refs and blobs that no other entry references."""
    with VolumeWriteLock(models_dir):
        manifest = Manifest.load(models_dir)
        entry = manifest.models.pop(name, None)
        if entry is None:
            raise ConfigError(f"{name!r} is not installed in {models_dir}")
        manifest.save(models_dir)
        prune_repo(models_dir, entry.repo_id, manifest)
        logger.info("removed %s (%s@%s)", name, entry.repo_id, entry.commit[:12])
        return entry


def prune_repo(models_dir: Path, repo_id: str, manifest: Manifest | None = None) -> None:
    """Delete what no manifest entry of ``repo_id`` references: old snapshots, refs, blobs (the
    whole repo folder when none is left). Call it holding the volume write lock, after saving
    the manifest, so readers never see an entry whose files are gone."""
    models_dir = Path(models_dir)
    manifest = manifest if manifest is not None else Manifest.load(models_dir)
    repo = repo_dir(models_dir, repo_id)
    entries = [e for e in manifest.models.values() if e.repo_id == repo_id]
    if not entries:
        shutil.rmtree(repo, ignore_errors=True)
        return
    commits = {e.commit for e in entries}
    for snapshot in _children(repo / "snapshots"):
        if snapshot.name not in commits:
            shutil.rmtree(snapshot, ignore_errors=True)
        else:
            wanted = {f.path for e in entries if e.commit == snapshot.name for f in e.files}
            for link in sorted(snapshot.rglob("*"), reverse=True):
                relative = link.relative_to(snapshot).as_posix()
                if (link.is_symlink() or link.is_file()) and relative not in wanted:
                    link.unlink()
                elif link.is_dir() and not any(link.iterdir()):
                    link.rmdir()
    blobs = {f.sha256 for e in entries for f in e.files}
    for blob in _children(repo / "blobs"):
        if blob.name not in blobs:
            blob.unlink(missing_ok=True)
    for ref in _children(repo / "refs"):
        if ref.is_file() and ref.read_text(encoding="utf-8").strip() not in commits:
            ref.unlink()


def _children(directory: Path) -> list[Path]:
    try:
        return sorted(directory.iterdir())
    except FileNotFoundError:
        return []


@dataclass(frozen=True)
class DiskUse:
    """Bytes on disk per installed model (blobs it references) and for the whole volume."""

    per_model: dict[str, int]
    total: int
    staging: int


def _allocated(path: Path) -> int:
    st = path.stat()
    return st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size


def disk_use(models_dir: Path) -> DiskUse:
    """Disk use of each model's blobs, of every regular file on the volume, and of staging."""
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
    return DiskUse(per_model, total, staging)


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
