"""The manifest's optional ``artifacts`` / ``optimize_error`` fields (hubless-optimize), their
checks, and the volume write lock that now lives in hubless_volume."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest

from hubless_volume import (
    ArtifactRecord,
    FileRecord,
    Manifest,
    ModelEntry,
    SchemaError,
    VolumeWriteLock,
    check_artifacts,
    check_entry,
    repo_folder_name,
    sha256_file,
)

COMMIT = "a" * 40
SHA = "b" * 64
ONNX = b"\x08\x08\x3a\x06\x12\x04main"  # ir_version 8, graph {name: "main"}: 10 bytes


def _entry(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "m",
        "repo_id": "org/m",
        "revision": "main",
        "commit": COMMIT,
        "task": "embedding",
        "files": [{"path": "config.json", "size": 2, "sha256": SHA}],
    }
    data.update(extra)
    return data


def _artifact(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "kind": "onnx",
        "path": f"hubless-onnx/{COMMIT}/model.onnx",
        "size": 10,
        "sha256": "c" * 64,
        "optimized": False,
        "created_at": "2026-11-30T18:00:00+00:00",
        "parity": {"probes": 32, "min_cosine": 0.99999994},
        "tool": {"torch": "2.13.0+cpu", "onnxruntime": "1.31.0"},
    }
    data.update(extra)
    return data


def test_entry_without_artifacts_writes_what_it_always_wrote() -> None:
    entry = ModelEntry.from_json(_entry())
    assert entry.artifacts == [] and entry.optimize_error == ""
    assert set(entry.to_json()) == {
        "name",
        "repo_id",
        "revision",
        "commit",
        "task",
        "files",
        "installed_at",
        "verified_at",
    }


def test_artifacts_round_trip() -> None:
    entry = ModelEntry.from_json(_entry(artifacts=[_artifact()]))
    (artifact,) = entry.artifacts
    assert artifact == entry.artifact("onnx")
    assert artifact.parity["min_cosine"] == 0.99999994
    again = ModelEntry.from_json(json.loads(json.dumps(entry.to_json())))
    assert again == entry
    failed = ModelEntry.from_json(_entry(optimize_error="parity check failed: x"))
    assert failed.to_json()["optimize_error"] == "parity check failed: x"


@pytest.mark.parametrize(
    ("artifact", "field"),
    [
        (_artifact(path="../../x.onnx"), "path"),
        (_artifact(path="/etc/passwd"), "path"),
        (_artifact(path=f"hubless-onnx/{'d' * 40}/model.onnx"), "path"),  # another commit
        (_artifact(path=f"hubless-onnx/{COMMIT}/sub/model.onnx"), "path"),
        (_artifact(path=f"snapshots/{COMMIT}/model.onnx"), "path"),
        (_artifact(kind="tensorrt", path=f"hubless-tensorrt/{COMMIT}/m"), "kind"),
        (_artifact(size=-1), "size"),
        (_artifact(sha256="x"), "sha256"),
        (_artifact(optimized="yes"), "optimized"),
        (_artifact(parity={"min_cosine": "1"}), "parity"),
        (_artifact(parity={"BAD KEY": 1.0}), "parity"),
        (_artifact(tool={"torch": 2}), "tool"),
        (_artifact(created_at="yesterday"), "created_at"),
        (_artifact(extra=1), "artifacts[0]"),
    ],
)
def test_hostile_artifacts_are_refused(artifact: dict[str, Any], field: str) -> None:
    with pytest.raises(SchemaError) as info:
        ModelEntry.from_json(_entry(artifacts=[artifact]), "manifest x", "models['m']")
    assert field in info.value.field


def test_an_artifact_kind_twice_and_a_long_error_are_refused() -> None:
    with pytest.raises(SchemaError, match="listed twice"):
        ModelEntry.from_json(_entry(artifacts=[_artifact(), _artifact()]))
    with pytest.raises(SchemaError, match="longer than"):
        ModelEntry.from_json(_entry(optimize_error="x" * 1001))


def test_the_server_refuses_only_the_entry_with_a_hostile_artifact(tmp_path: Path) -> None:
    data = {
        "version": 1,
        "models": {
            "m": _entry(artifacts=[_artifact(path="../../../etc/passwd")]),
            "n": _entry(name="n"),
        },
    }
    (tmp_path / "hubless-manifest.json").write_text(json.dumps(data))
    manifest = Manifest.load(tmp_path, skip_invalid=True)
    assert list(manifest.models) == ["n"]
    assert manifest.rejected[0].key == "m"


def test_check_artifacts(tmp_path: Path) -> None:
    blob = tmp_path / "models--org--m" / "blobs" / SHA
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"{}")
    link = tmp_path / "models--org--m" / "snapshots" / COMMIT / "config.json"
    link.parent.mkdir(parents=True)
    link.symlink_to(blob)
    onnx = tmp_path / repo_folder_name("org/m") / "hubless-onnx" / COMMIT / "model.onnx"
    onnx.parent.mkdir(parents=True)
    onnx.write_bytes(ONNX)
    record = ArtifactRecord(
        "onnx", f"hubless-onnx/{COMMIT}/model.onnx", 10, sha256_file(onnx), created_at=""
    )
    entry = ModelEntry(
        "m", "org/m", "main", COMMIT, "embedding", [FileRecord("config.json", 2, SHA)]
    )
    entry.artifacts = [record]
    assert check_artifacts(tmp_path, entry, deep=True) == []
    onnx.write_bytes(ONNX.replace(b"main", b"maim"))  # a flipped byte: same size
    assert check_artifacts(tmp_path, entry) == []
    (problem,) = check_artifacts(tmp_path, entry, deep=True)
    assert problem.path == record.path and "sha256" in problem.reason
    # the model's own check leaves artifacts out unless asked (a bad artifact is no bad model)
    assert [p.path for p in check_entry(tmp_path, entry, deep=True)] == ["config.json"]
    deep = check_entry(tmp_path, entry, deep=True, artifacts=True)
    assert [p.path for p in deep] == ["config.json", record.path]
    # the recorded bytes, but not a self-contained ONNX model: refused by the deep check only
    onnx.write_bytes(b"0123456789")
    record = ArtifactRecord(record.kind, record.path, 10, sha256_file(onnx), created_at="")
    entry.artifacts = [record]
    assert check_artifacts(tmp_path, entry) == []
    (problem,) = check_artifacts(tmp_path, entry, deep=True)
    assert problem.reason.startswith("refused: not a self-contained ONNX model: cannot be read")
    onnx.unlink()
    assert check_artifacts(tmp_path, entry)[0].reason == "missing"


def _hold(models_dir: str, seconds: float, started: Any) -> None:
    with VolumeWriteLock(Path(models_dir)):
        started.set()
        time.sleep(seconds)


def test_write_lock_excludes_other_processes_and_is_reentrant(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    started = ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path), 1.5, started))
    holder.start()
    try:
        assert started.wait(60)
        begun = time.monotonic()
        with VolumeWriteLock(tmp_path), VolumeWriteLock(tmp_path):  # re-entrant in a thread
            waited = time.monotonic() - begun
        assert waited > 0.5
    finally:
        holder.join(30)
    assert (tmp_path / ".hubless.lock").exists()
