"""The volume manifest: the single source of truth about what is installed.

The models volume is a standard Hugging Face hub cache (``models--org--name/...``) plus one
JSON file, ``hubless-manifest.json``, at its root. A model is *installed* only when it has an
entry here; the fetcher adds the entry after every file of the model has been verified, and
the server loads nothing that is not listed. Writes are atomic
(:func:`hubless_volume.atomic.atomic_write_bytes`: temp file, fsync, ``os.replace``, fsync of
the folder). Reads go through :func:`hubless_volume.safeio.read_volume_file`: the manifest
must be a regular file inside the volume, at most ``MAX_MANIFEST_BYTES``. A file that is not
that, not valid JSON, or valid JSON of another shape, raises :class:`ManifestError` and
nothing else.

Format (``version`` 1)::

    {
      "version": 1,
      "tasks": {"conversation": ["dialogpt-medium", "dialogpt-small"], ...},
      "models": {
        "dialogpt-small": {
          "name": "dialogpt-small",
          "repo_id": "microsoft/DialoGPT-small",
          "revision": "main",
          "commit": "<40-hex sha>",
          "task": "conversation",
          "files": [{"path": "config.json", "size": 641, "sha256": "<64-hex>"}, ...],
          "installed_at": "2026-11-25T13:00:00+00:00",
          "verified_at": "2026-11-25T13:00:00+00:00",
          "artifacts": [{"kind": "onnx", "path": "hubless-onnx/<commit>/model.onnx",
                         "size": 90937820, "sha256": "<64-hex>", "optimized": false,
                         "created_at": "...", "parity": {"probes": 24, "min_cosine": 0.99999},
                         "tool": {"torch": "2.13.0+cpu", "onnxruntime": "1.31.0"}}],
          "optimize_error": "",
          "golden": {"path": "hubless-golden/<commit>/golden.json", "size": 2911,
                     "sha256": "<64-hex>"},
          "signature": "models--microsoft--DialoGPT-small/hubless-signatures/<commit>/model.sig"
        }
      }
    }

``tasks`` is the catalog's per-task preference order (the server's fallback order) as of the
last fetch. The fetcher writes this file (holding its volume write lock); the server only reads.

``artifacts`` and ``optimize_error`` are optional and written only when set (a volume never
optimized has the same manifest as before they existed): ``hubless-optimize`` records there
the files it derived from the model (an ONNX export that passed its parity check, in the
model's repository folder under ``hubless-<kind>/<commit>/``), or why it could not
(``optimize_error``; the model keeps PyTorch). An artifact belongs to its entry's commit: an
entry the fetcher rewrites for another commit has none, and pruning deletes the old files.
``golden`` (:mod:`hubless_volume.golden`) and ``signature`` (:mod:`hubless_volume.signing`)
are optional in the same way and belong to the commit in the same way: ``golden`` records the
golden-outputs file like an artifact, ``signature`` is the path, relative to the volume, of
the OpenSSF Model Signing signature of the snapshot (always
``models--org--name/hubless-signatures/<commit>/model.sig``; the signed statement of the
derived files lies beside it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hubless_volume.atomic import atomic_write_bytes
from hubless_volume.golden import GoldenRecord
from hubless_volume.jsonfile import capped_json, parse_json
from hubless_volume.paths import (
    SIGNATURE_FILES,
    SIGNATURE_KIND,
    derived_folder,
    inside,
    repo_folder_name,
    signature_relpath,
    snapshot_dir,
    snapshot_file,
)
from hubless_volume.safeio import MAX_MANIFEST_BYTES, VolumeFileError, read_volume_file
from hubless_volume.schema import (
    SchemaError,
    check_commit,
    check_name,
    check_object,
    check_relpath,
    check_repo_id,
    check_revision,
    check_sha256,
    check_size,
    check_task,
    check_tasks_order,
    check_timestamp,
    check_type,
)

MANIFEST_NAME = "hubless-manifest.json"
MANIFEST_VERSION = 1

_ENTRY_KEYS = ("name", "repo_id", "commit", "task", "files")
_DERIVED_KEYS = ("artifacts", "optimize_error", "golden", "signature")  # written when set
_ENTRY_OPTIONAL = ("revision", "installed_at", "verified_at", *_DERIVED_KEYS)
_ARTIFACT_KEYS = ("kind", "path", "size", "sha256")
_ARTIFACT_OPTIONAL = ("optimized", "created_at", "parity", "tool")
ARTIFACT_KINDS = ("onnx",)
"""Kinds of derived files a model entry may record (``hubless-optimize``)."""
_KEY = re.compile(r"[a-z][a-z0-9_.-]{0,39}")
_MAX_NOTE = 1000


class ManifestError(SchemaError):
    """The manifest exists but cannot be read, is not JSON, or has another shape or content
    (a :class:`~hubless_volume.schema.SchemaError` naming the file and the field); or it is
    not a regular file inside the volume under its size cap."""


class ManifestMissingError(ManifestError):
    """There is no manifest, and the reader said one must be there
    (``Manifest.load(..., missing_ok=False)``): for a server that saw one before, the
    manifest vanished, which is not the same as an empty volume."""


def utc_now() -> str:
    """Current time as an ISO 8601 string in UTC, second precision."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


@dataclass(frozen=True)
class FileRecord:
    """One file of an installed model, relative to its snapshot folder."""

    path: str
    size: int
    sha256: str

    @classmethod
    def from_json(cls, data: Any, file: str = "manifest", field: str = "file") -> FileRecord:
        """A record from its JSON object, every field checked; :class:`SchemaError` (naming
        ``file`` and ``field``) for any other shape or a path that leaves the model folder."""
        data = check_object(data, file, field, required=("path", "size", "sha256"))
        return cls(
            path=check_relpath(data["path"], file, f"{field}.path"),
            size=check_size(data["size"], file, f"{field}.size"),
            sha256=check_sha256(data["sha256"], file, f"{field}.sha256"),
        )


def check_files(records: list[FileRecord], file: str, field: str) -> None:
    """A model's files as a whole: at least one, no path twice, no path inside another
    (``a`` and ``a/b``), and no sha256 with two sizes."""
    if not records:
        raise SchemaError(file, field, "lists no files")
    paths: set[str] = set()
    sizes: dict[str, int] = {}
    for i, record in enumerate(records):
        if record.path in paths:
            raise SchemaError(file, f"{field}[{i}].path", f"{record.path!r} is listed twice")
        paths.add(record.path)
        if sizes.setdefault(record.sha256, record.size) != record.size:
            raise SchemaError(
                file,
                f"{field}[{i}].size",
                f"sha256 {record.sha256[:12]}... is listed with two sizes "
                f"({sizes[record.sha256]} and {record.size})",
            )
    for i, record in enumerate(records):
        parts = record.path.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder in paths:
                raise SchemaError(
                    file, f"{field}[{i}].path", f"{record.path!r} is under the file {folder!r}"
                )


def artifact_folder(kind: str, commit: str) -> str:
    """Where a model's artifacts of ``kind`` for ``commit`` live, relative to its repository
    folder (``models--org--name``): ``hubless-onnx/<commit>``."""
    return derived_folder(kind, commit)


@dataclass(frozen=True)
class ArtifactRecord:
    """A file derived from a model by ``hubless-optimize`` (an ONNX export), recorded only
    after it passed its parity check against the PyTorch model.

    ``path`` is relative to the model's repository folder and always
    ``hubless-<kind>/<commit>/<file>`` (:func:`artifact_folder`), so an artifact names the
    commit it was made from. ``parity`` holds the check's figures (``probes``, and
    ``min_cosine`` or ``max_abs_delta``), ``tool`` the versions that made it."""

    kind: str
    path: str
    size: int
    sha256: str
    optimized: bool = False
    created_at: str = ""
    parity: dict[str, float] = field(default_factory=dict)
    tool: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(
        cls, data: Any, commit: str, file: str = "manifest", field: str = "artifact"
    ) -> ArtifactRecord:
        """A record from its JSON object, every field checked; its path must be a file of
        ``hubless-<kind>/<commit>/`` (the entry's commit); :class:`SchemaError` otherwise."""
        data = check_object(data, file, field, required=_ARTIFACT_KEYS, optional=_ARTIFACT_OPTIONAL)
        kind = check_type(data["kind"], str, file, f"{field}.kind")
        if kind not in ARTIFACT_KINDS:
            raise SchemaError(
                file, f"{field}.kind", f"unknown artifact kind {kind!r} (one of: onnx)"
            )
        path = check_relpath(data["path"], file, f"{field}.path")
        folder = artifact_folder(kind, commit)
        head, _, name = path.rpartition("/")
        if head != folder or not name:
            raise SchemaError(file, f"{field}.path", f"{path!r} is not a file of {folder}/")
        parity = check_type(data.get("parity", {}), dict, file, f"{field}.parity")
        for key, value in parity.items():
            _check_key(key, file, f"{field}.parity")
            number = (
                value if isinstance(value, int | float) and not isinstance(value, bool) else None
            )
            if number is None or not math.isfinite(number):
                raise SchemaError(file, f"{field}.parity[{key!r}]", f"{value!r} is not a number")
        tool = check_type(data.get("tool", {}), dict, file, f"{field}.tool")
        for key, value in tool.items():
            _check_key(key, file, f"{field}.tool")
            text = check_type(value, str, file, f"{field}.tool[{key!r}]")
            if len(text) > 100:
                raise SchemaError(file, f"{field}.tool[{key!r}]", "is longer than 100 characters")
        created = data.get("created_at", "")  # "" (unset) or a time
        if created != "":
            created = check_timestamp(created, file, f"{field}.created_at")
        return cls(
            kind=kind,
            path=path,
            size=check_size(data["size"], file, f"{field}.size"),
            sha256=check_sha256(data["sha256"], file, f"{field}.sha256"),
            optimized=check_type(data.get("optimized", False), bool, file, f"{field}.optimized"),
            created_at=created,
            parity=dict(parity),
            tool=dict(tool),
        )


def _check_key(key: Any, file: str, field: str) -> str:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise SchemaError(file, field, f"{key!r} is not a key (lowercase letters, digits, '_')")
    return key


@dataclass
class ModelEntry:
    """One installed, verified model."""

    name: str
    repo_id: str
    revision: str
    commit: str
    task: str
    files: list[FileRecord]
    installed_at: str = field(default_factory=utc_now)
    verified_at: str = field(default_factory=utc_now)
    artifacts: list[ArtifactRecord] = field(default_factory=list)
    optimize_error: str = ""
    golden: GoldenRecord | None = None
    signature: str = ""

    @property
    def size(self) -> int:
        """Total bytes of the model's files."""
        return sum(f.size for f in self.files)

    def snapshot_dir(self, models_dir: Path) -> Path:
        """Folder holding the model's files (what ``from_pretrained`` is given).

        Raises :class:`~hubless_volume.paths.VolumePathError` if the entry's repo id or commit
        would lead outside ``models_dir``.
        """
        return snapshot_dir(Path(models_dir), self.repo_id, self.commit)

    def file_path(self, models_dir: Path, path: str) -> Path:
        """Where the model's file ``path`` (a snapshot link) is; :class:`VolumePathError`
        if ``path`` leads outside ``models_dir``."""
        return snapshot_file(Path(models_dir), self.repo_id, self.commit, path)

    def artifact(self, kind: str) -> ArtifactRecord | None:
        """The recorded artifact of ``kind`` (e.g. ``"onnx"``), if any."""
        return next((a for a in self.artifacts if a.kind == kind), None)

    def artifact_path(self, models_dir: Path, record: ArtifactRecord | GoldenRecord) -> Path:
        """Where an artifact (or the golden-outputs file) is on the volume;
        :class:`VolumePathError` if it would lead outside ``models_dir``."""
        return inside(Path(models_dir), repo_folder_name(self.repo_id), record.path)

    def golden_path(self, models_dir: Path) -> Path:
        """Where the recorded golden-outputs file is (the entry must record one);
        :class:`VolumePathError` if it would lead outside ``models_dir``."""
        if self.golden is None:
            raise ValueError(f"{self.name} records no golden outputs")
        return inside(Path(models_dir), repo_folder_name(self.repo_id), self.golden.path)

    def signature_dir(self, models_dir: Path) -> Path:
        """The folder of the commit's signature files, ``hubless-signatures/<commit>/`` in
        the repository folder; :class:`VolumePathError` if it would lead off the volume."""
        folder = derived_folder(SIGNATURE_KIND, self.commit)
        return inside(Path(models_dir), repo_folder_name(self.repo_id), folder)

    def derived_paths(self) -> list[str]:
        """Every file hubless derived from this commit that the entry references, relative
        to the repository folder: artifacts, golden outputs, signature files (what pruning
        keeps and a bundle carries besides the model's files)."""
        paths = [a.path for a in self.artifacts]
        if self.golden is not None:
            paths.append(self.golden.path)
        if self.signature:
            folder = derived_folder(SIGNATURE_KIND, self.commit)
            paths += [f"{folder}/{name}" for name in SIGNATURE_FILES]
        return paths

    def to_json(self) -> dict[str, Any]:
        """The entry as JSON; ``artifacts``, ``optimize_error``, ``golden`` and ``signature``
        only when set, so an entry without them reads as it always did."""
        data = asdict(self)
        for key in _DERIVED_KEYS:
            if not data[key]:
                del data[key]
        return data

    @classmethod
    def from_json(cls, data: Any, file: str = "manifest", field: str = "model") -> ModelEntry:
        """An entry from its JSON object, every field checked (the manifest's and a bundle
        index's entries have this one shape); :class:`SchemaError` naming ``file`` and
        ``field`` otherwise."""
        data = check_object(data, file, field, required=_ENTRY_KEYS, optional=_ENTRY_OPTIONAL)
        commit = check_commit(data["commit"], file, f"{field}.commit")
        revision = check_revision(data.get("revision", "main"), file, f"{field}.revision")
        if check_commit_like(revision) and revision != commit:
            raise SchemaError(
                file, f"{field}.revision", f"{revision!r} is a commit other than {commit!r}"
            )
        raw_files = check_type(data["files"], list, file, f"{field}.files")
        files = [
            FileRecord.from_json(f, file, f"{field}.files[{i}]") for i, f in enumerate(raw_files)
        ]
        check_files(files, file, f"{field}.files")
        raw_artifacts = check_type(data.get("artifacts", []), list, file, f"{field}.artifacts")
        artifacts = [
            ArtifactRecord.from_json(a, commit, file, f"{field}.artifacts[{i}]")
            for i, a in enumerate(raw_artifacts)
        ]
        kinds = [a.kind for a in artifacts]
        for i, kind in enumerate(kinds):
            if kind in kinds[:i]:
                raise SchemaError(file, f"{field}.artifacts[{i}].kind", f"{kind!r} is listed twice")
        error = check_type(data.get("optimize_error", ""), str, file, f"{field}.optimize_error")
        if len(error) > _MAX_NOTE:
            raise SchemaError(
                file, f"{field}.optimize_error", f"is longer than {_MAX_NOTE} characters"
            )
        repo_id = check_repo_id(data["repo_id"], file, f"{field}.repo_id")
        golden = (
            GoldenRecord.from_json(data["golden"], commit, file, f"{field}.golden")
            if "golden" in data
            else None
        )
        signature = check_type(data.get("signature", ""), str, file, f"{field}.signature")
        if signature and signature != (expected := signature_relpath(repo_id, commit)):
            raise SchemaError(
                file, f"{field}.signature", f"{signature[:200]!r} is not {expected!r}"
            )
        return cls(
            name=check_name(data["name"], file, f"{field}.name"),
            repo_id=repo_id,
            revision=revision,
            commit=commit,
            task=check_task(data["task"], file, f"{field}.task"),
            files=files,
            installed_at=check_type(
                data.get("installed_at", ""), str, file, f"{field}.installed_at"
            ),
            verified_at=check_type(data.get("verified_at", ""), str, file, f"{field}.verified_at"),
            artifacts=artifacts,
            optimize_error=error,
            golden=golden,
            signature=signature,
        )


def check_commit_like(revision: str) -> bool:
    """True when ``revision`` has the shape of a full commit sha."""
    return len(revision) == 40 and all(c in "0123456789abcdef" for c in revision)


@dataclass(frozen=True)
class RejectedEntry:
    """A manifest entry refused by :meth:`Manifest.load` with ``skip_invalid=True``: its key
    in ``models``, its task when that field alone is valid, and why it was refused."""

    key: str
    task: str | None
    error: SchemaError


def parse_models(
    raw: Any, file: str, *, skip_invalid: bool = False
) -> tuple[dict[str, ModelEntry], list[RejectedEntry]]:
    """The ``models`` object of a manifest or bundle index: ``{name: entry}``, each entry
    named by its key. With ``skip_invalid`` an entry that fails its checks is returned as a
    :class:`RejectedEntry` instead of raising."""
    raw = check_type(raw, dict, file, "models")
    models: dict[str, ModelEntry] = {}
    rejected: list[RejectedEntry] = []
    for key, value in raw.items():
        where = f"models[{key!r}]"
        try:
            check_name(key, file, where)
            entry = ModelEntry.from_json(value, file, where)
            if entry.name != key:
                raise SchemaError(file, f"{where}.name", f"{entry.name!r} differs from its key")
        except SchemaError as exc:
            if not skip_invalid:
                raise
            task = value.get("task") if isinstance(value, dict) else None
            rejected.append(RejectedEntry(str(key), _valid_task(task), exc))
            continue
        models[key] = entry
    return models, rejected


def _valid_task(task: Any) -> str | None:
    try:
        return check_task(task, "", "")
    except SchemaError:
        return None


@dataclass
class Manifest:
    """Everything installed on a models volume.

    ``rejected`` lists the entries a lenient :meth:`load` (``skip_invalid=True``, the
    server's) refused; it is never written back.
    """

    models: dict[str, ModelEntry] = field(default_factory=dict)
    tasks: dict[str, list[str]] = field(default_factory=dict)
    rejected: list[RejectedEntry] = field(default_factory=list, compare=False, repr=False)

    @staticmethod
    def path_in(models_dir: Path) -> Path:
        return Path(models_dir) / MANIFEST_NAME

    @classmethod
    def load(
        cls, models_dir: Path, *, skip_invalid: bool = False, missing_ok: bool = True
    ) -> Manifest:
        """Read the manifest of ``models_dir``; an absent file means an empty volume, or,
        with ``missing_ok=False``, raises :class:`ManifestMissingError` (a reader that saw a
        manifest before tells "it vanished" from "the volume is empty").

        The file must be a regular file inside the volume of at most
        :data:`~hubless_volume.safeio.MAX_MANIFEST_BYTES` (:func:`read_volume_file`: a FIFO,
        a device, a link leaving the volume are refused without blocking or reading them).
        Any other shape or content raises :class:`ManifestError` naming the file and the
        field. With ``skip_invalid`` (the server, which serves what it can) an invalid model
        entry is left out and listed in :attr:`rejected` instead; the rest of the file must
        still be valid. Blocking file I/O: an asyncio caller runs it in a thread.
        """
        path = cls.path_in(models_dir)
        file = f"manifest {path}"
        try:
            raw = read_volume_file(models_dir, MANIFEST_NAME, MAX_MANIFEST_BYTES)
        except FileNotFoundError:
            if missing_ok:
                return cls()
            raise ManifestMissingError(file, "", "is missing") from None
        except VolumeFileError as exc:
            raise ManifestError(file, "", exc.reason) from None
        except OSError as exc:
            raise ManifestError(file, "", f"cannot read it: {exc}") from None
        return cls.from_bytes(raw, file, skip_invalid=skip_invalid)

    @classmethod
    def from_bytes(cls, raw: bytes, file: str, *, skip_invalid: bool = False) -> Manifest:
        """A manifest from the file's bytes (UTF-8 JSON); :class:`ManifestError` naming
        ``file`` and the field for anything else."""
        try:
            return cls.from_json(parse_json(raw, file), file, skip_invalid=skip_invalid)
        except ManifestError:
            raise
        except SchemaError as exc:
            raise ManifestError(exc.file, exc.field, exc.message) from None

    @classmethod
    def from_json(
        cls, data: Any, file: str = "manifest", *, skip_invalid: bool = False
    ) -> Manifest:
        """A manifest from parsed JSON; :class:`SchemaError` for any other shape."""
        data = check_object(data, file, "", required=("version",), optional=("models", "tasks"))
        version = data["version"]
        if version != MANIFEST_VERSION or isinstance(version, bool):
            raise SchemaError(
                file,
                "version",
                f"unsupported format version {version!r} (expected {MANIFEST_VERSION})",
            )
        models, rejected = parse_models(data.get("models", {}), file, skip_invalid=skip_invalid)
        tasks = check_tasks_order(data.get("tasks", {}), file, "tasks")
        return cls(models=models, tasks=tasks, rejected=rejected)

    def save(self, models_dir: Path) -> None:
        """Write atomically: a reader sees the old manifest or the new one, never a mix."""
        data = {
            "version": MANIFEST_VERSION,
            "tasks": self.tasks,
            "models": {name: self.models[name].to_json() for name in sorted(self.models)},
        }
        path = self.path_in(models_dir)
        atomic_write_bytes(
            path, capped_json(data, f"manifest {path}", MAX_MANIFEST_BYTES, ManifestError)
        )

    def mark_verified(self, names: Iterable[str], when: str | None = None) -> list[str]:
        """Record that the installed models ``names`` were just checked (``verified_at``).

        Names not installed are skipped; returns those that were marked. Call :meth:`save`
        to write the change.
        """
        when = when or utc_now()
        marked = []
        for name in names:
            entry = self.models.get(name)
            if entry is not None:
                entry.verified_at = when
                marked.append(name)
        return marked

    def preference(self, task: str) -> list[str]:
        """Model names for ``task`` in fallback order: the catalog order, then any other
        installed model of that task."""
        ordered = list(self.tasks.get(task, []))
        ordered += sorted(n for n, e in self.models.items() if e.task == task and n not in ordered)
        return ordered
