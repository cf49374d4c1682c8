"""The catalog: which models, at which revision, for which task (``catalog.toml``).

Its lock file (``catalog.lock.json``) is :mod:`hubless_fetcher.lockfile`; the task names are
the volume format's (:data:`hubless_volume.TASKS`).
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubless_fetcher.settings import ConfigError
from hubless_volume import MAX_CATALOG_BYTES, TASKS, VolumeFileError, read_regular_file
from hubless_volume.schema import (
    SchemaError,
    check_name,
    check_repo_id,
    check_revision,
    check_task,
)

CATALOG_VERSION = 1

_MODEL_KEYS = {"name", "repo_id", "revision", "task"}


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``"; did you mean x?"`` naming the names of ``known`` close to ``name`` (a typo), or
    ``""``: a suggestion only ever names something that exists."""
    close = difflib.get_close_matches(name, list(known), n=2, cutoff=0.75)
    return f"; {name}: did you mean {' or '.join(close)}?" if close else ""


class CatalogError(SchemaError, ConfigError):
    """A catalog file that is not valid TOML or not a valid catalog. Lists every problem
    found (``problems``), each naming its field; the first is ``field``/``message``."""

    def __init__(self, file: str, problems: list[SchemaError]) -> None:
        first = problems[0]
        super().__init__(file, first.field, first.message)
        self.problems = problems
        listed = "; ".join(f"{p.field}: {p.message}" if p.field else p.message for p in problems)
        self.args = (f"{file} is invalid: {listed}",)

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.file, self.problems))


def task_list(value: str) -> list[str]:
    """``emotion,sentiment`` (``--tasks``): task names, each one of
    :data:`hubless_volume.TASKS` (:class:`ConfigError` otherwise), without repeats."""
    tasks = [t.strip() for t in value.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if not tasks or unknown:
        what = ", ".join(unknown) or repr(value)
        raise ConfigError(f"unknown task(s) {what} (one of: {', '.join(TASKS)})")
    return list(dict.fromkeys(tasks))


def is_commit(revision: str) -> bool:
    """True when ``revision`` is a full 40-hex commit sha (needs no resolving)."""
    return len(revision) == 40 and all(c in "0123456789abcdef" for c in revision)


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

    def select(self, names: list[str] | None, tasks: list[str] | None = None) -> list[CatalogModel]:
        """The models named and every model of ``tasks`` (all of them for neither), in
        catalog order. An unknown name or task, or a task without a model in this catalog, is
        a :class:`ConfigError`."""
        if not names and not tasks:
            return list(self.models.values())
        unknown = [n for n in names or [] if n not in self.models]
        if unknown:
            hints = "".join(did_you_mean(n, self.models) for n in unknown)
            raise ConfigError(
                f"not in the catalog: {', '.join(unknown)}{hints} (known: {', '.join(self.models)})"
            )
        wanted = set(names or []) | {m.name for m in self.models_of(tasks or [])}
        return [m for m in self.models.values() if m.name in wanted]

    def models_of(self, tasks: list[str]) -> list[CatalogModel]:
        """Every model of ``tasks``, in catalog order; :class:`ConfigError` for an unknown task
        or one that no model of this catalog serves."""
        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            raise ConfigError(f"unknown task(s) {', '.join(unknown)} (one of: {', '.join(TASKS)})")
        empty = [t for t in tasks if not any(m.task == t for m in self.models.values())]
        if empty:
            raise ConfigError(f"the catalog has no model for task(s): {', '.join(empty)}")
        return [m for m in self.models.values() if m.task in tasks]

    @classmethod
    def load(cls, path: Path) -> Catalog:
        """Read and validate a catalog file: a regular file (links followed) of at most
        ``MAX_CATALOG_BYTES`` (:func:`hubless_volume.read_regular_file`)."""
        path = Path(path)
        try:
            data = tomllib.loads(read_regular_file(path, MAX_CATALOG_BYTES).decode("utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"catalog {path} does not exist") from None
        except VolumeFileError as exc:
            raise CatalogError(
                f"catalog {path}", [SchemaError(f"catalog {path}", "", exc.reason)]
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CatalogError(
                f"catalog {path}", [SchemaError(f"catalog {path}", "", f"cannot read it: {exc}")]
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise CatalogError(
                f"catalog {path}", [SchemaError(f"catalog {path}", "", f"not valid TOML: {exc}")]
            ) from None
        return cls.from_dict(data, path=path)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, path: Path | None = None) -> Catalog:
        """Validate parsed TOML; every problem found is listed in one :class:`CatalogError`
        (a :class:`ConfigError` and a :class:`~hubless_volume.SchemaError`)."""
        where = f"catalog {path}" if path else "catalog"
        problems: list[SchemaError] = []

        def problem(field: str, message: str) -> None:
            problems.append(SchemaError(where, field, message))

        if data.get("version", CATALOG_VERSION) != CATALOG_VERSION:
            problem("version", f"version {data.get('version')!r} is not supported (expected 1)")
        unknown_top = set(data) - {"version", "models", "tasks"}
        if unknown_top:
            problem("", f"unknown top-level keys: {', '.join(sorted(unknown_top))}")
        raw_models = data.get("models", [])
        if not isinstance(raw_models, list) or not raw_models:
            problem("models", "no [[models]] entries")
            raw_models = []
        models: dict[str, CatalogModel] = {}
        for index, raw in enumerate(raw_models):
            model = _parse_model(raw, where, f"models[{index}]", problems)
            if model is None:
                continue
            if model.name in models:
                problem(f"models[{index}].name", f"duplicate model name {model.name!r}")
                continue
            models[model.name] = model
        tasks = _parse_tasks(data.get("tasks", {}), models, where, problems)
        if problems:
            raise CatalogError(where, problems)
        return cls(models=models, tasks=tasks, path=path)


def _parse_model(
    raw: Any, file: str, label: str, problems: list[SchemaError]
) -> CatalogModel | None:
    if not isinstance(raw, dict):
        problems.append(SchemaError(file, label, "is not a table"))
        return None
    ok = True
    extra = set(raw) - _MODEL_KEYS
    if extra:
        problems.append(SchemaError(file, label, f"unknown keys {', '.join(sorted(extra))}"))
        ok = False
    for key in ("name", "repo_id", "task"):
        if not isinstance(raw.get(key), str) or not raw.get(key):
            problems.append(SchemaError(file, f"{label}.{key}", f"missing or empty {key!r}"))
            ok = False
    if not ok:
        return None
    values: dict[str, str] = {}
    checks = {
        "name": check_name,
        "repo_id": check_repo_id,
        "revision": check_revision,
        "task": check_task,
    }
    for key, check in checks.items():
        try:
            values[key] = check(raw.get(key, "main"), file, f"{label}.{key}")
        except SchemaError as exc:
            problems.append(exc)
    if len(values) < len(checks):
        return None
    return CatalogModel(values["name"], values["repo_id"], values["revision"], values["task"])


def _parse_tasks(
    raw: Any, models: dict[str, CatalogModel], file: str, problems: list[SchemaError]
) -> dict[str, list[str]]:
    def problem(field: str, message: str) -> None:
        problems.append(SchemaError(file, field, message))

    if not isinstance(raw, dict):
        problem("tasks", "[tasks] is not a table")
        raw = {}
    tasks: dict[str, list[str]] = {}
    for task, names in raw.items():
        label = f"tasks.{task}"
        if task not in TASKS:
            problem(label, f"[tasks] names unknown task {task!r} (one of: {', '.join(TASKS)})")
            continue
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            problem(label, f"[tasks] {task} must be a list of model names")
            continue
        for name in names:
            if name not in models:
                problem(label, f"[tasks] {task} names unknown model {name!r}")
            elif models[name].task != task:
                problem(
                    label, f"[tasks] {task} lists {name!r}, whose task is {models[name].task!r}"
                )
        if len(set(names)) != len(names):
            problem(label, f"[tasks] {task} lists a model twice")
        tasks[task] = [n for n in dict.fromkeys(names) if n in models]
    for model in models.values():  # models not ranked go last, in catalog order
        ranked = tasks.setdefault(model.task, [])
        if model.name not in ranked:
            ranked.append(model.name)
    return tasks
