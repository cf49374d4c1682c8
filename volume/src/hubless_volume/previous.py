"""Previous generations: what the fetcher keeps of a model after it moved or was removed.

When a model moves to a new commit (or is removed), the manifest stops listing its old files
at once, but a server that is starting or reloading may still be reading them, so the fetcher
keeps them for a while (``HUBLESS_KEEP_PREVIOUS``, see ``docs/fetcher.md``). What it keeps is
recorded here, in ``hubless-previous.json`` beside the manifest: per model name, the manifest
entry each kept generation had and when it stopped being current. Files on the volume that
neither the manifest nor this file references are not anyone's and may be pruned.

Format (``version`` 1), each list oldest first::

    {
      "version": 1,
      "models": {
        "dialogpt-small": [
          {"replaced_at": "2026-11-25T13:00:00+00:00", "entry": {<its manifest entry>}}
        ]
      }
    }

A file of its own, not a key of the manifest: the server reads only the manifest, strictly
(unknown keys refused), so a server built before this file existed keeps reading volumes
written by a newer fetcher; and a change to what is kept never rewrites the manifest that the
servers follow. The fetcher writes it before the manifest (holding the volume write lock), so
a crash in between leaves a record of a generation that is still current, which is ignored.
Absent means nothing is kept. Parsed as strictly as the manifest: any other shape raises
:class:`~hubless_volume.schema.SchemaError` naming the file and the field.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from hubless_volume.atomic import atomic_write_json
from hubless_volume.jsonfile import read_json
from hubless_volume.manifest import ModelEntry
from hubless_volume.safeio import MAX_PREVIOUS_BYTES
from hubless_volume.schema import (
    SchemaError,
    check_name,
    check_object,
    check_timestamp,
    check_type,
)

PREVIOUS_NAME = "hubless-previous.json"
PREVIOUS_VERSION = 1


@dataclass(frozen=True)
class PreviousGeneration:
    """One kept generation of a model: its manifest entry as it was, and when the manifest
    stopped listing it (ISO 8601, UTC)."""

    entry: ModelEntry
    replaced_at: str

    @property
    def key(self) -> tuple[str, str, str]:
        """(model name, repo id, commit): what a record is about."""
        return (self.entry.name, self.entry.repo_id, self.entry.commit)

    @property
    def replaced(self) -> datetime:
        return datetime.fromisoformat(self.replaced_at)

    def to_json(self) -> dict[str, Any]:
        return {"replaced_at": self.replaced_at, "entry": self.entry.to_json()}

    @classmethod
    def from_json(cls, data: Any, file: str, field: str) -> PreviousGeneration:
        data = check_object(data, file, field, required=("replaced_at", "entry"))
        return cls(
            entry=ModelEntry.from_json(data["entry"], file, f"{field}.entry"),
            replaced_at=check_timestamp(data["replaced_at"], file, f"{field}.replaced_at"),
        )


@dataclass
class PreviousGenerations:
    """Every kept generation on a volume, per model name, oldest first."""

    models: dict[str, list[PreviousGeneration]] = field(default_factory=dict)

    @staticmethod
    def path_in(models_dir: Path) -> Path:
        return Path(models_dir) / PREVIOUS_NAME

    def __iter__(self) -> Iterator[PreviousGeneration]:
        """Every kept generation, model by model, oldest first."""
        for name in sorted(self.models):
            yield from self.models[name]

    def __len__(self) -> int:
        return sum(len(kept) for kept in self.models.values())

    @classmethod
    def load(cls, models_dir: Path) -> PreviousGenerations:
        """Read the record of ``models_dir``; an absent file means nothing is kept. It must
        be a regular file inside the volume of at most ``MAX_PREVIOUS_BYTES``
        (:func:`~hubless_volume.safeio.read_volume_file`); :class:`SchemaError` otherwise."""
        path = cls.path_in(models_dir)
        file = f"previous generations {path}"
        try:
            data = read_json(PREVIOUS_NAME, file, limit=MAX_PREVIOUS_BYTES, models_dir=models_dir)
        except FileNotFoundError:
            return cls()
        return cls.from_json(data, file)

    @classmethod
    def from_json(cls, data: Any, file: str = "previous generations") -> PreviousGenerations:
        """The record from parsed JSON; :class:`SchemaError` for any other shape, a model
        name that differs from its entries' name, or one commit kept twice for a model."""
        data = check_object(data, file, "", required=("version", "models"))
        version = data["version"]
        if version != PREVIOUS_VERSION or isinstance(version, bool):
            raise SchemaError(
                file,
                "version",
                f"unsupported format version {version!r} (expected {PREVIOUS_VERSION})",
            )
        models: dict[str, list[PreviousGeneration]] = {}
        for name, raw in check_type(data["models"], dict, file, "models").items():
            where = f"models[{name!r}]"
            check_name(name, file, where)
            kept: list[PreviousGeneration] = []
            for i, item in enumerate(check_type(raw, list, file, where)):
                generation = PreviousGeneration.from_json(item, file, f"{where}[{i}]")
                entry = generation.entry
                if entry.name != name:
                    raise SchemaError(
                        file, f"{where}[{i}].entry.name", f"{entry.name!r} differs from {name!r}"
                    )
                if any(k.key == generation.key for k in kept):
                    raise SchemaError(
                        file,
                        f"{where}[{i}].entry.commit",
                        f"{entry.repo_id}@{entry.commit} is listed twice",
                    )
                kept.append(generation)
            if kept:
                models[name] = kept
        return cls(models)

    def save(self, models_dir: Path) -> None:
        """Write atomically; with nothing kept, the file is removed."""
        path = self.path_in(models_dir)
        if not len(self):
            path.unlink(missing_ok=True)
            return
        data = {
            "version": PREVIOUS_VERSION,
            "models": {
                name: [g.to_json() for g in self.models[name]]
                for name in sorted(self.models)
                if self.models[name]
            },
        }
        atomic_write_json(path, data)

    def retire(self, entry: ModelEntry, when: str) -> None:
        """Record that ``entry`` stopped being current at ``when`` (it moved or was removed);
        an older record of the same commit of that model is replaced."""
        new = PreviousGeneration(entry, when)
        kept = [g for g in self.models.get(entry.name, []) if g.key != new.key]
        self.models[entry.name] = [*kept, new]

    def drop(self, generations: list[PreviousGeneration]) -> None:
        """Forget ``generations`` (their files become unreferenced unless something else
        uses them)."""
        gone = {g.key for g in generations}
        for name in list(self.models):
            self.models[name] = [g for g in self.models[name] if g.key not in gone]
            if not self.models[name]:
                del self.models[name]
