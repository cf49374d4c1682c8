"""The catalog lock file, ``<catalog stem>.lock.json``: each model pinned to a commit and
every selected file to its size and sha256.

``hubless-fetch lock`` writes it (:mod:`hubless_fetcher.pin`); ``fetch --locked`` installs
exactly what it lists. Not to be confused with the volume's inter-process write lock
(:mod:`hubless_fetcher.writelock`).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hubless_fetcher.settings import ConfigError
from hubless_volume import utc_now

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
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(
                f"no lock file at {path}: run `hubless-fetch lock` first (needs the hub)"
            ) from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read lock file {path}: {exc}") from None
        if not isinstance(data, dict) or data.get("version") != LOCK_VERSION:
            raise ConfigError(f"lock file {path} has an unsupported format")
        try:
            models = {
                name: LockedModel(
                    name=name,
                    repo_id=m["repo_id"],
                    revision=m["revision"],
                    commit=m["commit"],
                    files=[LockedFile(**f) for f in m["files"]],
                )
                for name, m in data["models"].items()
            }
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"lock file {path} is malformed: {exc}") from None
        return cls(models=models, locked_at=data.get("locked_at", ""))

    def save(self, path: Path) -> None:
        """Write atomically (temp file + rename)."""
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
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=2)
                fh.write("\n")
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
