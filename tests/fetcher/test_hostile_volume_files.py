"""What sits at the paths of the fetcher's files (the manifest, the previous-generations record,
the write lock, the catalog and its lock file) must be a regular file: a FIFO or a device is
refused at once, naming the file, with no command blocking; and an ONNX artifact that keeps
tensor data in other files is refused by ``verify --deep``, ``export`` and ``import``, naming
the model and the tensor, although its sha256 matches the manifest."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hubless_fetcher.errors import ExitCode
from hubless_fetcher.settings import PACKAGED_CATALOG
from hubless_volume import MANIFEST_NAME, PREVIOUS_NAME, WRITE_LOCK_NAME, Manifest
from tests.fetcher.hostile import (
    COMMIT_1,
    Cli,
    bundle_members,
    entry_json,
    index_json,
    make_cli,
    sha,
    write_tar,
)

pytestmark = pytest.mark.timeout(120)  # a blocked read fails the test instead of hanging

CONFIG = {"config.json": b'{"a": 1}\n'}
ARTIFACT = f"hubless-onnx/{COMMIT_1}/model.onnx"
FIFO = "is a FIFO (named pipe), not a regular file"


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    path = tmp_path / "volume"
    path.mkdir()
    return path


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    path = tmp_path / "catalog" / "catalog.toml"
    path.parent.mkdir()
    path.write_text(PACKAGED_CATALOG.read_text("utf-8"))
    return path


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], volume: Path, catalog: Path) -> Cli:
    return make_cli(capsys, volume, catalog)


def _bundle(path: Path, artifact: bytes | None = None) -> Path:
    """A bundle of model ``m`` (one config file), with ``artifact`` as its ONNX export."""
    entry = entry_json("m", CONFIG)
    blobs = list(CONFIG.values())
    if artifact is not None:
        record = {"kind": "onnx", "path": ARTIFACT, "size": len(artifact), "sha256": sha(artifact)}
        entry["artifacts"] = [record]
        blobs.append(artifact)
    return write_tar(path, bundle_members(index_json(entry), blobs))


# ---- FIFOs and devices ----------------------------------------------------------------------


def test_a_fifo_manifest_fails_every_command_at_once(
    cli: Cli, volume: Path, tmp_path: Path
) -> None:
    bundle = _bundle(tmp_path / "good.tar")
    os.mkfifo(volume / MANIFEST_NAME)
    for command in (
        ("verify",),
        ("verify", "--deep"),
        ("list",),
        ("du",),
        ("gc",),
        ("remove", "m"),
        ("export", str(tmp_path / "out.tar")),
        ("import", str(bundle)),
        ("fetch", "distilbert-sst2"),
    ):
        result = cli(*command)
        result.refused(ExitCode.INVALID_FILE, f"manifest {volume / MANIFEST_NAME}: {FIFO}")
    assert not (tmp_path / "out.tar").exists()


def test_a_manifest_linked_to_dev_zero_is_refused(cli: Cli, volume: Path) -> None:
    (volume / MANIFEST_NAME).symlink_to("/dev/zero")
    cli("verify").refused(ExitCode.INVALID_FILE, "resolves to /dev/zero, outside the volume")


def test_a_fifo_previous_generations_record(cli: Cli, volume: Path, tmp_path: Path) -> None:
    assert cli("import", str(_bundle(tmp_path / "good.tar"))).code == ExitCode.OK
    os.mkfifo(volume / PREVIOUS_NAME)
    result = cli("remove", "m")
    result.refused(ExitCode.INVALID_FILE, f"previous generations {volume / PREVIOUS_NAME}: {FIFO}")
    assert "m" in Manifest.load(volume).models  # refused before anything changed


def test_a_fifo_write_lock_is_refused(cli: Cli, volume: Path, tmp_path: Path) -> None:
    os.mkfifo(volume / WRITE_LOCK_NAME)
    result = cli("import", str(_bundle(tmp_path / "good.tar")))
    result.refused(ExitCode.FAILED, f"{WRITE_LOCK_NAME}: {FIFO}")


def test_a_fifo_catalog_and_lock_file(cli: Cli, catalog: Path) -> None:
    lock = catalog.with_name("catalog.lock.json")
    os.mkfifo(lock)
    cli("fetch", "--locked").refused(ExitCode.INVALID_FILE, f"lock file {lock}: {FIFO}")
    catalog.unlink()
    os.mkfifo(catalog)
    cli("fetch").refused(ExitCode.INVALID_FILE, f"catalog {catalog} is invalid: {FIFO}")


# ---- ONNX external data ---------------------------------------------------------------------


def _onnx(external: bool) -> bytes:
    """A one-node ONNX model; with ``external``, its weight "lives" in ``secret.bin`` (what an
    artifact reading a file outside the volume looks like)."""
    onnx = pytest.importorskip("onnx")
    np = pytest.importorskip("numpy")
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((2, 3), dtype=np.float32), "w")
    if external:
        weight.ClearField("raw_data")
        weight.data_location = TensorProto.EXTERNAL
        entry = weight.external_data.add()
        entry.key, entry.value = "location", "secret.bin"
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in ("x", "y")]
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "main", io[:1], io[1:], [weight]
    )
    return bytes(onnx.helper.make_model(graph).SerializeToString())


TENSOR = "graph 'main' > initializer 'w': keeps its data in another file ('secret.bin')"


def test_import_refuses_a_bundle_whose_artifact_has_external_data(
    cli: Cli, volume: Path, tmp_path: Path
) -> None:
    bundle = _bundle(tmp_path / "evil.tar", _onnx(external=True))
    result = cli("import", str(bundle))
    result.refused(ExitCode.CORRUPT, "nothing imported", f"m: {ARTIFACT}", TENSOR)
    assert Manifest.load(volume).models == {}
    assert not list(volume.glob("models--*/hubless-onnx"))


def test_verify_deep_and_export_refuse_an_installed_artifact_with_external_data(
    cli: Cli, volume: Path, tmp_path: Path
) -> None:
    assert cli("import", str(_bundle(tmp_path / "good.tar", _onnx(external=False)))).code == 0
    assert cli("verify", "--deep").code == ExitCode.OK
    # whoever can write the volume writes the manifest too: the recorded sha256 matches
    evil = _onnx(external=True)
    manifest = json.loads((volume / MANIFEST_NAME).read_text())
    record = manifest["models"]["m"]["artifacts"][0]
    record.update(size=len(evil), sha256=sha(evil))
    (volume / MANIFEST_NAME).write_text(json.dumps(manifest))
    (volume / "models--org--m" / ARTIFACT).write_bytes(evil)

    assert cli("verify").code == ExitCode.OK  # the fast check reads sizes only
    deep = cli("verify", "--deep")
    assert deep.code == ExitCode.CORRUPT
    assert f"{ARTIFACT}: refused: not a self-contained ONNX model: {TENSOR}" in deep.out

    out = tmp_path / "out.tar"
    cli("export", str(out)).refused(ExitCode.CORRUPT, f"m: {ARTIFACT}", TENSOR)
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []
