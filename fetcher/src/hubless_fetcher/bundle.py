"""Air-gap bundles: verified models carried as one tar file.

A bundle is an uncompressed tar (weights do not compress) holding ``hubless-bundle.json``
first — the manifest entries and task order of the exported models — then ``blobs/<sha256>``,
each distinct file once. ``import`` hashes every blob as it extracts it into the volume's
staging folder, and installs through :func:`~hubless_fetcher.install.install_model` only when
every blob of the bundle matched: a bundle is imported whole or not at all.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
import time
import uuid
from pathlib import Path

from hubless_fetcher.errors import BundleError
from hubless_fetcher.install import install_model
from hubless_fetcher.settings import STAGING_NAME, ConfigError
from hubless_fetcher.volume import link_or_copy
from hubless_fetcher.writelock import VolumeWriteLock
from hubless_volume import (
    Manifest,
    ManifestError,
    ModelEntry,
    VolumePathError,
    inside,
    repo_folder_name,
)

logger = logging.getLogger(__name__)

BUNDLE_INDEX = "hubless-bundle.json"
BUNDLE_VERSION = 1
_BLOB = re.compile(r"^blobs/([0-9a-f]{64})$")
_CHUNK = 1 << 20


class _HashingReader(io.RawIOBase):
    """Reads a file and hashes exactly what was read (so export needs one pass per blob)."""

    def __init__(self, fh: io.BufferedReader) -> None:
        self.fh = fh
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.fh.read(size)
        self.digest.update(data)
        return data


def export_bundle(models_dir: Path, bundle: Path, names: list[str] | None = None) -> list[str]:
    """Write the named installed models (all for none) to ``bundle``; returns their names.

    Every blob is re-hashed while it is written: a corrupt volume fails the export
    (:class:`BundleError`) instead of spreading bad bytes.
    """
    models_dir, bundle = Path(models_dir), Path(bundle)
    manifest = Manifest.load(models_dir)
    names = names or sorted(manifest.models)
    missing = [n for n in names if n not in manifest.models]
    if missing:
        raise ConfigError(f"not installed in {models_dir}: {', '.join(missing)}")
    if not names:
        raise ConfigError(f"nothing installed in {models_dir} to export")
    entries = [manifest.models[n] for n in names]
    index = {
        "version": BUNDLE_VERSION,
        "tasks": {task: [n for n in order if n in names] for task, order in manifest.tasks.items()},
        "models": {e.name: e.to_json() for e in entries},
    }
    part = bundle.with_name(f".{bundle.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with tarfile.open(part, "w", format=tarfile.PAX_FORMAT) as tar:
            data = json.dumps(index, indent=2).encode()
            info = tarfile.TarInfo(BUNDLE_INDEX)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(data))
            written: set[str] = set()
            for entry in entries:
                for record in entry.files:
                    if record.sha256 in written:
                        continue
                    path = entry.file_path(models_dir, record.path)
                    _add_blob(tar, path, record.sha256, record.size, entry.name)
                    written.add(record.sha256)
        os.replace(part, bundle)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    logger.info("exported %d model(s) to %s", len(entries), bundle)
    return names


def _add_blob(tar: tarfile.TarFile, path: Path, sha256: str, size: int, model: str) -> None:
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        raise BundleError(f"{model}: {path} is missing; run `hubless-fetch verify`") from None
    if actual != size:
        raise BundleError(f"{model}: {path} has {actual} bytes, expected {size}")
    info = tarfile.TarInfo(f"blobs/{sha256}")
    info.size, info.mtime, info.mode = size, int(time.time()), 0o644
    with open(path, "rb") as fh:
        reader = _HashingReader(fh)
        tar.addfile(info, reader)
    if reader.digest.hexdigest() != sha256:
        raise BundleError(f"{model}: {path} is corrupt (sha256 differs from the manifest)")


def import_bundle(models_dir: Path, bundle: Path) -> list[ModelEntry]:
    """Install every model of ``bundle`` after checking every blob's sha256 and size."""
    models_dir, bundle = Path(models_dir), Path(bundle)
    models_dir.mkdir(parents=True, exist_ok=True)
    try:
        tar = tarfile.open(bundle, "r:*")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        raise ConfigError(f"bundle {bundle} does not exist") from None
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(f"{bundle} is not a readable bundle: {exc}") from None
    with tar, VolumeWriteLock(models_dir):
        entries, tasks = _read_index(tar, bundle)
        _check_paths(models_dir, bundle, entries)
        staging = models_dir / STAGING_NAME / f"import-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        try:
            blobs = _extract_verified(tar, bundle, staging, entries)
            installed = []
            for entry in entries:
                files = [
                    (r, link_or_copy(blobs[r.sha256], staging / entry.name / r.sha256))
                    for r in entry.files
                ]
                installed.append(
                    install_model(
                        models_dir,
                        name=entry.name,
                        repo_id=entry.repo_id,
                        revision=entry.revision,
                        commit=entry.commit,
                        task=entry.task,
                        files=files,
                        verify=False,  # hashed while extracting
                        move=True,
                    )
                )
                logger.info("imported %s (%s@%s)", entry.name, entry.repo_id, entry.commit[:12])
            _merge_tasks(models_dir, tasks)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return installed


def _read_index(tar: tarfile.TarFile, bundle: Path) -> tuple[list[ModelEntry], dict]:
    try:
        member = tar.getmember(BUNDLE_INDEX)
        fh = tar.extractfile(member)
        index = json.loads(fh.read() if fh else b"")
        if index.get("version") != BUNDLE_VERSION:
            raise BundleError(f"{bundle}: unsupported bundle version {index.get('version')!r}")
        entries = [ModelEntry.from_json(e) for e in index["models"].values()]
    except KeyError:
        raise BundleError(f"{bundle} has no {BUNDLE_INDEX}: not a hubless bundle") from None
    except (ValueError, ManifestError, AttributeError, TypeError) as exc:
        raise BundleError(f"{bundle}: unreadable {BUNDLE_INDEX}: {exc}") from None

    tasks = index.get("tasks", {})
    return entries, tasks if isinstance(tasks, dict) else {}


def _check_paths(models_dir: Path, bundle: Path, entries: list[ModelEntry]) -> None:
    """Refuse the whole bundle if one of its paths (commit, ref, file) would lead off the
    volume, before anything is installed."""
    for entry in entries:
        try:
            inside(models_dir, repo_folder_name(entry.repo_id), "refs", entry.revision)
            for record in entry.files:
                entry.file_path(models_dir, record.path)
        except VolumePathError as exc:
            raise BundleError(f"{bundle}: {entry.name}: {exc}") from None


def _extract_verified(
    tar: tarfile.TarFile, bundle: Path, staging: Path, entries: list[ModelEntry]
) -> dict[str, Path]:
    sizes = {r.sha256: r.size for e in entries for r in e.files}
    found: dict[str, Path] = {}
    bad: list[str] = []
    for member in tar:
        match = _BLOB.match(member.name)
        if match is None or not member.isfile():
            continue
        sha256 = match.group(1)
        if sha256 not in sizes or sha256 in found:
            continue
        target = staging / sha256
        digest = hashlib.sha256()
        source = tar.extractfile(member)
        if source is None:
            continue
        with source, open(target, "wb") as out:
            while chunk := source.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256 or member.size != sizes[sha256]:
            bad.append(sha256)
            target.unlink()
            continue
        found[sha256] = target
    owners = {r.sha256: f"{e.name}: {r.path}" for e in entries for r in e.files}
    problems = [f"{owners[s]} is corrupt" for s in bad]
    problems += [f"{owners[s]} is missing" for s in sizes if s not in found and s not in bad]
    if problems:
        raise BundleError(f"{bundle}: nothing imported: " + "; ".join(sorted(problems)))
    return found


def _merge_tasks(models_dir: Path, tasks: dict) -> None:
    manifest = Manifest.load(models_dir)
    merged = {task: list(order) for task, order in manifest.tasks.items()}
    for task, order in tasks.items():
        ranked = merged.setdefault(task, [])
        ranked.extend(n for n in order if isinstance(n, str) and n not in ranked)
    if merged != manifest.tasks:
        manifest.tasks = merged
        manifest.save(models_dir)
