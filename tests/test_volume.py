"""hubless_volume: the safe join, the manifest's shape checks and the one file check."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from hubless_volume import (
    MANIFEST_NAME,
    FileRecord,
    Manifest,
    ManifestError,
    ModelEntry,
    VolumePathError,
    check_entry,
    inside,
    repo_folder_name,
    sha256_file,
)

COMMIT = "a" * 40

# ---- inside(): every join into the volume ---------------------------------------------------


def test_inside_joins_relative_parts(tmp_path: Path) -> None:
    path = inside(tmp_path, "models--org--x", "snapshots", COMMIT, "1_Pooling/config.json")
    assert path == tmp_path / "models--org--x" / "snapshots" / COMMIT / "1_Pooling" / "config.json"
    assert inside(tmp_path, "./a") == tmp_path / "a"


@pytest.mark.parametrize("part", ["/etc/passwd", "/", ""])
def test_inside_refuses_absolute_and_empty_parts(tmp_path: Path, part: str) -> None:
    with pytest.raises(VolumePathError):
        inside(tmp_path, "models--org--x", part)


@pytest.mark.parametrize("part", ["..", "../x", "a/../../x", "a/..", "snapshots/../../../etc"])
def test_inside_refuses_dot_dot(tmp_path: Path, part: str) -> None:
    with pytest.raises(VolumePathError, match="leaves the volume"):
        inside(tmp_path, part)


def test_inside_refuses_a_symlink_leaving_the_volume(tmp_path: Path) -> None:
    volume, outside = tmp_path / "volume", tmp_path / "outside"
    (volume / "models--org--x").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_text("x")
    (volume / "models--org--x" / "snapshots").symlink_to(outside)  # a folder link
    (volume / "escape").symlink_to(outside / "secret")  # a file link
    with pytest.raises(VolumePathError, match="outside the volume"):
        inside(volume, "models--org--x", "snapshots", "secret")
    with pytest.raises(VolumePathError, match="outside the volume"):
        inside(volume, "escape")
    (volume / "dangling").symlink_to(outside / "not-there")  # resolved even when missing
    with pytest.raises(VolumePathError):
        inside(volume, "dangling")


def test_inside_allows_links_within_the_volume(tmp_path: Path) -> None:
    """Snapshot links point at blobs of the same volume: allowed, and returned unresolved."""
    blob = tmp_path / "models--org--x" / "blobs" / "b"
    blob.parent.mkdir(parents=True)
    blob.write_text("x")
    link = tmp_path / "models--org--x" / "snapshots" / COMMIT / "config.json"
    link.parent.mkdir(parents=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
    assert inside(tmp_path, "models--org--x", "snapshots", COMMIT, "config.json") == link


def test_inside_allows_a_volume_reached_through_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "mount").symlink_to(tmp_path / "real")
    assert inside(tmp_path / "mount", "x") == tmp_path / "mount" / "x"


def test_entry_paths_go_through_inside(tmp_path: Path) -> None:
    entry = ModelEntry("m", "org/m", "main", "../../etc", "emotion", [])
    with pytest.raises(VolumePathError):
        entry.snapshot_dir(tmp_path)
    entry = ModelEntry("m", "org/m", "main", COMMIT, "emotion", [])
    assert entry.snapshot_dir(tmp_path) == tmp_path / repo_folder_name("org/m") / "snapshots" / (
        COMMIT
    )
    with pytest.raises(VolumePathError):
        entry.file_path(tmp_path, "../../../outside")


# ---- the manifest: valid JSON of the wrong shape is a ManifestError --------------------------


def _entry_json(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "m",
        "repo_id": "org/m",
        "revision": "main",
        "commit": COMMIT,
        "task": "emotion",
        "files": [{"path": "config.json", "size": 2, "sha256": "0" * 64}],
    }
    data.update(changes)
    return data


def _write(tmp_path: Path, data: Any) -> Path:
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data), encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(
    "data",
    [
        [],  # not an object
        {"version": 2, "models": {}},  # unknown version
        {"models": {}},  # no version
        {"version": 1, "models": []},  # models as a list
        {"version": 1, "models": {"m": "dialogpt-small"}},  # a model as a string
        {"version": 1, "models": {"m": _entry_json(files={"config.json": 2})}},
        {"version": 1, "models": {"m": _entry_json(files=["config.json"])}},
        {"version": 1, "models": {"m": _entry_json(files=[{"path": "c", "size": "2"}])}},
        {"version": 1, "models": {"m": _entry_json(files=[{"path": "c", "sha256": "0"}])}},
        {"version": 1, "models": {"m": _entry_json(files=[{"path": 1, "size": 2, "sha256": ""}])}},
        {"version": 1, "models": {"m": 1}},
        {"version": 1, "models": {"m": _entry_json(commit=None)}},
        {"version": 1, "models": {"m": {k: v for k, v in _entry_json().items() if k != "task"}}},
        {"version": 1, "models": {}, "tasks": ["emotion"]},  # tasks as a list
        {"version": 1, "models": {}, "tasks": {"emotion": "m"}},  # a task's order as a string
        {"version": 1, "models": {}, "tasks": {"emotion": [1]}},
    ],
)
def test_wrong_shape_is_a_manifest_error(tmp_path: Path, data: Any) -> None:
    with pytest.raises(ManifestError):
        Manifest.load(_write(tmp_path, data))


def test_bool_is_not_a_size(tmp_path: Path) -> None:
    files = [{"path": "c", "size": True, "sha256": "0" * 64}]
    with pytest.raises(ManifestError, match=r"files\[0\]\.size: is bool"):
        Manifest.load(_write(tmp_path, {"version": 1, "models": {"m": _entry_json(files=files)}}))


def test_not_json_and_absent(tmp_path: Path) -> None:
    assert Manifest.load(tmp_path) == Manifest()  # absent: an empty volume
    (tmp_path / MANIFEST_NAME).write_text("{", encoding="utf-8")
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.load(tmp_path)
    (tmp_path / MANIFEST_NAME).write_bytes(b"\xff\xfe")
    with pytest.raises(ManifestError):
        Manifest.load(tmp_path)


def test_round_trip_and_mark_verified(tmp_path: Path) -> None:
    manifest = Manifest.load(
        _write(
            tmp_path, {"version": 1, "tasks": {"emotion": ["m"]}, "models": {"m": _entry_json()}}
        )
    )
    assert manifest.models["m"].files == [FileRecord("config.json", 2, "0" * 64)]
    assert manifest.mark_verified(["m", "absent"], when="2030-01-01T00:00:00+00:00") == ["m"]
    manifest.save(tmp_path)
    again = Manifest.load(tmp_path)
    assert again == manifest
    assert again.models["m"].verified_at == "2030-01-01T00:00:00+00:00"
    assert again.preference("emotion") == ["m"]
    assert not list(tmp_path.glob(f".{MANIFEST_NAME}.*"))  # no temp file left


# ---- check_entry(): the one file check -------------------------------------------------------


def _installed(tmp_path: Path, files: dict[str, bytes]) -> ModelEntry:
    """A model installed the fetcher's way: blobs by sha256, relative snapshot links."""
    repo = tmp_path / repo_folder_name("org/m")
    records = []
    for rel, data in files.items():
        sha = hashlib.sha256(data).hexdigest()
        blob = repo / "blobs" / sha
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / COMMIT / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
        records.append(FileRecord(rel, len(data), sha))
    return ModelEntry("m", "org/m", "main", COMMIT, "embedding", records)


def test_check_entry_fast_and_deep(tmp_path: Path) -> None:
    entry = _installed(tmp_path, {"config.json": b"{}", "1_Pooling/config.json": b"{ }"})
    assert check_entry(tmp_path, entry) == []
    assert check_entry(tmp_path, entry, deep=True) == []
    blob = entry.file_path(tmp_path, "config.json").resolve()
    blob.write_bytes(b"[]")  # same size, other content: only the deep check sees it
    assert check_entry(tmp_path, entry) == []
    (problem,) = check_entry(tmp_path, entry, deep=True)
    assert (problem.model, problem.path) == ("m", "config.json")
    assert problem.reason.startswith("sha256 ") and sha256_file(blob) in problem.reason
    blob.write_bytes(b"[1]")
    (problem,) = check_entry(tmp_path, entry)
    assert problem.reason == "size 3 != expected 2"
    blob.unlink()
    (problem,) = check_entry(tmp_path, entry)
    assert problem.detail == "config.json: dangling link (blob missing)"
    entry.file_path(tmp_path, "config.json").unlink()
    assert check_entry(tmp_path, entry)[0].reason == "missing"


def test_check_entry_whole_model_problems(tmp_path: Path) -> None:
    entry = ModelEntry("m", "org/m", "main", COMMIT, "embedding", [])
    (problem,) = check_entry(tmp_path, entry)
    assert problem.path == "" and problem.detail == "the manifest entry lists no files"
    entry.files.append(FileRecord("config.json", 2, "0" * 64))
    (problem,) = check_entry(tmp_path, entry)
    assert "snapshot folder" in problem.detail and str(problem).startswith("m: ")
    entry.commit = "../.."
    assert "leaves the volume" in check_entry(tmp_path, entry)[0].reason


def test_check_entry_refuses_records_leaving_the_volume(tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    entry = _installed(volume, {"config.json": b"{}"})
    (tmp_path / "outside.txt").write_bytes(b"{}")
    entry.files.append(FileRecord("../../../../outside.txt", 2, "0" * 64))
    link = entry.snapshot_dir(volume) / "evil.json"
    link.symlink_to(tmp_path / "outside.txt")
    entry.files.append(FileRecord("evil.json", 2, "0" * 64))
    problems = check_entry(volume, entry)
    assert [p.path for p in problems] == ["../../../../outside.txt", "evil.json"]
    assert all(p.reason.startswith("refused: ") for p in problems)
