"""The volume format's golden outputs and signature fields: the golden-outputs file (strict
load, atomic save, :func:`load_golden`'s checks), the manifest entry's ``golden`` and
``signature``, ``check_entry`` on them, pruning, that ``import hubless_volume`` stays
standard-library only while signing needs its extra, and that a golden or signature file, or
a snapshot entry the signing library would hash, that is a FIFO, a link or too big is refused
without blocking."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hubless_fakehub.tiny import TinyModel
from hubless_fetcher.retention import KeepPrevious
from hubless_fetcher.volume import prune_unreferenced
from hubless_volume import (
    Golden,
    GoldenError,
    GoldenProbe,
    GoldenRecord,
    Manifest,
    ModelEntry,
    SchemaError,
    SignatureError,
    SigningUnavailableError,
    VolumePathError,
    check_entry,
    load_golden,
    save_golden,
    sign_model,
    signature_relpath,
    verify_model,
)
from tests.fetcher.test_signing import Keys, make_keys
from tests.support.blocking import soon
from tests.support.volume import install_dir, make_volume

COMMIT = "a" * 40
NAME = "distilbert-sst2"
GoldenVolume = tuple[Path, Path, ModelEntry]  # the volume, the golden-outputs file, the entry
SignedVolume = tuple[Path, ModelEntry, Keys]  # the volume, the entry, the key pair


def _golden(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "version": 1,
        "model": "m",
        "commit": COMMIT,
        "task": "sentiment",
        "probes": [{"text": "good", "labels": ["NEG", "POS"], "scores": [0.25, 0.75]}],
    }
    data.update(extra)
    return data


def _entry(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "m",
        "repo_id": "org/m",
        "revision": "main",
        "commit": COMMIT,
        "task": "sentiment",
        "files": [{"path": "config.json", "size": 2, "sha256": "b" * 64}],
    }
    data.update(extra)
    return data


def test_golden_round_trips_for_every_task() -> None:
    cases = {
        "embedding": {"embedding": [0.5, -0.25, 1e-3]},
        "emotion": {"labels": ["joy", "anger"], "scores": [0.9, 0.1]},
        "zero-shot": {"labels": ["sports", "politics"], "scores": [0.3, 0.7]},
        "summarization": {"tokens": [0, 133, 2]},
        "conversation": {"tokens": [40, 1101]},
    }
    for task, outputs in cases.items():
        extra = (
            {"hypothesis_template": "About {}.", "multi_label": True} if task == "zero-shot" else {}
        )
        data = _golden(task=task, probes=[{"text": "hi", **outputs}], **extra)
        golden = Golden.from_json(data)
        assert golden.task == task
        assert Golden.from_json(json.loads(json.dumps(golden.to_json()))) == golden


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (_golden(version=2), "version"),
        (_golden(extra=1), "unknown keys: extra"),
        (_golden(task="sentiment", probes=[{"text": "x", "tokens": [1]}]), "probes[0]"),
        (_golden(probes=[{"text": "x", "labels": ["a"], "scores": [1.5]}]), "outside [0, 1]"),
        (_golden(probes=[{"text": "x", "labels": ["a", "a"], "scores": [0.5, 0.5]}]), "twice"),
        (_golden(probes=[{"text": "x", "labels": ["a", "b"], "scores": [1.0]}]), "1 scores"),
        (_golden(probes=[]), "1 to 64 probes"),
        (_golden(probes=[{"text": "", "labels": ["a"], "scores": [1.0]}]), "text"),
        (_golden(task="embedding", probes=[{"text": "x", "embedding": [math.nan]}]), "finite"),
        (_golden(task="embedding", probes=[{"text": "x", "embedding": [True]}]), "not a number"),
        (
            _golden(
                task="embedding",
                probes=[{"text": "a", "embedding": [1.0]}, {"text": "b", "embedding": [1.0, 2.0]}],
            ),
            "different lengths",
        ),
        (_golden(task="summarization", probes=[{"text": "x", "tokens": [-1]}]), "negative"),
        (_golden(multi_label=True), "is for zero-shot"),
        (_golden(commit="HEAD"), "commit"),
    ],
)
def test_golden_load_is_strict(data: dict[str, Any], field: str) -> None:
    with pytest.raises(GoldenError, match=None) as caught:
        Golden.from_json(data)
    assert field in str(caught.value)


def test_golden_record_in_the_manifest_entry() -> None:
    record = {"path": f"hubless-golden/{COMMIT}/golden.json", "size": 10, "sha256": "c" * 64}
    entry = ModelEntry.from_json(_entry(golden=record))
    assert entry.golden == GoldenRecord(**record)
    assert ModelEntry.from_json(json.loads(json.dumps(entry.to_json()))) == entry
    for bad in (
        {**record, "path": f"hubless-golden/{'d' * 40}/golden.json"},  # another commit
        {**record, "path": "golden.json"},
        {**record, "sha256": "x"},
    ):
        with pytest.raises(SchemaError, match="golden"):
            ModelEntry.from_json(_entry(golden=bad))
    with pytest.raises(SchemaError, match="golden"):
        ModelEntry.from_json(_entry(golden=None))


def test_signature_field_is_the_one_path_of_its_commit() -> None:
    assert "signature" not in ModelEntry.from_json(_entry()).to_json()
    good = f"models--org--m/hubless-signatures/{COMMIT}/model.sig"
    assert signature_relpath("org/m", COMMIT) == good
    assert ModelEntry.from_json(_entry(signature=good)).signature == good
    for bad in (
        f"models--org--other/hubless-signatures/{COMMIT}/model.sig",
        f"models--org--m/hubless-signatures/{'d' * 40}/model.sig",
        "../../etc/passwd",
        7,
    ):
        with pytest.raises(SchemaError, match="signature"):
            ModelEntry.from_json(_entry(signature=bad))


def _add_golden(models_dir: Path, name: str = NAME) -> Path:
    manifest = Manifest.load(models_dir)
    entry = manifest.models[name]
    probe = GoldenProbe("good", labels=["NEGATIVE", "POSITIVE"], scores=[0.2, 0.8])
    entry.golden = save_golden(models_dir, entry, Golden(name, entry.commit, entry.task, [probe]))
    manifest.save(models_dir)
    return entry.golden_path(models_dir)


def test_save_and_load_golden_on_a_volume(
    tmp_path: Path, tiny_models: dict[str, TinyModel]
) -> None:
    volume = make_volume(tmp_path / "v", [tiny_models[NAME]])
    assert load_golden(volume, Manifest.load(volume).models[NAME]) is None
    path = _add_golden(volume)
    entry = Manifest.load(volume).models[NAME]
    assert path.name == "golden.json" and path.parent.name == entry.commit
    golden = load_golden(volume, entry)
    assert golden is not None and golden.probes[0].scores == [0.2, 0.8]
    assert check_entry(volume, entry, deep=True, artifacts=True) == []

    path.write_text(path.read_text().replace("0.8", "0.9"))  # same size, other content
    with pytest.raises(GoldenError, match="differs from its manifest record"):
        load_golden(volume, entry)
    deep = check_entry(volume, entry, deep=True, artifacts=True)
    assert [p.path for p in deep] == [entry.golden.path] and "sha256" in deep[0].reason
    path.unlink()
    assert "missing" in check_entry(volume, entry, artifacts=True)[0].reason
    with pytest.raises(GoldenError, match="missing"):
        load_golden(volume, entry)

    wrong = Golden(
        "other", entry.commit, entry.task, [GoldenProbe("x", labels=["a"], scores=[1.0])]
    )
    with pytest.raises(GoldenError, match="model"):
        save_golden(volume, entry, wrong)


def test_a_new_commit_drops_golden_and_signature_and_pruning_deletes_them(
    tmp_path: Path, tiny_models: dict[str, TinyModel]
) -> None:
    model = tiny_models[NAME]
    volume = make_volume(tmp_path / "v", [model])
    golden = _add_golden(volume)
    manifest = Manifest.load(volume)
    entry = manifest.models[NAME]
    entry.signature = signature_relpath(entry.repo_id, entry.commit)
    folder = entry.signature_dir(volume)
    folder.mkdir(parents=True)
    for name in ("model.sig", "hubless.json", "hubless.json.sig", ".stray.tmp"):
        (folder / name).write_text("{}")
    manifest.save(volume)
    pruned = prune_unreferenced(volume, Manifest.load(volume))
    assert pruned == [folder / ".stray.tmp"] and golden.exists()

    install_dir(volume, model.path, name=NAME, repo_id=model.repo_id, task=model.task)
    kept = Manifest.load(volume).models[NAME]  # a repair of the same files keeps them
    assert kept.golden == entry.golden and kept.signature == entry.signature

    other = tmp_path / "other"
    for path in model.path.rglob("*"):
        if path.is_file():
            target = other / path.relative_to(model.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    (other / "config.json").write_text((other / "config.json").read_text() + "\n")
    moved = install_dir(volume, other, name=NAME, repo_id=model.repo_id, task=model.task)
    assert moved.golden is None and moved.signature == ""
    prune_unreferenced(volume, Manifest.load(volume), keep=KeepPrevious(0))
    assert not golden.exists() and not folder.exists()


def test_import_hubless_volume_stays_standard_library_only() -> None:
    code = (
        "import sys, hubless_volume; "
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('model_signing', 'cryptography', 'OpenSSL', 'sigstore')]; "
        "print(heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_without_the_extra_signing_says_what_to_install(
    tmp_path: Path, tiny_models: dict[str, TinyModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    volume = make_volume(tmp_path / "v", [tiny_models[NAME]])
    entry = Manifest.load(volume).models[NAME]
    monkeypatch.setitem(sys.modules, "model_signing", None)  # import fails
    with pytest.raises(SigningUnavailableError, match=r"hubless-volume\[signing\]"):
        verify_model(volume, entry, tmp_path / "key.pub")


# ---- what sits at the golden and signature files' paths ------------------------------------


@pytest.fixture
def with_golden(tmp_path: Path, tiny_models: dict[str, TinyModel]) -> GoldenVolume:
    """A volume holding one model with golden outputs: the volume, the file, the entry."""
    volume = make_volume(tmp_path / "v", [tiny_models[NAME]])
    path = _add_golden(volume)
    return volume, path, Manifest.load(volume).models[NAME]


def test_a_golden_file_that_is_a_fifo_is_refused_without_blocking(
    with_golden: GoldenVolume,
) -> None:
    volume, path, entry = with_golden
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(GoldenError, match=r"is a FIFO \(named pipe\), not a regular file"):
        soon(lambda: load_golden(volume, entry))
    with pytest.raises(GoldenError, match="is a FIFO"):
        soon(lambda: Golden.load(path))
    for deep in (False, True):
        (problem,) = soon(lambda d=deep: check_entry(volume, entry, deep=d, artifacts=True))
        assert entry.golden is not None and problem.path == entry.golden.path
        assert problem.reason == "is a FIFO (named pipe), not a regular file"


def test_a_golden_file_that_is_a_link_is_refused(tmp_path: Path, with_golden: GoldenVolume) -> None:
    volume, path, entry = with_golden
    outside = tmp_path / "golden.json"  # the very bytes the manifest records, off the volume
    path.rename(outside)
    path.symlink_to(outside)
    with pytest.raises(VolumePathError, match="outside the volume"):
        load_golden(volume, entry)
    with pytest.raises(GoldenError, match="outside the volume"):
        Golden.load(path, models_dir=volume)
    assert Golden.load(path).model == NAME  # a file named by an operator may be a link
    (problem,) = check_entry(volume, entry, artifacts=True)
    assert problem.reason.startswith("refused: ") and "outside the volume" in problem.reason

    path.unlink()  # a link inside the volume, to a copy: still not a file of its own
    shutil.copyfile(outside, path.with_name("copy.json"))
    path.symlink_to("copy.json")
    with pytest.raises(GoldenError, match="is a link, not a file"):
        load_golden(volume, entry)
    (problem,) = check_entry(volume, entry, artifacts=True)
    assert problem.reason == "is a link, not a file"


def test_a_golden_file_over_its_cap_is_refused_from_its_size(
    tmp_path: Path, with_golden: GoldenVolume
) -> None:
    volume, path, entry = with_golden
    with open(path, "r+b") as fh:
        fh.truncate(33 << 20)  # sparse: nothing is written, and nothing must be read
    with pytest.raises(GoldenError, match=f"more than the {32 << 20} bytes allowed"):
        load_golden(volume, entry)

    probes = [GoldenProbe("x" * 2000, embedding=[-1.2345678314585239e-05] * 8192)] * 64
    largest = Golden(NAME, entry.commit, "embedding", probes)  # every probe at its limits
    largest.save(tmp_path / "largest.json")
    assert Golden.load(tmp_path / "largest.json") == largest
    tool = {f"tool{i}": "v" * 100 for i in range(200_000)}  # the format caps no key count
    huge = Golden(NAME, entry.commit, "embedding", probes, tool=tool)
    with pytest.raises(GoldenError, match="more than the"):
        huge.save(tmp_path / "huge.json")
    assert not (tmp_path / "huge.json").exists()


@pytest.fixture
def signed(tmp_path: Path, with_golden: GoldenVolume) -> SignedVolume:
    """That volume with its model signed (and verifying): the volume, the entry, the keys."""
    volume, _, _ = with_golden
    keys = make_keys(tmp_path / "keys")
    manifest = Manifest.load(volume)
    entry = manifest.models[NAME]
    sign_model(volume, entry, keys.private)
    entry.signature = signature_relpath(entry.repo_id, entry.commit)
    manifest.save(volume)
    verify_model(volume, entry, keys.public)
    return volume, entry, keys


@pytest.mark.parametrize("name", ["model.sig", "hubless.json", "hubless.json.sig"])
def test_a_signature_file_that_is_a_fifo_is_refused_without_blocking(
    signed: SignedVolume, name: str
) -> None:
    volume, entry, keys = signed
    path = entry.signature_dir(volume) / name
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(SignatureError, match=f"{name}: is a FIFO"):
        soon(lambda: verify_model(volume, entry, keys.public))
    (problem,) = soon(lambda: check_entry(volume, entry, artifacts=True))
    assert problem.path.endswith(f"/{name}") and "is a FIFO" in problem.reason


def test_a_signature_file_that_is_a_link_is_refused(tmp_path: Path, signed: SignedVolume) -> None:
    volume, entry, keys = signed
    statement = entry.signature_dir(volume) / "hubless.json"
    outside = tmp_path / "hubless.json"
    statement.rename(outside)
    statement.symlink_to(outside)  # the signed bytes, off the volume
    with pytest.raises(SignatureError, match=r"hubless\.json: is a link, not a file"):
        verify_model(volume, entry, keys.public)
    (problem,) = check_entry(volume, entry, artifacts=True)
    assert problem.reason == "is a link, not a file"


def test_a_golden_file_that_is_a_fifo_fails_the_signature_without_blocking(
    signed: SignedVolume,
) -> None:
    volume, entry, keys = signed
    path = entry.golden_path(volume)
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(SignatureError, match=r"golden\.json: is a FIFO"):
        soon(lambda: verify_model(volume, entry, keys.public))
    with pytest.raises(SignatureError, match=r"golden\.json: is a FIFO"):
        soon(lambda: sign_model(volume, entry, keys.private))


def test_a_fifo_in_the_snapshot_is_refused_before_the_signing_library_hashes_it(
    tmp_path: Path, signed: SignedVolume
) -> None:
    volume, entry, keys = signed
    fifo = entry.snapshot_dir(volume) / "extra.bin"
    os.mkfifo(fifo)
    with pytest.raises(SignatureError, match=r"extra\.bin: is a FIFO") as failed:
        soon(lambda: verify_model(volume, entry, keys.public))
    assert failed.value.content_changed  # not what was signed: sign does not sign it again
    with pytest.raises(SignatureError, match=r"extra\.bin: is a FIFO"):
        soon(lambda: sign_model(volume, entry, keys.private))

    fifo.unlink()
    outside = tmp_path / "outside.txt"
    outside.write_text("not the volume's")
    (entry.snapshot_dir(volume) / "extra.txt").symlink_to(outside)
    with pytest.raises(SignatureError, match=r"extra\.txt: resolves to .*outside the volume"):
        verify_model(volume, entry, keys.public)
    with pytest.raises(SignatureError, match="outside the volume"):
        sign_model(volume, entry, keys.private)
