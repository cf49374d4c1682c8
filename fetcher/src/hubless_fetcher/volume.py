"""Looking after an installed volume: ``remove`` a model and measure disk use (``du``)."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from hubless_fetcher.constants import STAGING_NAME, ConfigError
from hubless_fetcher.install import volume_lock
from hubless_fetcher.manifest import Manifest, ModelEntry, repo_folder_name

logger = logging.getLogger(__name__)


def remove_model(models_dir: Path, name: str) -> ModelEntry:
    """Uninstall ``name``: its manifest entry goes first (the server stops seeing it), then the
    snapshot links, refs and blobs that no other entry references."""
    with volume_lock(models_dir):
        manifest = Manifest.load(models_dir)
        entry = manifest.models.pop(name, None)
        if entry is None:
            raise ConfigError(f"{name!r} is not installed in {models_dir}")
        manifest.save(models_dir)
        others = [e for e in manifest.models.values() if e.repo_id == entry.repo_id]
        repo_dir = Path(models_dir) / repo_folder_name(entry.repo_id)
        if not others:
            shutil.rmtree(repo_dir, ignore_errors=True)
            logger.info("removed %s and %s", name, repo_dir.name)
            return entry
        used_blobs = {f.sha256 for e in others for f in e.files}
        same_commit = [e for e in others if e.commit == entry.commit]
        if not same_commit:
            shutil.rmtree(entry.snapshot_dir(models_dir), ignore_errors=True)
        else:
            used_paths = {f.path for e in same_commit for f in e.files}
            for record in entry.files:
                if record.path not in used_paths:
                    (entry.snapshot_dir(models_dir) / record.path).unlink(missing_ok=True)
        for record in entry.files:
            if record.sha256 not in used_blobs:
                (repo_dir / "blobs" / record.sha256).unlink(missing_ok=True)
        ref = repo_dir / "refs" / entry.revision
        if ref.is_file() and not any(e.revision == entry.revision for e in others):
            ref.unlink()
        logger.info("removed %s (files shared with other entries kept)", name)
        return entry


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
        blobs = models_dir / repo_folder_name(entry.repo_id) / "blobs"
        used = 0
        for sha in {f.sha256 for f in entry.files}:
            try:
                used += _allocated(blobs / sha)
            except FileNotFoundError:
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
