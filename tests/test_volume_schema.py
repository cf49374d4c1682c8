"""hubless_volume.schema: the field checks every input file goes through, and the manifest's
strict (fetcher) and per-entry (server) loading."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from hubless_volume import (
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    SchemaError,
    check_commit,
    check_name,
    check_relpath,
    check_repo_id,
    check_revision,
    check_sha256,
    check_size,
    check_task,
    check_timestamp,
)

COMMIT = "c" * 40
SHA = "5" * 64


def test_schema_error_names_the_file_and_the_field() -> None:
    error = SchemaError("bundle index", "models[2].files[0].path", "'../x' leaves the folder")
    assert str(error) == "bundle index: models[2].files[0].path: '../x' leaves the folder"
    assert isinstance(error, ValueError)
    assert str(SchemaError("lock file x", "", "not valid JSON")) == "lock file x: not valid JSON"
    again = pickle.loads(pickle.dumps(error))
    assert (again.file, again.field, again.message) == (error.file, error.field, error.message)


@pytest.mark.parametrize(
    "good", ["config.json", "1_Pooling/config.json", "a b/ü.json", ".gitattributes", "x..y"]
)
def test_relpath_accepts_normal_relative_paths(good: str) -> None:
    assert check_relpath(good, "f", "path") == good


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("/etc/passwd", "is absolute"),
        ("../x", "leaves the model folder"),
        ("a/../../x", "leaves the model folder"),
        ("..", "leaves the model folder"),
        ("a//b", "not normalised"),
        ("./a", "not normalised"),
        ("a/", "not normalised"),
        ("", "empty"),
        ("a\\..\\x", "backslash"),
        ("a\x00b", "control character"),
        ("a\nb", "control character"),
        ("x" * 1025, "too long"),
    ],
)
def test_relpath_refuses_paths_that_could_escape(bad: str, why: str) -> None:
    with pytest.raises(SchemaError, match=why) as err:
        check_relpath(bad, "bundle index", "models['m'].files[0].path")
    assert str(err.value).startswith("bundle index: models['m'].files[0].path: ")


@pytest.mark.parametrize("good", ["main", "v1.0", "refs/pr/1", "release_2-x", COMMIT])
def test_revision_accepts_branches_tags_and_commits(good: str) -> None:
    assert check_revision(good, "f", "revision") == good


@pytest.mark.parametrize(
    "bad", ["../../x", "/main", "main/", "a//b", "a/./b", "..", "a\\b", "", "a b", "x.lock", 1]
)
def test_revision_refuses_anything_else(bad: Any) -> None:
    with pytest.raises(SchemaError, match="revision"):
        check_revision(bad, "f", "revision")


@pytest.mark.parametrize(
    ("check", "good", "bad"),
    [
        (check_name, "dialogpt-small", ["../x", "a/b", "", ".hidden", "a" * 97, None]),
        (check_repo_id, "org/name", ["../x", "org/../x", "a--b/c", "a/b/c", "/x", "org/"]),
        (check_commit, COMMIT, ["../..", "C" * 40, "c" * 39, "c" * 41, 40]),
        (check_sha256, SHA, ["../../x", "5" * 63, "G" * 64, "A" * 64, None]),
        (check_task, "embedding", ["translation", "", 1]),
        (check_size, 0, [-1, True, 1.0, "2"]),
        (
            check_timestamp,
            "2026-11-25T13:00:00+00:00",
            ["2026-11-25T13:00:00", "yesterday", "", 1, "2026-11-25T13:00:00+00:00" + " " * 60],
        ),
    ],
)
def test_each_field_check(check: Any, good: Any, bad: list[Any]) -> None:
    assert check(good, "f", "x") == good
    for value in bad:
        with pytest.raises(SchemaError, match=r"^f: x: "):
            check(value, "f", "x")


# ---- the manifest ------------------------------------------------------------------------


def _entry(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "m",
        "repo_id": "org/m",
        "revision": "main",
        "commit": COMMIT,
        "task": "emotion",
        "files": [{"path": "config.json", "size": 2, "sha256": SHA}],
    }
    data.update(changes)
    return data


def _write(root: Path, models: dict[str, Any], **extra: Any) -> Path:
    data = {"version": 1, "tasks": {"emotion": list(models)}, "models": models, **extra}
    (root / MANIFEST_NAME).write_text(json.dumps(data), encoding="utf-8")
    return root


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        (_entry(commit="../.."), "models['m'].commit"),
        (_entry(files=[{"path": "/etc/passwd", "size": 2, "sha256": SHA}]), "files[0].path"),
        (_entry(files=[{"path": "../../x", "size": 2, "sha256": SHA}]), "files[0].path"),
        (_entry(files=[{"path": "c", "size": 2, "sha256": "../../x"}]), "files[0].sha256"),
        (_entry(revision="../../x"), "models['m'].revision"),
        (_entry(revision="d" * 40), "models['m'].revision"),  # a commit, another one
        (_entry(repo_id="../../x"), "models['m'].repo_id"),
        (_entry(name="other"), "models['m'].name"),  # not its key
        (_entry(task="translation"), "models['m'].task"),
        (_entry(files=[]), "models['m'].files"),
        (_entry(extra=1), "models['m']"),
        (
            _entry(files=[{"path": "a", "size": 1, "sha256": SHA}] * 2),
            "models['m'].files[1].path",
        ),
        (
            _entry(
                files=[
                    {"path": "a", "size": 1, "sha256": SHA},
                    {"path": "b", "size": 2, "sha256": SHA},
                ]
            ),
            "models['m'].files[1].size",
        ),
        (
            _entry(
                files=[
                    {"path": "a", "size": 1, "sha256": SHA},
                    {"path": "a/b", "size": 1, "sha256": SHA},
                ]
            ),
            "models['m'].files[1].path",
        ),
    ],
)
def test_manifest_entries_are_checked_field_by_field(
    tmp_path: Path, entry: dict[str, Any], field: str
) -> None:
    with pytest.raises(ManifestError) as err:
        Manifest.load(_write(tmp_path, {"m": entry}))
    assert str(err.value).startswith(f"manifest {tmp_path / MANIFEST_NAME}: ")
    assert field in err.value.field
    assert isinstance(err.value, SchemaError)


def test_manifest_key_twice_and_unknown_top_level_keys(tmp_path: Path) -> None:
    entry = json.dumps(_entry())
    text = f'{{"version": 1, "models": {{"m": {entry}, "m": {entry}}}}}'
    (tmp_path / MANIFEST_NAME).write_text(text, encoding="utf-8")
    with pytest.raises(ManifestError, match="'m' appears twice"):
        Manifest.load(tmp_path)
    with pytest.raises(ManifestError, match="unknown keys: extra"):
        Manifest.load(_write(tmp_path, {}, extra=1))
    with pytest.raises(ManifestError, match=r"tasks\['translation'\]"):
        Manifest.load(_write(tmp_path, {}, tasks={"translation": []}))


def test_skip_invalid_keeps_the_good_entries_and_names_the_bad(tmp_path: Path) -> None:
    models = {
        "good": _entry(name="good"),
        "evil": _entry(name="evil", commit="../.."),
        "worse": "not an object",
    }
    manifest = Manifest.load(_write(tmp_path, models), skip_invalid=True)
    assert list(manifest.models) == ["good"]
    rejected = {r.key: r for r in manifest.rejected}
    assert rejected["evil"].task == "emotion" and rejected["evil"].error.field.endswith(".commit")
    assert rejected["worse"].task is None
    with pytest.raises(ManifestError):  # strict: the fetcher's way
        Manifest.load(tmp_path)
    with pytest.raises(ManifestError):  # the file as a whole must still be valid
        Manifest.load(_write(tmp_path, models, version=2), skip_invalid=True)
