"""What the fetcher does with hubless-optimize's artifacts: verify checks them, export/import
carry them, a repair of the same commit keeps them, a new commit or a removal drops them and
pruning deletes their files."""

from __future__ import annotations

from pathlib import Path

from hubless_fakehub.tiny import TinyModel
from hubless_fetcher.errors import ExitCode
from hubless_fetcher.retention import KeepPrevious
from hubless_fetcher.volume import prune_unreferenced, remove_model
from hubless_volume import (
    ArtifactRecord,
    Manifest,
    ModelEntry,
    artifact_folder,
    inside,
    repo_folder_name,
    sha256_file,
)
from tests.fetcher.conftest import Run
from tests.support.volume import install_dir, make_volume

NAME = "distilbert-sst2"
ONNX = b"\x08\x08\x3a\x06\x12\x04main"  # the smallest ONNX model: ir_version, a graph


def add_artifact(models_dir: Path, name: str, data: bytes = ONNX) -> Path:
    """Do what hubless-optimize does after a passed parity check, with fake bytes."""
    manifest = Manifest.load(models_dir)
    entry = manifest.models[name]
    rel = f"{artifact_folder('onnx', entry.commit)}/model.onnx"
    path = inside(models_dir, repo_folder_name(entry.repo_id), rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    entry.artifacts = [
        ArtifactRecord("onnx", rel, len(data), sha256_file(path), parity={"probes": 32})
    ]
    manifest.save(models_dir)
    return path


def _entry(models_dir: Path, name: str = NAME) -> ModelEntry:
    return Manifest.load(models_dir).models[name]


def test_same_commit_keeps_the_artifact_a_new_commit_drops_and_prunes_it(
    tmp_path: Path, tiny_models: dict[str, TinyModel]
) -> None:
    volume = make_volume(tmp_path / "v", [tiny_models[NAME]])
    artifact = add_artifact(volume, NAME)
    model = tiny_models[NAME]
    install_dir(volume, model.path, name=NAME, repo_id=model.repo_id, task=model.task)
    assert _entry(volume).artifacts and artifact.exists()  # a repair of the same files
    assert prune_unreferenced(volume, Manifest.load(volume)) == []

    other = tmp_path / "other"  # the same model at "another commit": other files
    other.mkdir()
    for path in model.path.rglob("*"):
        if path.is_file():
            target = other / path.relative_to(model.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    (other / "config.json").write_text((other / "config.json").read_text() + "\n")
    old = _entry(volume)
    new = install_dir(volume, other, name=NAME, repo_id=model.repo_id, task=model.task)
    assert new.commit != old.commit and new.artifacts == []
    pruned = prune_unreferenced(
        volume, Manifest.load(volume), [model.repo_id], keep=KeepPrevious(0)
    )
    assert artifact.parent in pruned and not artifact.parent.exists()


def test_previous_generation_keeps_its_artifact_until_it_goes(
    tmp_path: Path, tiny_models: dict[str, TinyModel]
) -> None:
    volume = make_volume(tmp_path / "v", [tiny_models[NAME]])
    artifact = add_artifact(volume, NAME)
    remove_model(volume, NAME)  # default retention: kept as the previous generation
    assert artifact.exists()
    remove_model_gone = prune_unreferenced(volume, Manifest.load(volume), keep=KeepPrevious(0))
    assert not artifact.exists() and remove_model_gone


def test_prune_deletes_stray_files_beside_a_recorded_artifact(
    tmp_path: Path, tiny_models: dict[str, TinyModel]
) -> None:
    volume = make_volume(tmp_path / "v", [tiny_models[NAME]])
    artifact = add_artifact(volume, NAME)
    stray = artifact.with_name(".model.onnx.123.tmp")
    stray.write_bytes(b"half")
    stale = artifact.parent.parent / ("0" * 40) / "model.onnx"
    stale.parent.mkdir()
    stale.write_bytes(b"old")
    pruned = prune_unreferenced(volume, Manifest.load(volume))
    assert set(pruned) == {stray, stale.parent}
    assert artifact.exists()


def test_verify_checks_artifacts_and_export_import_carry_them(
    run: Run, models_dir: Path, tmp_path: Path, tiny_models: dict[str, TinyModel]
) -> None:
    make_volume(models_dir, [tiny_models[NAME]])
    artifact = add_artifact(models_dir, NAME)
    assert run("verify", "--deep").code == ExitCode.OK
    artifact.write_bytes(ONNX.replace(b"main", b"maim"))  # a flipped byte
    deep = run("verify", "--deep")
    assert deep.code == ExitCode.CORRUPT and "model.onnx: sha256" in deep.out
    artifact.write_bytes(ONNX)

    bundle = tmp_path / "b.tar"
    assert run("export", str(bundle)).code == ExitCode.OK
    other = tmp_path / "other"
    assert run("import", str(bundle), HUBLESS_MODELS_DIR=str(other)).code == ExitCode.OK
    imported = _entry(other)
    assert imported.artifacts == _entry(models_dir).artifacts
    placed = imported.artifact_path(other, imported.artifacts[0])
    assert placed.read_bytes() == ONNX and not placed.is_symlink()
    assert run("verify", "--deep", HUBLESS_MODELS_DIR=str(other)).code == ExitCode.OK

    artifact.unlink()
    fast = run("verify")
    assert fast.code == ExitCode.CORRUPT and "model.onnx: missing" in fast.out
    assert run("export", str(tmp_path / "c.tar")).code == ExitCode.CORRUPT
