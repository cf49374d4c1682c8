"""What the tiny stand-ins are: the catalog they follow, their labels, decoys and the record.

The builders (:mod:`.builders`) make one stand-in per model of the default catalog, with the
real model's labels (:data:`LABELS`, from ``shared/reference/model-shapes.md``) and the decoy files
a hub repository carries that the fetcher must skip (:data:`DECOY_FILES`). A build is described by
:class:`TinyModel` records, indexed in :data:`INDEX_NAME` at its root (see :mod:`.cache`).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hubless_volume

DECOY_FILES: tuple[str, ...] = (
    "pytorch_model.bin",
    "tf_model.h5",
    "flax_model.msgpack",
    "rust_model.ot",
    "onnx/model.onnx",
    "README.md",
    ".gitattributes",
)
"""Files every tiny model directory carries that the fetcher must not download."""

INDEX_NAME = "tiny-models.json"
"""Index written at the root of a build: name -> TinyModel fields."""

LABELS: dict[str, tuple[str, ...]] = {
    "emotion-english-distilroberta": (
        "anger",
        "disgust",
        "fear",
        "joy",
        "neutral",
        "sadness",
        "surprise",
    ),
    "bert-multilingual-sentiment": ("1 star", "2 stars", "3 stars", "4 stars", "5 stars"),
    "twitter-roberta-sentiment": ("negative", "neutral", "positive"),
    "distilbert-sst2": ("NEGATIVE", "POSITIVE"),
    "bart-large-mnli": ("contradiction", "neutral", "entailment"),
}
"""The real models' labels, in id order (``id2label[i] == LABELS[name][i]``)."""


@dataclass(frozen=True)
class TinyModel:
    """One tiny stand-in: catalog identity, where its files are, and its labels (id order)."""

    name: str
    repo_id: str
    task: str
    path: Path
    labels: tuple[str, ...] = ()
    architecture: str = ""

    def files(self, *, decoys: bool = False) -> list[str]:
        """Relative paths (``/``-separated, sorted) of the model's files; decoys only if asked."""
        out = []
        for file in sorted(self.path.rglob("*")):
            if file.is_file():
                rel = file.relative_to(self.path).as_posix()
                if decoys or rel not in DECOY_FILES:
                    out.append(rel)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "repo_id": self.repo_id,
            "task": self.task,
            "path": self.path.name,
            "labels": list(self.labels),
            "architecture": self.architecture,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], root: Path) -> TinyModel:
        return cls(
            name=data["name"],
            repo_id=data["repo_id"],
            task=data["task"],
            path=root / data["path"],
            labels=tuple(data["labels"]),
            architecture=data["architecture"],
        )


@dataclass(frozen=True)
class CatalogModel:
    """One ``[[models]]`` entry of the default catalog."""

    name: str
    repo_id: str
    revision: str
    task: str


@dataclass(frozen=True)
class Catalog:
    """The default catalog (:func:`catalog_file`), read with tomllib."""

    models: list[CatalogModel]
    tasks: dict[str, list[str]] = field(default_factory=dict)


def catalog_file() -> Path:
    """The default catalog file (TOML) the stand-ins follow: the one the fetcher installs."""
    return hubless_volume.catalog_file()


def load_catalog() -> Catalog:
    """Read the packaged default catalog (:func:`catalog_file`)."""
    data = tomllib.loads(catalog_file().read_text("utf-8"))
    models = [
        CatalogModel(m["name"], m["repo_id"], m.get("revision", "main"), m["task"])
        for m in data["models"]
    ]
    tasks = {task: list(names) for task, names in data.get("tasks", {}).items()}
    return Catalog(models=models, tasks=tasks)
