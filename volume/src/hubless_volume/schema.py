"""Field checks shared by every file that names things on a models volume.

The manifest, a bundle's index, the catalog's lock file and the catalog itself all carry names
that end up in paths (a repo id, a commit, a revision, a file's path in a snapshot) or in
commands. None of those files is trusted: each is parsed through one strict function that
checks every field with the validators here, so a name is refused where it is read, before
anything is joined into the volume (which :func:`hubless_volume.inside` checks again).

Every validator takes the value, the file it came from (``"manifest /models/..."``,
``"bundle index of x.tar"``) and the field's path in that file (``models[2].files[0].path``),
and returns the value, typed, or raises :class:`SchemaError` naming both::

    bundle index of x.tar: models['m'].files[0].path: '../x' leaves the model folder
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any, TypeVar

from hubless_volume.tasks import TASKS

T = TypeVar("T")

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_NAME = re.compile(NAME_PATTERN)
_REPO_ID = re.compile(rf"(?:{NAME_PATTERN}/)?{NAME_PATTERN}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_REVISION_PART = re.compile(r"[A-Za-z0-9._-]{1,100}")
_MAX_PATH = 1024
_MAX_REVISION = 255
_MAX_TIMESTAMP = 64


class SchemaError(ValueError):
    """A value in an input file has the wrong type, shape or content.

    ``file`` says which file (``"lock file catalog.lock.json"``), ``field`` where in it
    (``"models['m'].commit"``; empty for the file as a whole) and ``message`` what is wrong.
    """

    def __init__(self, file: str, field: str, message: str) -> None:
        self.file, self.field, self.message = file, field, message
        super().__init__(f"{file}: {field}: {message}" if field else f"{file}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:  # pickles with its three arguments
        return (type(self), (self.file, self.field, self.message))


def _show(value: object) -> str:
    """``repr`` of a value for a message, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_type(value: Any, kind: type[T], file: str, field: str) -> T:
    """``value`` if it is a ``kind`` (a bool is not an int here), else :class:`SchemaError`."""
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise SchemaError(file, field, f"is {type(value).__name__}, expected {kind.__name__}")
    return value


def check_object(
    value: Any,
    file: str,
    field: str,
    *,
    required: Collection[str],
    optional: Collection[str] = (),
) -> dict[str, Any]:
    """A JSON object (or TOML table) with every ``required`` key and no key that is neither
    required nor ``optional``."""
    data = check_type(value, dict, file, field or "the top level")
    missing = [key for key in required if key not in data]
    if missing:
        raise SchemaError(file, field or "the top level", f"has no {missing[0]!r}")
    known = set(required) | set(optional)
    unknown = sorted(str(key) for key in data if key not in known)
    if unknown:
        raise SchemaError(file, field or "the top level", f"unknown keys: {', '.join(unknown)}")
    return data


def check_name(value: Any, file: str, field: str) -> str:
    """A model name: letters, digits, ``.``, ``_``, ``-``; starts with a letter or digit."""
    text = check_type(value, str, file, field)
    if not _NAME.fullmatch(text):
        raise SchemaError(
            file, field, f"{_show(text)} is not a model name (letters, digits, '.', '_', '-')"
        )
    return text


def check_repo_id(value: Any, file: str, field: str) -> str:
    """A hub repository id, ``org/name`` (or ``name``), without ``..`` or ``--``."""
    text = check_type(value, str, file, field)
    if not _REPO_ID.fullmatch(text) or ".." in text or "--" in text:
        raise SchemaError(
            file, field, f"{_show(text)} is not 'org/name' (letters, digits, '.', '_', '-')"
        )
    return text


def check_commit(value: Any, file: str, field: str) -> str:
    """A full commit sha: exactly 40 lowercase hex digits."""
    text = check_type(value, str, file, field)
    if not _COMMIT.fullmatch(text):
        raise SchemaError(file, field, f"{_show(text)} is not a commit (40 lowercase hex digits)")
    return text


def check_blob_id(value: Any, file: str, field: str) -> str:
    """A git blob id (sha1): exactly 40 lowercase hex digits."""
    text = check_type(value, str, file, field)
    if not _COMMIT.fullmatch(text):
        raise SchemaError(
            file, field, f"{_show(text)} is not a git blob id (40 lowercase hex digits)"
        )
    return text


def check_sha256(value: Any, file: str, field: str) -> str:
    """A sha256 digest: exactly 64 lowercase hex digits."""
    text = check_type(value, str, file, field)
    if not _SHA256.fullmatch(text):
        raise SchemaError(file, field, f"{_show(text)} is not a sha256 (64 lowercase hex digits)")
    return text


def check_size(value: Any, file: str, field: str) -> int:
    """A size in bytes: a non-negative int (not a bool, not a float)."""
    size = check_type(value, int, file, field)
    if size < 0:
        raise SchemaError(file, field, f"{size} is negative")
    return size


def check_relpath(value: Any, file: str, field: str) -> str:
    """A file's path inside a model folder: relative, ``/``-separated and normalised.

    Refused: empty, a leading ``/``, empty, ``.`` or ``..`` segments, backslashes, NUL and
    other control characters, and paths longer than 1024 characters.
    """
    text = check_type(value, str, file, field)
    if not text or len(text) > _MAX_PATH:
        raise SchemaError(file, field, f"{_show(text)} is not a file path (empty or too long)")
    if text.startswith("/"):
        raise SchemaError(file, field, f"{_show(text)} is absolute, not inside the model folder")
    if "\\" in text or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise SchemaError(file, field, f"{_show(text)} holds a backslash or a control character")
    parts = text.split("/")
    if ".." in parts:
        raise SchemaError(file, field, f"{_show(text)} leaves the model folder")
    if "" in parts or "." in parts:
        raise SchemaError(file, field, f"{_show(text)} is not normalised (empty or '.' segment)")
    return text


def check_revision(value: Any, file: str, field: str) -> str:
    """A branch, tag or commit: ``/``-separated segments of letters, digits, ``.``, ``_``,
    ``-`` (``main``, ``v1.0``, ``refs/pr/1``), none of them ``.`` or ``..``.

    A revision names a ref file (``refs/<revision>``) on the volume; that join still goes
    through :func:`hubless_volume.inside`.
    """
    text = check_type(value, str, file, field)
    parts = text.split("/")
    if (
        not text
        or len(text) > _MAX_REVISION
        or not all(_REVISION_PART.fullmatch(p) for p in parts)
        or any(p in (".", "..") or p.endswith(".lock") for p in parts)
    ):
        raise SchemaError(
            file,
            field,
            f"{_show(text)} is not a branch, tag or commit (segments of letters, digits, "
            "'.', '_', '-' separated by '/', none '.' or '..')",
        )
    return text


def check_timestamp(value: Any, file: str, field: str) -> str:
    """An ISO 8601 date and time with its UTC offset (``2026-11-25T13:00:00+00:00``), as
    :func:`hubless_volume.utc_now` writes it."""
    text = check_type(value, str, file, field)
    try:
        when = datetime.fromisoformat(text) if len(text) <= _MAX_TIMESTAMP else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise SchemaError(file, field, f"{_show(text)} is not an ISO 8601 time with its UTC offset")
    return text


def check_task(value: Any, file: str, field: str) -> str:
    """One of :data:`hubless_volume.TASKS`."""
    text = check_type(value, str, file, field)
    if text not in TASKS:
        raise SchemaError(file, field, f"unknown task {text!r} (one of: {', '.join(TASKS)})")
    return text


def check_tasks_order(
    value: Any, file: str, field: str, models: Mapping[str, Any] | None = None
) -> dict[str, list[str]]:
    """``{task: [model name, ...]}``: known tasks, model names, no name twice per task.

    With ``models`` (name -> an object with a ``task``), every name must be one of them,
    of that task.
    """
    raw = check_type(value, dict, file, field)
    order: dict[str, list[str]] = {}
    for task, names in raw.items():
        where = f"{field}[{task!r}]"
        check_task(task, file, where)
        names = check_type(names, list, file, where)
        seen: list[str] = []
        for i, name in enumerate(names):
            check_name(name, file, f"{where}[{i}]")
            if name in seen:
                raise SchemaError(file, f"{where}[{i}]", f"{name!r} is listed twice")
            if models is not None:
                if name not in models:
                    raise SchemaError(file, f"{where}[{i}]", f"names unknown model {name!r}")
                if getattr(models[name], "task", task) != task:
                    raise SchemaError(
                        file, f"{where}[{i}]", f"{name!r} is a {models[name].task} model"
                    )
            seen.append(name)
        order[task] = seen
    return order


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads(..., object_pairs_hook=no_duplicate_keys)``: a key twice in one object is
    refused (plain ``json`` keeps the last, silently)."""
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise ValueError(f"the key {key!r} appears twice in one object")
        data[key] = value
    return data
