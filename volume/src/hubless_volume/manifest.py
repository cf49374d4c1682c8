"""The volume manifest: the single source of truth about what is installed.

The models volume is a standard Hugging Face hub cache (``models--org--name/...``) plus one
JSON file, ``hubless-manifest.json``, at its root. A model is *installed* only when it has an
entry here; the fetcher adds the entry after every file of the model has been verified, and
the server loads nothing that is not listed. Writes are atomic (temp file + ``os.replace``,
fsync of the file and of its folder). A file that is not valid JSON, or valid JSON of another
shape, raises :class:`ManifestError` and nothing else.

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
          "verified_at": "2026-11-25T13:00:00+00:00"
        }
      }
    }

``tasks`` is the catalog's per-task preference order (the server's fallback order) as of the
last fetch. The fetcher writes this file (holding its volume write lock); the server only reads.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hubless_volume.paths import snapshot_dir, snapshot_file

MANIFEST_NAME = "hubless-manifest.json"
MANIFEST_VERSION = 1


class ManifestError(Exception):
    """The manifest exists but cannot be read or has an unknown format."""


def utc_now() -> str:
    """Current time as an ISO 8601 string in UTC, second precision."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def _expect(value: Any, kind: type, what: str) -> Any:
    """``value`` if it is a ``kind`` (a bool is not an int here), else :class:`ManifestError`."""
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ManifestError(f"{what} is {type(value).__name__}, expected {kind.__name__}")
    return value


@dataclass(frozen=True)
class FileRecord:
    """One file of an installed model, relative to its snapshot folder."""

    path: str
    size: int
    sha256: str

    @classmethod
    def from_json(cls, data: Any, where: str = "file") -> FileRecord:
        """A record from its JSON object; :class:`ManifestError` if it has another shape."""
        _expect(data, dict, where)
        try:
            return cls(
                path=_expect(data["path"], str, f"{where}.path"),
                size=_expect(data["size"], int, f"{where}.size"),
                sha256=_expect(data["sha256"], str, f"{where}.sha256"),
            )
        except KeyError as exc:
            raise ManifestError(f"{where} has no {exc}") from None


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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> ModelEntry:
        """An entry from its JSON object; :class:`ManifestError` if it has another shape."""
        name = data.get("name", "?") if isinstance(data, dict) else "?"
        where = f"model entry {name!r}"
        _expect(data, dict, where)
        try:
            files = _expect(data["files"], list, f"{where}: files")
            return cls(
                name=_expect(data["name"], str, f"{where}: name"),
                repo_id=_expect(data["repo_id"], str, f"{where}: repo_id"),
                revision=_expect(data.get("revision", "main"), str, f"{where}: revision"),
                commit=_expect(data["commit"], str, f"{where}: commit"),
                task=_expect(data["task"], str, f"{where}: task"),
                files=[
                    FileRecord.from_json(f, f"{where}: files[{i}]") for i, f in enumerate(files)
                ],
                installed_at=_expect(data.get("installed_at", ""), str, f"{where}: installed_at"),
                verified_at=_expect(data.get("verified_at", ""), str, f"{where}: verified_at"),
            )
        except KeyError as exc:
            raise ManifestError(f"malformed {where}: no {exc}") from None


@dataclass
class Manifest:
    """Everything installed on a models volume."""

    models: dict[str, ModelEntry] = field(default_factory=dict)
    tasks: dict[str, list[str]] = field(default_factory=dict)

    @staticmethod
    def path_in(models_dir: Path) -> Path:
        return Path(models_dir) / MANIFEST_NAME

    @classmethod
    def load(cls, models_dir: Path) -> Manifest:
        """Read the manifest of ``models_dir``; an absent file means an empty volume."""
        path = cls.path_in(models_dir)
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls()
        except (OSError, UnicodeDecodeError) as exc:
            raise ManifestError(f"cannot read {path}: {exc}") from exc
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
        try:
            return cls.from_json(data)
        except ManifestError as exc:
            raise ManifestError(f"{path}: {exc}") from None

    @classmethod
    def from_json(cls, data: Any) -> Manifest:
        """A manifest from parsed JSON; :class:`ManifestError` for any other shape."""
        version = data.get("version") if isinstance(data, dict) else None
        if not isinstance(data, dict) or version != MANIFEST_VERSION:
            raise ManifestError(
                f"unsupported format version {version!r} (expected {MANIFEST_VERSION})"
            )
        raw_models = _expect(data.get("models", {}), dict, "models")
        raw_tasks = _expect(data.get("tasks", {}), dict, "tasks")
        models = {name: ModelEntry.from_json(entry) for name, entry in raw_models.items()}
        tasks: dict[str, list[str]] = {}
        for task, names in raw_tasks.items():
            _expect(names, list, f"tasks[{task!r}]")
            tasks[task] = [_expect(n, str, f"a name in tasks[{task!r}]") for n in names]
        return cls(models=models, tasks=tasks)

    def save(self, models_dir: Path) -> None:
        """Write atomically: a reader sees the old manifest or the new one, never a mix."""
        path = self.path_in(models_dir)
        data = {
            "version": MANIFEST_VERSION,
            "tasks": self.tasks,
            "models": {name: self.models[name].to_json() for name in sorted(self.models)},
        }
        fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST_NAME}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=2, sort_keys=False)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)

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


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
