"""Atomic installation of a model's verified files into the models volume.

Everything that puts a model on the volume (``fetch`` from the hub, ``import`` of an air-gap
bundle, the test fixtures) goes through :func:`install_model`. Files land in the standard hub
cache layout first — content-addressed blobs, then snapshot symlinks, then ``refs`` — and the
manifest entry is written last, atomically. A crash at any point leaves unreferenced files at
worst, never a manifest entry for a model whose files are not all in place. The entry a new
commit replaces is recorded as the model's previous generation first
(:class:`hubless_volume.PreviousGenerations`), so its files are never unrecorded; the caller
prunes (:func:`hubless_fetcher.volume.prune_unreferenced`, which applies the retention).

Blobs are named by their sha256 (the hub names LFS blobs the same way; it names small git files
by their git blob id instead — readers never look at blob names, only at snapshot links).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from hubless_fetcher.writelock import VolumeWriteLock
from hubless_volume import (
    SIGNATURE_FILES,
    SIGNATURE_KIND,
    ArtifactRecord,
    FileRecord,
    GoldenRecord,
    Manifest,
    ModelEntry,
    PreviousGenerations,
    atomic_place_file,
    atomic_symlink,
    atomic_write_text,
    derived_folder,
    fsync_dir,
    inside,
    repo_folder_name,
    sha256_file,
    signature_relpath,
    utc_now,
)


class InstallError(Exception):
    """A file handed to :func:`install_model` does not match its record."""


def check_file(record: FileRecord, path: Path) -> None:
    """Raise :class:`InstallError` unless ``path`` has the size and sha256 of ``record``."""
    size = path.stat().st_size
    if size != record.size:
        raise InstallError(f"{record.path}: size {size} != expected {record.size}")
    digest = sha256_file(path)
    if digest != record.sha256:
        raise InstallError(f"{record.path}: sha256 {digest} != expected {record.sha256}")


def install_model(
    models_dir: Path,
    *,
    name: str,
    repo_id: str,
    revision: str,
    commit: str,
    task: str,
    files: Sequence[tuple[FileRecord, Path]],
    artifacts: Sequence[tuple[ArtifactRecord, Path]] | None = None,
    golden: tuple[GoldenRecord, Path] | None = None,
    signature: Sequence[tuple[str, Path]] = (),
    tasks: dict[str, list[str]] | None = None,
    verify: bool = True,
    move: bool = False,
    manifest: Manifest | None = None,
) -> ModelEntry:
    """Place ``files`` (record, local path) for ``repo_id@commit`` and record the model.

    ``verify`` re-hashes every file against its record first (skip it only when the caller
    has just hashed the bytes it wrote). ``move`` moves the files instead of copying them
    (they must be on the same filesystem as the volume). ``tasks`` replaces the manifest's
    per-task preference order when given. ``manifest`` is the caller's copy, for a caller
    that holds the volume write lock and loaded it once: it is updated in place and saved
    (without it, the manifest is read from the volume). An entry of ``name`` at another repo
    or commit is recorded as its previous generation before the manifest is written. Returns
    the entry that was written.
    ``artifacts`` (record, local path) are files ``hubless-optimize`` derived from these files
    (a bundle carries them): placed at their recorded paths and recorded in the entry. Without
    them, the artifacts of the entry it replaces stay recorded when the commit and the files
    are the same (a repair), and are dropped otherwise (pruning then deletes their files);
    the same holds for its golden outputs and signature. With ``artifacts`` given (a bundle),
    ``golden`` (record, local path) and ``signature`` (the signature files: name in
    ``hubless-signatures/<commit>/``, local path; all of
    :data:`hubless_volume.SIGNATURE_FILES` or none) are the derived files too.
    Every path is joined through :func:`hubless_volume.inside`: a file path, commit or
    revision that would lead off the volume raises ``VolumePathError``.
    """
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    if verify:
        for record, path in files:
            check_file(record, path)
        for artifact, path in [*(artifacts or ()), *([golden] if golden else [])]:
            check_file(FileRecord(artifact.path, artifact.size, artifact.sha256), path)
    if signature and sorted(name for name, _ in signature) != sorted(SIGNATURE_FILES):
        raise InstallError(f"{name}: the signature files are {', '.join(SIGNATURE_FILES)}")

    repo = repo_folder_name(repo_id)
    placed = [
        (
            record,
            path,
            inside(models_dir, repo, "blobs", record.sha256),
            inside(models_dir, repo, "snapshots", commit, record.path),
        )
        for record, path in files
    ]
    given = artifacts is not None  # the caller gives the derived files (else: kept or not)
    derived = [
        (a.path, path, inside(models_dir, repo, a.path))
        for a, path in [*(artifacts or ()), *([golden] if golden else [])]
    ]
    if signature:
        folder = derived_folder(SIGNATURE_KIND, commit)
        derived += [
            (f"{folder}/{file}", path, inside(models_dir, repo, folder, file))
            for file, path in signature
        ]
    with VolumeWriteLock(models_dir):
        inside(models_dir, repo, "blobs").mkdir(parents=True, exist_ok=True)
        for record, path, blob, _ in placed:
            _place_blob(path, blob, record.size, move=move)
        for _, _, blob, link in placed:
            _link(link, blob)
        for _, path, target in derived:  # named by path, not content: always replaced
            target.parent.mkdir(parents=True, exist_ok=True)
            _place_file(path, target, move=move)
        if revision != commit:
            _write_atomic(inside(models_dir, repo, "refs", revision), commit)
        _fsync_tree(inside(models_dir, repo))

        if manifest is None:
            manifest = Manifest.load(models_dir)
        now = utc_now()
        previous = manifest.models.get(name)
        records = [record for record, _ in sorted(files, key=lambda item: item[0].path)]
        same = (
            previous is not None
            and (previous.repo_id, previous.commit) == (repo_id, commit)
            and previous.files == records
        )
        # what was derived from these very files (hubless-optimize's artifacts and golden
        # outputs, the signature) still holds after a repair of the same commit; another
        # commit or other files start without, unless the caller gives them (a bundle)
        kept = previous if same and previous is not None and not given else None
        signed = signature_relpath(repo_id, commit) if signature else ""
        entry = ModelEntry(
            name=name,
            repo_id=repo_id,
            revision=revision,
            commit=commit,
            task=task,
            files=records,
            installed_at=previous.installed_at if previous and previous.commit == commit else now,
            verified_at=now,
            artifacts=list(kept.artifacts) if kept else [a for a, _ in artifacts or ()],
            optimize_error=kept.optimize_error if kept else "",
            golden=kept.golden if kept else golden[0] if golden else None,
            signature=kept.signature if kept else signed,
        )
        if previous is not None and (previous.repo_id, previous.commit) != (repo_id, commit):
            generations = PreviousGenerations.load(models_dir)
            generations.retire(previous, now)
            generations.save(models_dir)
        manifest.models[name] = entry
        if tasks is not None:
            manifest.tasks = {task_name: list(names) for task_name, names in tasks.items()}
        manifest.save(models_dir)
    return entry


def _place_blob(source: Path, target: Path, size: int, *, move: bool) -> None:
    if target.exists() and target.stat().st_size == size:
        if move:
            source.unlink(missing_ok=True)
        return
    _place_file(source, target, move=move)


def _place_file(source: Path, target: Path, *, move: bool) -> None:
    """Copy (or move) ``source`` to ``target`` atomically: fsynced beside it, then renamed."""
    atomic_place_file(source, target, move=move)


def _link(link: Path, blob: Path) -> None:
    """Point ``link`` at ``blob`` with a relative symlink, replacing any old link atomically."""
    link.parent.mkdir(parents=True, exist_ok=True)
    relative = os.path.relpath(blob, link.parent)
    if link.is_symlink() and os.readlink(link) == relative:
        return
    atomic_symlink(link, relative, fsync=False)  # the tree is fsynced once, after every link


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def _fsync_tree(root: Path) -> None:
    """Flush directory entries so the manifest never gets ahead of the files on disk."""
    for directory, _, _ in os.walk(root):
        fsync_dir(directory)
