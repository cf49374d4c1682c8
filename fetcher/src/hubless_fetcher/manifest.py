"""The volume manifest: the single source of truth about what is installed.

The models volume is a standard Hugging Face hub cache (``models--org--name/...``) plus one
JSON file, ``hubless-manifest.json``, at its root. A model is *installed* only when it has an
entry here; the fetcher adds the entry after every file of the model has been verified, and
the server loads nothing that is not listed. Writes are atomic (temp file + ``os.replace``).

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
last fetch.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MANIFEST_NAME = "hubless-manifest.json"
MANIFEST_VERSION = 1


class ManifestError(Exception):
    """The manifest exists but cannot be read or has an unknown format."""


def utc_now() -> str:
    """Current time as an ISO 8601 string in UTC, second precision."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def repo_folder_name(repo_id: str) -> str:
    """The hub cache folder of a model repository: ``org/name`` -> ``models--org--name``."""
    return "models--" + repo_id.replace("/", "--")


@dataclass(frozen=True)
class FileRecord:
    """One file of an installed model, relative to its snapshot folder."""

    path: str
    size: int
    sha256: str


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
        """Folder holding the model's files (what ``from_pretrained`` is given)."""
        return Path(models_dir) / repo_folder_name(self.repo_id) / "snapshots" / self.commit

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelEntry:
        try:
            files = [FileRecord(**f) for f in data["files"]]
            return cls(
                name=data["name"],
                repo_id=data["repo_id"],
                revision=data.get("revision", "main"),
                commit=data["commit"],
                task=data["task"],
                files=files,
                installed_at=data.get("installed_at", ""),
                verified_at=data.get("verified_at", ""),
            )
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"malformed model entry {data.get('name', '?')!r}: {exc}") from exc


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
        except OSError as exc:
            raise ManifestError(f"cannot read {path}: {exc}") from exc
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
            raise ManifestError(
                f"{path} has unsupported format version {data.get('version')!r} "
                f"(expected {MANIFEST_VERSION})"
            )
        models = {
            name: ModelEntry.from_json(entry) for name, entry in data.get("models", {}).items()
        }
        tasks = {task: list(names) for task, names in data.get("tasks", {}).items()}
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
