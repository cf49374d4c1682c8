"""The catalog lock file, ``<catalog stem>.lock.json``: each model pinned to a commit and
every selected file to its size and sha256.

``hubless-fetch lock`` writes it (:mod:`hubless_fetcher.pin`); ``fetch --locked`` installs
exactly what it lists. Not to be confused with the volume's inter-process write lock
(:mod:`hubless_fetcher.writelock`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubless_fetcher.settings import ConfigError
from hubless_volume import (
    MAX_LOCK_BYTES,
    FileRecord,
    atomic_write_json,
    read_json,
    utc_now,
)
from hubless_volume.manifest import check_files
from hubless_volume.schema import (
    SchemaError,
    check_blob_id,
    check_commit,
    check_name,
    check_object,
    check_relpath,
    check_repo_id,
    check_revision,
    check_sha256,
    check_size,
    check_type,
)

LOCK_VERSION = 1


@dataclass(frozen=True)
class LockedFile:
    """One file of a locked model: enough to download it and to check every byte."""

    path: str
    size: int
    sha256: str
    blob_id: str | None = None


@dataclass
class LockedModel:
    name: str
    repo_id: str
    revision: str
    commit: str
    files: list[LockedFile]


@dataclass
class LockFile:
    """``catalog.lock.json``: each model's commit and every selected file's size and sha256."""

    models: dict[str, LockedModel] = field(default_factory=dict)
    locked_at: str = field(default_factory=utc_now)

    @classmethod
    def load(cls, path: Path) -> LockFile:
        """Read and check a lock file: :class:`ConfigError` when there is none,
        :class:`~hubless_volume.SchemaError` (naming the file and the field) for anything
        else that is not a valid lock file, including a path that is not a regular file or
        is over ``MAX_LOCK_BYTES`` (:func:`hubless_volume.read_json`)."""
        path = Path(path)
        file = f"lock file {path}"
        try:
            data = read_json(path, file, limit=MAX_LOCK_BYTES)
        except FileNotFoundError:
            raise ConfigError(
                f"no lock file at {path}: run `hubless-fetch lock` first (needs the hub)"
            ) from None
        return cls.from_json(data, file)

    @classmethod
    def from_json(cls, data: Any, file: str = "lock file") -> LockFile:
        """A lock file from parsed JSON, every field checked (:class:`SchemaError`)."""
        data = check_object(data, file, "", required=("version", "models"), optional=("locked_at",))
        if data["version"] != LOCK_VERSION or isinstance(data["version"], bool):
            raise SchemaError(
                file, "version", f"unsupported version {data['version']!r} (expected 1)"
            )
        raw_models = check_type(data["models"], dict, file, "models")
        models = {}
        for name, raw in raw_models.items():
            where = f"models[{name!r}]"
            check_name(name, file, where)
            models[name] = _parse_model(name, raw, file, where)
        locked_at = check_type(data.get("locked_at", ""), str, file, "locked_at")
        return cls(models=models, locked_at=locked_at)

    def save(self, path: Path) -> None:
        """Write atomically (:func:`hubless_volume.atomic_write_json`)."""
        path = Path(path)
        data = {
            "version": LOCK_VERSION,
            "locked_at": self.locked_at,
            "models": {
                name: {
                    "repo_id": m.repo_id,
                    "revision": m.revision,
                    "commit": m.commit,
                    "files": [
                        {k: v for k, v in f.__dict__.items() if v is not None} for f in m.files
                    ],
                }
                for name, m in sorted(self.models.items())
            },
        }
        atomic_write_json(path, data)


def _parse_model(name: str, raw: Any, file: str, where: str) -> LockedModel:
    raw = check_object(raw, file, where, required=("repo_id", "revision", "commit", "files"))
    raw_files = check_type(raw["files"], list, file, f"{where}.files")
    files: list[LockedFile] = []
    for i, item in enumerate(raw_files):
        at = f"{where}.files[{i}]"
        item = check_object(
            item, file, at, required=("path", "size", "sha256"), optional=("blob_id",)
        )
        blob_id = item.get("blob_id")
        files.append(
            LockedFile(
                path=check_relpath(item["path"], file, f"{at}.path"),
                size=check_size(item["size"], file, f"{at}.size"),
                sha256=check_sha256(item["sha256"], file, f"{at}.sha256"),
                blob_id=None if blob_id is None else check_blob_id(blob_id, file, f"{at}.blob_id"),
            )
        )
    check_files([FileRecord(f.path, f.size, f.sha256) for f in files], file, f"{where}.files")
    return LockedModel(
        name=name,
        repo_id=check_repo_id(raw["repo_id"], file, f"{where}.repo_id"),
        revision=check_revision(raw["revision"], file, f"{where}.revision"),
        commit=check_commit(raw["commit"], file, f"{where}.commit"),
        files=files,
    )
