"""Air-gap bundles: verified models carried as one tar file.

A bundle is an uncompressed tar (weights do not compress) holding ``hubless-bundle.json``
first — the manifest entries and task order of the exported models, and for each signed model
its signature files (``signatures``: name, size and sha256 of each) — then ``blobs/<sha256>``,
each distinct file once (a model's files, the artifacts ``hubless-optimize`` recorded for it,
its golden outputs and signature files, which import puts back at their paths). With a
trusted key, ``import`` also verifies every model's signature against the blobs it staged,
before it installs any (:mod:`hubless_fetcher.signatures`). A bundle is not trusted: ``import``
checks the archive's members and every field of the index (:func:`read_index`, the
manifest's own entry checks) and the free space before it writes anything, hashes every blob
as it extracts it into the volume's staging folder, refuses an ONNX artifact that keeps tensor
data in other files (:func:`hubless_volume.artifact_refusal`), and installs through
:func:`~hubless_fetcher.install.install_model` only when every blob of the bundle matched: a
bundle is imported whole or not at all, and never writes outside the volume.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import re
import shutil
import tarfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hubless_fetcher.errors import BundleError, UntrustedError
from hubless_fetcher.install import install_model
from hubless_fetcher.retention import KeepPrevious
from hubless_fetcher.settings import STAGING_NAME, ConfigError
from hubless_fetcher.volume import (
    DEFAULT_KEEP,
    check_free_space,
    link_or_copy,
    prune_unreferenced,
)
from hubless_fetcher.writelock import VolumeWriteLock
from hubless_volume import (
    MAX_MANIFEST_BYTES,
    SIGNATURE_FILES,
    ArtifactRecord,
    FileRecord,
    GoldenRecord,
    Manifest,
    ModelEntry,
    PreviousGenerations,
    SchemaError,
    VolumeFileError,
    VolumePathError,
    artifact_refusal,
    atomic_output,
    inside,
    open_regular_file,
    plain_file_refusal,
    repo_folder_name,
    sha256_file,
)
from hubless_volume.manifest import parse_models
from hubless_volume.schema import (
    check_name,
    check_object,
    check_tasks_order,
    check_type,
    no_duplicate_keys,
)

logger = logging.getLogger(__name__)

BUNDLE_INDEX = "hubless-bundle.json"
BUNDLE_VERSION = 1
_BLOB = re.compile(r"^blobs/([0-9a-f]{64})$")
_CHUNK = 1 << 20
# an index lists some of a manifest's entries: one bigger than a manifest may be is not one
_MAX_INDEX = MAX_MANIFEST_BYTES


def _disk_free(path: Path) -> int:
    return shutil.disk_usage(path).free


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
    (:class:`BundleError`) instead of spreading bad bytes; so does an ONNX artifact that keeps
    tensor data in other files (:func:`hubless_volume.artifact_refusal`). The bundle is
    written atomically (:func:`hubless_volume.atomic_output`): nothing at ``bundle`` on
    failure.
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
    signatures = {e.name: _signature_records(models_dir, e) for e in entries if e.signature}
    index: dict[str, Any] = {
        "version": BUNDLE_VERSION,
        "tasks": {
            task: [n for n in order if n in names and manifest.models[n].task == task]
            for task, order in manifest.tasks.items()
        },
        "models": {e.name: e.to_json() for e in entries},
    }
    if signatures:  # a bundle without signed models reads as it always did
        index["signatures"] = {
            name: [asdict(r) for r in records] for name, records in signatures.items()
        }
    with (
        atomic_output(bundle, mode=None) as part,
        tarfile.open(part, "w", format=tarfile.PAX_FORMAT) as tar,
    ):
        data = json.dumps(index, indent=2).encode()
        info = tarfile.TarInfo(BUNDLE_INDEX)
        info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
        tar.addfile(info, io.BytesIO(data))
        written: set[str] = set()
        for entry in entries:
            blobs = [(r, entry.file_path(models_dir, r.path)) for r in entry.files]
            blobs += [(a, entry.artifact_path(models_dir, a)) for a in _derived(entry)]
            folder = entry.signature_dir(models_dir) if entry.signature else None
            blobs += [(r, inside(folder, r.path)) for r in signatures.get(entry.name, [])]
            for record, path in blobs:
                if record.sha256 not in written:
                    _add_blob(tar, path, record.sha256, record.size, entry.name)
                    written.add(record.sha256)
                if isinstance(record, ArtifactRecord):  # its bytes are the recorded ones
                    _refuse_artifact(entry.name, record, path)
    logger.info("exported %d model(s) to %s", len(entries), bundle)
    return names


def _signature_records(models_dir: Path, entry: ModelEntry) -> list[FileRecord]:
    """The signature files of a signed entry as records (name in its signature folder, size,
    sha256); :class:`BundleError` if one is missing."""
    folder = entry.signature_dir(models_dir)
    records = []
    for name in SIGNATURE_FILES:
        path = folder / name
        refusal = plain_file_refusal(path)
        if refusal:
            raise BundleError(
                f"{entry.name}: signature file {path}: {refusal}; run `hubless-fetch sign`"
            )
        records.append(FileRecord(name, path.stat().st_size, sha256_file(path)))
    return records


def _refuse_artifact(model: str, artifact: ArtifactRecord, path: Path) -> None:
    """:class:`BundleError` when the artifact at ``path`` is an ONNX model that reads other
    files (external data) or cannot be read as one (:func:`hubless_volume.artifact_refusal`)."""
    reason = artifact_refusal(artifact, path)
    if reason:
        raise BundleError(f"{model}: {artifact.path}: {reason}")


def _add_blob(tar: tarfile.TarFile, path: Path, sha256: str, size: int, model: str) -> None:
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        raise BundleError(f"{model}: {path} is missing; run `hubless-fetch verify`") from None
    if actual != size:
        raise BundleError(f"{model}: {path} has {actual} bytes, expected {size}")
    info = tarfile.TarInfo(f"blobs/{sha256}")
    info.size, info.mtime, info.mode = size, int(time.time()), 0o644
    try:
        fh = open_regular_file(path)  # a FIFO swapped in would block a plain open
    except VolumeFileError as exc:
        raise BundleError(f"{model}: {path}: {exc.reason}") from None
    with fh:
        reader = _HashingReader(fh)
        tar.addfile(info, reader)
    if reader.digest.hexdigest() != sha256:
        raise BundleError(f"{model}: {path} is corrupt (sha256 differs from the manifest)")


@dataclass
class BundleIndex:
    """A bundle's checked index and the archive members holding its blobs."""

    entries: list[ModelEntry]
    tasks: dict[str, list[str]]
    blobs: dict[str, tarfile.TarInfo] = field(default_factory=dict)  # sha256 -> its member
    signatures: dict[str, list[FileRecord]] = field(default_factory=dict)  # name -> files

    @property
    def sizes(self) -> dict[str, int]:
        """sha256 -> size of every distinct blob the index lists."""
        return {r.sha256: r.size for _, r in self.records()}

    @property
    def owners(self) -> dict[str, str]:
        """sha256 -> ``"<model>: <path>"``, what a message calls a blob."""
        return {r.sha256: f"{e.name}: {r.path}" for e, r in self.records()}

    def records(self) -> list[tuple[ModelEntry, FileRecord | ArtifactRecord | GoldenRecord]]:
        """Every blob of every model a bundle carries: its files, the files derived from its
        commit (artifacts, golden outputs) and its signature files."""
        return [
            (e, r)
            for e in self.entries
            for r in [*e.files, *_derived(e), *self.signatures.get(e.name, [])]
        ]


def _derived(entry: ModelEntry) -> list[ArtifactRecord | GoldenRecord]:
    """An entry's artifacts and golden outputs (paths relative to its repository folder)."""
    return [*entry.artifacts, *([entry.golden] if entry.golden is not None else [])]


def import_bundle(
    models_dir: Path,
    bundle: Path,
    *,
    free_space: Callable[[Path], int] = _disk_free,
    margin: int = 0,
    keep: KeepPrevious = DEFAULT_KEEP,
    trusted_key: Path | None = None,
) -> list[ModelEntry]:
    """Install every model of ``bundle``, whole or not at all.

    Refused before anything is written: an index or archive that is not valid
    (:class:`~hubless_volume.SchemaError`: a path, name, commit, revision or sha256 that is
    malformed or leads off the volume, a model with no files, an unknown task, a sha256 with
    two sizes, a member twice, a link or any member other than the index and
    ``blobs/<sha256>``), blob data missing or of the wrong size (:class:`BundleError`), or not
    enough free space for the blobs plus ``margin``
    (:class:`~hubless_fetcher.errors.DiskSpaceError`). The blobs are then hashed as they are
    extracted to staging; one mismatch, or one ONNX artifact with external data, refuses the
    bundle and removes the staged copy. A model
    that was installed at another commit keeps its old snapshot and blobs as its previous
    generation, as long as ``keep`` says (:func:`~hubless_fetcher.volume.prune_unreferenced`).
    With ``trusted_key`` (a PEM public key), a bundle with a model that is not signed, or
    whose signature does not verify with it against the staged blobs, is refused
    (:class:`~hubless_fetcher.errors.UntrustedError`, naming each model and why) before any
    model is installed.
    """
    models_dir, bundle = Path(models_dir), Path(bundle)
    try:
        tar = tarfile.open(bundle, "r:*")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        raise ConfigError(f"bundle {bundle} does not exist") from None
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(f"{bundle} is not a readable bundle: {exc}") from None
    with tar:
        index = read_index(tar, bundle)
        unsigned = [e.name for e in index.entries if not e.signature]
        if trusted_key is not None and unsigned:
            raise UntrustedError(
                f"{bundle}: nothing imported: not signed (--trusted-key): {', '.join(unsigned)}"
            )
        models_dir.mkdir(parents=True, exist_ok=True)
        with VolumeWriteLock(models_dir):
            manifest = Manifest.load(models_dir)
            PreviousGenerations.load(models_dir)  # a malformed record: refused before writing
            _check_paths(models_dir, bundle, index.entries)
            # every blob is extracted to staging (on the volume), then moved into place
            check_free_space(models_dir, sum(index.sizes.values()), margin, free_space, "import")
            return _install(tar, bundle, models_dir, manifest, index, keep, trusted_key)


def _install(
    tar: tarfile.TarFile,
    bundle: Path,
    models_dir: Path,
    manifest: Manifest,
    index: BundleIndex,
    keep: KeepPrevious,
    trusted_key: Path | None,
) -> list[ModelEntry]:
    staging_root = models_dir / STAGING_NAME
    staging = staging_root / f"import-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        blobs = _extract_verified(tar, bundle, staging, index)
        refused = [
            f"{entry.name}: {a.path}: {reason}"
            for entry in index.entries
            for a in entry.artifacts
            if (reason := artifact_refusal(a, blobs[a.sha256]))
        ]
        if refused:
            raise BundleError(f"{bundle}: nothing imported: " + "; ".join(refused))
        if trusted_key is not None:
            from hubless_fetcher.signatures import verify_staged

            verify_staged(bundle, staging / "check", index, blobs, trusted_key)
        previous = {e.name: manifest.models.get(e.name) for e in index.entries}
        installed = []
        for entry in index.entries:
            files = [
                (r, link_or_copy(blobs[r.sha256], staging / entry.name / r.sha256))
                for r in entry.files
            ]
            artifacts = [
                (a, link_or_copy(blobs[a.sha256], staging / entry.name / f"artifact-{a.sha256}"))
                for a in entry.artifacts
            ]
            golden = (
                None
                if entry.golden is None
                else (
                    entry.golden,
                    link_or_copy(blobs[entry.golden.sha256], staging / entry.name / "golden"),
                )
            )
            signature = [
                (r.path, link_or_copy(blobs[r.sha256], staging / entry.name / f"sig-{r.path}"))
                for r in index.signatures.get(entry.name, [])
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
                    artifacts=artifacts,
                    golden=golden,
                    signature=signature,
                    verify=False,  # hashed while extracting
                    move=True,
                    manifest=manifest,
                )
            )
            logger.info("imported %s (%s@%s)", entry.name, entry.repo_id, entry.commit[:12])
        _merge_tasks(models_dir, manifest, index.tasks)
        moved: set[str] = set()  # repositories where a model left its old commit
        for entry in installed:
            old = previous[entry.name]
            if old is not None and (old.repo_id, old.commit) != (entry.repo_id, entry.commit):
                moved |= {old.repo_id, entry.repo_id}
        prune_unreferenced(models_dir, manifest, sorted(moved), keep=keep)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):  # only when empty (a fetch may have partial files)
            staging_root.rmdir()
    return installed


def read_index(tar: tarfile.TarFile, bundle: Path) -> BundleIndex:
    """The bundle's index and blob members, every field and member checked; raises
    :class:`~hubless_volume.SchemaError` (the archive or its index is not valid) or
    :class:`BundleError` (blob data missing, of the wrong size, or not in the index)."""
    archive = f"bundle {bundle}"
    try:
        members = tar.getmembers()
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(f"{bundle} is not a readable bundle: {exc}") from None
    if not members or members[0].name != BUNDLE_INDEX:
        raise SchemaError(archive, "", f"has no {BUNDLE_INDEX} first: not a hubless bundle")
    seen: set[str] = set()
    blobs: dict[str, tarfile.TarInfo] = {}
    for member in members:
        where = f"member {member.name!r}"
        if member.name in seen:
            raise SchemaError(archive, where, "appears twice")
        seen.add(member.name)
        if not member.isfile():
            kind = "a link" if member.issym() or member.islnk() else "not a regular file"
            raise SchemaError(archive, where, f"is {kind}")
        match = _BLOB.match(member.name)
        if match is not None:
            blobs[match.group(1)] = member
        elif member.name != BUNDLE_INDEX:
            raise SchemaError(archive, where, f"is neither {BUNDLE_INDEX} nor blobs/<sha256>")
    entries, tasks, signatures = parse_index(
        _read_member(tar, members[0], archive), f"bundle index of {bundle}"
    )
    index = BundleIndex(entries, tasks, blobs, signatures)
    sizes, owners = index.sizes, index.owners
    problems = [f"{owners[s]} is missing" for s in sizes if s not in blobs]
    problems += [
        f"{owners[s]} has {blobs[s].size} bytes in the bundle, the index says {size}"
        for s, size in sizes.items()
        if s in blobs and blobs[s].size != size
    ]
    problems += [f"blobs/{s} is not listed in the index" for s in blobs if s not in sizes]
    if problems:
        raise BundleError(f"{bundle}: nothing imported: " + "; ".join(sorted(problems)))
    return index


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, archive: str) -> Any:
    if member.size > _MAX_INDEX:
        raise SchemaError(archive, BUNDLE_INDEX, f"{member.size} bytes is too large for an index")
    fh = tar.extractfile(member)
    try:
        return json.loads(fh.read() if fh else b"", object_pairs_hook=no_duplicate_keys)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SchemaError(archive, BUNDLE_INDEX, f"not valid JSON: {exc}") from None


def parse_index(
    data: Any, file: str
) -> tuple[list[ModelEntry], dict[str, list[str]], dict[str, list[FileRecord]]]:
    """A bundle index's models (the manifest's entry shape, each checked), task order and
    signature files (per signed model, exactly its :data:`~hubless_volume.SIGNATURE_FILES`);
    :class:`~hubless_volume.SchemaError` naming ``file`` and the field otherwise."""
    data = check_object(
        data, file, "", required=("version", "models"), optional=("tasks", "signatures")
    )
    if data["version"] != BUNDLE_VERSION or isinstance(data["version"], bool):
        raise SchemaError(file, "version", f"unsupported bundle version {data['version']!r}")
    models, _ = parse_models(data["models"], file)
    if not models:
        raise SchemaError(file, "models", "lists no models")
    signatures = _parse_signatures(data.get("signatures", {}), file, models)
    sizes: dict[str, int] = {}
    for name, entry in models.items():
        listed = [(f"models[{name!r}].files[{i}]", r) for i, r in enumerate(entry.files)]
        listed += [(f"models[{name!r}].artifacts[{i}]", a) for i, a in enumerate(entry.artifacts)]
        if entry.golden is not None:
            listed.append((f"models[{name!r}].golden", entry.golden))
        listed += [
            (f"signatures[{name!r}][{i}]", r) for i, r in enumerate(signatures.get(name, []))
        ]
        for where, record in listed:
            if sizes.setdefault(record.sha256, record.size) != record.size:
                raise SchemaError(
                    file,
                    f"{where}.size",
                    f"sha256 {record.sha256[:12]}... is listed with two sizes "
                    f"({sizes[record.sha256]} and {record.size})",
                )
    tasks = check_tasks_order(data.get("tasks", {}), file, "tasks", models)
    return list(models.values()), tasks, signatures


def _parse_signatures(
    raw: Any, file: str, models: dict[str, ModelEntry]
) -> dict[str, list[FileRecord]]:
    """``signatures``: per signed model (and only those), its three signature files."""
    raw = check_type(raw, dict, file, "signatures")
    signatures: dict[str, list[FileRecord]] = {}
    for name, items in raw.items():
        where = f"signatures[{name!r}]"
        check_name(name, file, where)
        if name not in models or not models[name].signature:
            raise SchemaError(file, where, f"{name!r} is not a signed model of this bundle")
        records = [
            FileRecord.from_json(item, file, f"{where}[{i}]")
            for i, item in enumerate(check_type(items, list, file, where))
        ]
        if sorted(r.path for r in records) != sorted(SIGNATURE_FILES):
            raise SchemaError(file, where, f"must list exactly {', '.join(SIGNATURE_FILES)}")
        signatures[name] = records
    for name, entry in models.items():
        if entry.signature and name not in signatures:
            raise SchemaError(file, f"models[{name!r}].signature", "its files are not listed")
    return signatures


def _check_paths(models_dir: Path, bundle: Path, entries: list[ModelEntry]) -> None:
    """Refuse the whole bundle if one of its paths (blob, commit, ref, file) would lead off
    the volume (a symlink on the volume), before anything is installed."""
    for entry in entries:
        try:
            repo = repo_folder_name(entry.repo_id)
            inside(models_dir, repo, "refs", entry.revision)
            for record in entry.files:
                inside(models_dir, repo, "blobs", record.sha256)
                entry.file_path(models_dir, record.path)
            for artifact in _derived(entry):
                entry.artifact_path(models_dir, artifact)
            if entry.signature:
                entry.signature_dir(models_dir)
        except VolumePathError as exc:
            raise BundleError(f"{bundle}: {entry.name}: {exc}") from None


def _extract_verified(
    tar: tarfile.TarFile, bundle: Path, staging: Path, index: BundleIndex
) -> dict[str, Path]:
    sizes = index.sizes
    found: dict[str, Path] = {}
    bad: list[str] = []
    for sha256, member in sorted(index.blobs.items(), key=lambda item: item[1].offset):
        target = staging / sha256
        digest = hashlib.sha256()
        source = tar.extractfile(member)
        if source is None:
            bad.append(sha256)
            continue
        with source, open(target, "wb") as out:
            while chunk := source.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256 or target.stat().st_size != sizes[sha256]:
            bad.append(sha256)
            target.unlink()
            continue
        found[sha256] = target
    owners = index.owners
    if bad:
        problems = [f"{owners[s]} is corrupt" for s in bad]
        raise BundleError(f"{bundle}: nothing imported: " + "; ".join(sorted(problems)))
    return found


def _merge_tasks(models_dir: Path, manifest: Manifest, tasks: dict[str, list[str]]) -> None:
    merged = {task: list(order) for task, order in manifest.tasks.items()}
    for task, order in tasks.items():
        ranked = merged.setdefault(task, [])
        ranked.extend(n for n in order if n not in ranked)
    if merged != manifest.tasks:
        manifest.tasks = merged
        manifest.save(models_dir)
