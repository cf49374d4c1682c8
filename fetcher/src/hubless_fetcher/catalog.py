"""The catalog: which models, at which revision, for which task (``catalog.toml``).

Its lock file (``catalog.lock.json``) is :mod:`hubless_fetcher.lockfile`; the task names are
the volume format's (:data:`hubless_volume.TASKS`).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubless_fetcher.settings import ConfigError
from hubless_volume import TASKS

CATALOG_VERSION = 1

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_REPO_ID = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_MODEL_KEYS = {"name", "repo_id", "revision", "task"}


def is_commit(revision: str) -> bool:
    """True when ``revision`` is a full 40-hex commit sha (needs no resolving)."""
    return bool(_COMMIT.match(revision))


@dataclass(frozen=True)
class CatalogModel:
    """One ``[[models]]`` entry."""

    name: str
    repo_id: str
    revision: str
    task: str


@dataclass
class Catalog:
    """A validated catalog; ``tasks`` is complete (every model appears under its task)."""

    models: dict[str, CatalogModel]
    tasks: dict[str, list[str]]
    path: Path | None = None

    @property
    def lock_path(self) -> Path:
        """Where ``lock`` writes and ``fetch --locked`` reads: ``<catalog stem>.lock.json``."""
        if self.path is None:
            raise ConfigError("this catalog was not read from a file: it has no lock file")
        return self.path.with_name(self.path.stem + ".lock.json")

    def select(self, names: list[str] | None) -> list[CatalogModel]:
        """The models named (all of them for no names), in catalog order."""
        if not names:
            return list(self.models.values())
        unknown = [n for n in names if n not in self.models]
        if unknown:
            raise ConfigError(
                f"not in the catalog: {', '.join(unknown)} (known: {', '.join(self.models)})"
            )
        wanted = set(names)
        return [m for m in self.models.values() if m.name in wanted]

    @classmethod
    def load(cls, path: Path) -> Catalog:
        """Read and validate a catalog file."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"catalog {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read catalog {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"catalog {path} is not valid TOML: {exc}") from None
        return cls.from_dict(data, path=path)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, path: Path | None = None) -> Catalog:
        """Validate parsed TOML; every problem found is listed in one :class:`ConfigError`."""
        where = f"catalog {path}" if path else "catalog"
        problems: list[str] = []
        if data.get("version", CATALOG_VERSION) != CATALOG_VERSION:
            problems.append(f"version {data.get('version')!r} is not supported (expected 1)")
        unknown_top = set(data) - {"version", "models", "tasks"}
        if unknown_top:
            problems.append(f"unknown top-level keys: {', '.join(sorted(unknown_top))}")
        raw_models = data.get("models", [])
        if not isinstance(raw_models, list) or not raw_models:
            problems.append("no [[models]] entries")
            raw_models = []
        models: dict[str, CatalogModel] = {}
        for index, raw in enumerate(raw_models, start=1):
            model = _parse_model(raw, f"[[models]] #{index}", problems)
            if model is None:
                continue
            if model.name in models:
                problems.append(f"duplicate model name {model.name!r}")
                continue
            models[model.name] = model
        tasks = _parse_tasks(data.get("tasks", {}), models, problems)
        if problems:
            raise ConfigError(f"{where} is invalid:\n  - " + "\n  - ".join(problems))
        return cls(models=models, tasks=tasks, path=path)


def _parse_model(raw: Any, label: str, problems: list[str]) -> CatalogModel | None:
    if not isinstance(raw, dict):
        problems.append(f"{label} is not a table")
        return None
    ok = True
    extra = set(raw) - _MODEL_KEYS
    if extra:
        problems.append(f"{label}: unknown keys {', '.join(sorted(extra))}")
        ok = False
    for key in ("name", "repo_id", "task"):
        if not isinstance(raw.get(key), str) or not raw.get(key):
            problems.append(f"{label}: missing or empty {key!r}")
            ok = False
    if not ok:
        return None
    name, repo_id, task = raw["name"], raw["repo_id"], raw["task"]
    revision = raw.get("revision", "main")
    label = f"model {name!r}"
    if not _NAME.match(name):
        problems.append(f"{label}: name must match {_NAME.pattern}")
        ok = False
    if not _REPO_ID.match(repo_id) or ".." in repo_id or "--" in repo_id:
        problems.append(f"{label}: repo_id {repo_id!r} is not 'org/name'")
        ok = False
    if not isinstance(revision, str) or not revision or revision.startswith("/"):
        problems.append(f"{label}: revision must be a branch, tag or commit")
        ok = False
    if task not in TASKS:
        problems.append(f"{label}: unknown task {task!r} (one of: {', '.join(TASKS)})")
        ok = False
    return CatalogModel(name, repo_id, revision, task) if ok else None


def _parse_tasks(
    raw: Any, models: dict[str, CatalogModel], problems: list[str]
) -> dict[str, list[str]]:
    if not isinstance(raw, dict):
        problems.append("[tasks] is not a table")
        raw = {}
    tasks: dict[str, list[str]] = {}
    for task, names in raw.items():
        if task not in TASKS:
            problems.append(f"[tasks] names unknown task {task!r} (one of: {', '.join(TASKS)})")
            continue
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            problems.append(f"[tasks] {task} must be a list of model names")
            continue
        for name in names:
            if name not in models:
                problems.append(f"[tasks] {task} names unknown model {name!r}")
            elif models[name].task != task:
                problems.append(
                    f"[tasks] {task} lists {name!r}, whose task is {models[name].task!r}"
                )
        if len(set(names)) != len(names):
            problems.append(f"[tasks] {task} lists a model twice")
        tasks[task] = [n for n in dict.fromkeys(names) if n in models]
    for model in models.values():  # models not ranked go last, in catalog order
        ranked = tasks.setdefault(model.task, [])
        if model.name not in ranked:
            ranked.append(model.name)
    return tasks
