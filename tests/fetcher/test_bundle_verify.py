"""verify (fast/deep) finds damage, fetch repairs it; export/import carry models offline."""

from __future__ import annotations

import tarfile
from pathlib import Path

from hubless_fakehub.proxy import FaultProxy
from hubless_fetcher.errors import ExitCode
from hubless_volume import Manifest
from tests.fetcher.conftest import Run

NAMES = ("dialogpt-small", "distilbert-sst2", "all-minilm-l6-v2")


def _blob(models_dir: Path, name: str, path: str) -> Path:
    entry = Manifest.load(models_dir).models[name]
    return (entry.snapshot_dir(models_dir) / path).resolve()


def test_verify_names_corrupt_and_missing_files_and_fetch_repairs(
    run: Run, proxy: FaultProxy, models_dir: Path
) -> None:
    assert run("fetch", *NAMES).code == ExitCode.OK
    weights = _blob(models_dir, "dialogpt-small", "model.safetensors")
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF
    weights.write_bytes(bytes(data))  # same size: only a deep check sees it

    assert run("verify").code == ExitCode.OK
    deep = run("verify", "--deep")
    assert deep.code == ExitCode.CORRUPT
    assert "dialogpt-small: CORRUPT" in deep.out and "model.safetensors: sha256" in deep.out
    assert "distilbert-sst2: ok" in deep.out

    _blob(models_dir, "all-minilm-l6-v2", "1_Pooling/config.json").unlink()
    fast = run("verify", "all-minilm-l6-v2", "bart-large")
    assert fast.code == ExitCode.CORRUPT
    assert "1_Pooling/config.json: dangling link" in fast.out
    assert "bart-large: MISSING" in fast.out

    before = len(proxy.file_requests())
    assert run("fetch", *NAMES).code == ExitCode.OK  # the fast check finds the missing file
    repaired = [r.path.rsplit("/", 2)[-2:] for r in proxy.file_requests()[before:]]
    assert repaired == [["1_Pooling", "config.json"]]
    assert run("verify", "--deep").code == ExitCode.CORRUPT  # same-size damage needs --deep
    fixed = run("fetch", "--deep", *NAMES)
    assert fixed.code == ExitCode.OK and "deleting it to fetch it again" in fixed.err
    assert proxy.file_requests()[-1].path.endswith("/model.safetensors")
    assert run("verify", "--deep").code == ExitCode.OK


def test_empty_volume_fails_verify(run: Run) -> None:
    result = run("verify")
    assert result.code == ExitCode.CORRUPT and "no models installed" in result.err


def test_export_then_import_offline_on_another_volume(
    run: Run, proxy: FaultProxy, models_dir: Path, tmp_path: Path
) -> None:
    assert run("fetch", *NAMES).code == ExitCode.OK
    bundle = tmp_path / "models.tar"
    exported = run("export", str(bundle))
    assert exported.code == ExitCode.OK and bundle.is_file()
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
    assert names[0] == "hubless-bundle.json"
    assert all(n.startswith("blobs/") for n in names[1:])

    other = tmp_path / "air-gapped"
    before = len(proxy.log)
    imported = run(
        "import", str(bundle), "--models-dir", str(other), HF_HUB_OFFLINE="1", HF_ENDPOINT="x"
    )
    assert imported.code == ExitCode.OK, imported.err
    assert len(proxy.log) == before
    source, copy = Manifest.load(models_dir), Manifest.load(other)
    assert sorted(copy.models) == sorted(NAMES)
    for name in NAMES:
        assert copy.models[name].commit == source.models[name].commit
        assert copy.models[name].files == source.models[name].files
    assert copy.tasks["conversation"] == ["dialogpt-small"]
    assert run("verify", "--deep", "--models-dir", str(other)).code == ExitCode.OK
    offline_fetch = run("fetch", *NAMES, "--models-dir", str(other), HF_HUB_OFFLINE="1")
    assert offline_fetch.code == ExitCode.OK


def test_corrupt_bundle_imports_nothing(run: Run, models_dir: Path, tmp_path: Path) -> None:
    assert run("fetch", "dialogpt-small").code == ExitCode.OK
    bundle = tmp_path / "one.tar"
    assert run("export", str(bundle), "dialogpt-small").code == ExitCode.OK
    with tarfile.open(bundle) as tar:
        member = max(tar.getmembers(), key=lambda m: m.size)
        offset = member.offset_data + 10
    raw = bytearray(bundle.read_bytes())
    raw[offset] ^= 0xFF
    bundle.write_bytes(bytes(raw))

    other = tmp_path / "target"
    result = run("import", str(bundle), "--models-dir", str(other))
    assert result.code == ExitCode.CORRUPT
    assert "dialogpt-small: model.safetensors is corrupt" in result.err
    assert Manifest.load(other).models == {}
    assert not list((other / ".staging").glob("*"))

    not_a_bundle = tmp_path / "junk.tar"
    not_a_bundle.write_bytes(b"junk" * 100)
    assert run("import", str(not_a_bundle)).code == ExitCode.CORRUPT
    assert run("import", str(tmp_path / "absent.tar")).code == ExitCode.USAGE


def test_export_refuses_a_corrupt_volume(run: Run, models_dir: Path, tmp_path: Path) -> None:
    assert run("fetch", "dialogpt-small").code == ExitCode.OK
    weights = _blob(models_dir, "dialogpt-small", "model.safetensors")
    data = bytearray(weights.read_bytes())
    data[0] ^= 0xFF
    weights.write_bytes(bytes(data))
    bundle = tmp_path / "bad.tar"
    result = run("export", str(bundle))
    assert result.code == ExitCode.CORRUPT and "corrupt" in result.err
    assert not bundle.exists() and not list(tmp_path.glob(".bad.tar.*"))
    assert run("export", str(bundle), "bart-large").code == ExitCode.USAGE
