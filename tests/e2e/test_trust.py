"""fetch -> hubless-optimize -> hubless-fetch sign -> hubless-serve --trusted-key, as processes.

Two tiny sentiment models from the local mirror. Signed and with golden outputs, both serve
under ``--trusted-key``; twitter-roberta-sentiment's config changed (its labels swapped) and
re-hashed in the manifest is refused by the signature while distilbert-sst2 serves; on a copy
of the volume with no key, distilbert-sst2's classifier weights changed and re-hashed are
refused by the golden self-test while the other model serves (issue 19's "done when").
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from hubless_client import Client, ModelInfo, ModelState
from hubless_volume import FileRecord, Manifest
from tests.e2e import procs
from tests.fetcher.test_signing import make_keys

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLASSIFIER = "distilbert-sst2"
TAMPERED = "twitter-roberta-sentiment"
SERVE = ["--tasks", "sentiment"]
WAIT = ["", procs.TASK_SERVICES["sentiment"]]


@dataclass
class Signed:
    volume: Path
    root: Path
    public: Path
    optimized: str


@pytest.fixture(scope="module")
def signed(fetch_volume: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Signed:
    volume = fetch_volume(CLASSIFIER, TAMPERED)
    root = tmp_path_factory.mktemp("e2e-trust")
    env = procs.child_env(root / "hf-home", HUBLESS_THREADS="1")
    optimize = [procs.console_script("hubless-optimize"), "--models-dir", str(volume)]
    optimized = procs.run_cli([*optimize, "--no-onnx"], env, timeout=600)
    keys = make_keys(root / "keys")
    sign = [procs.console_script("hubless-fetch"), "sign", "--key", str(keys.private)]
    procs.run_cli([*sign, "--models-dir", str(volume)], env, timeout=600)
    return Signed(volume, root, keys.public, optimized)


def rewrite_and_rehash(volume: Path, name: str, path: str, content: bytes) -> None:
    """Change a model's file and its record in the manifest (every hash check passes)."""
    manifest = Manifest.load(volume)
    entry = manifest.models[name]
    entry.file_path(volume, path).resolve().write_bytes(content)
    record = FileRecord(path, len(content), hashlib.sha256(content).hexdigest())
    entry.files = [record if f.path == path else f for f in entry.files]
    manifest.save(volume)


@dataclass
class Seen:
    infos: dict[str, ModelInfo]
    log: str


def listed(volume: Path, workdir: Path, *args: str) -> Seen:
    """What a server on ``volume`` lists of the two models (the task serves meanwhile)."""
    with procs.running_server(volume, workdir, extra_args=[*SERVE, *args], wait_for=WAIT) as server:
        client: Client = server.client(timeout=60)
        infos = {m.name: m for m in client.list_models() if m.name in (CLASSIFIER, TAMPERED)}
        assert len(client.analyze_sentiment(["great phone"])) == 1
        return Seen(infos, server.log_tail(400))


def test_signed_goldens_serve_and_each_tampering_is_refused(signed: Signed, tmp_path: Path) -> None:
    assert signed.optimized.count(" written ") == 2, signed.optimized
    untouched = tmp_path / "copy"
    shutil.copytree(signed.volume, untouched, symlinks=True)
    key = ("--trusted-key", str(signed.public))

    seen = listed(signed.volume, tmp_path / "s1", *key)
    assert {(i.state, i.error) for i in seen.infos.values()} == {(ModelState.READY, "")}
    assert seen.log.count("signature verified (--trusted-key)") == 2
    assert seen.log.count("golden self-test passed (PyTorch float32") == 2

    entry = Manifest.load(signed.volume).models[TAMPERED]
    config = entry.file_path(signed.volume, "config.json").read_bytes()
    swapped = config.replace(b'"negative"', b'"@"').replace(b'"positive"', b'"negative"')
    rewrite_and_rehash(
        signed.volume, TAMPERED, "config.json", swapped.replace(b'"@"', b'"positive"')
    )
    infos = listed(signed.volume, tmp_path / "s2", *key).infos
    assert infos[TAMPERED].state is ModelState.FAILED
    assert infos[TAMPERED].error.startswith("refused: signature check failed: the snapshot")
    assert "config.json differs from the signed file (--trusted-key)" in infos[TAMPERED].error
    assert infos[CLASSIFIER].state is ModelState.READY and infos[CLASSIFIER].is_default

    from safetensors.torch import load_file, save_file

    weights = Manifest.load(untouched).models[CLASSIFIER].file_path(untouched, "model.safetensors")
    tensors = load_file(str(weights.resolve()))
    tensors["classifier.bias"][0] += 4.0
    changed = tmp_path / "changed.safetensors"
    save_file(tensors, str(changed), metadata={"format": "pt"})
    rewrite_and_rehash(untouched, CLASSIFIER, "model.safetensors", changed.read_bytes())
    infos = listed(untouched, tmp_path / "s3").infos  # no key: the goldens catch it
    assert infos[CLASSIFIER].state is ModelState.FAILED
    assert infos[CLASSIFIER].error.startswith("refused: golden self-test: ")
    assert "max |delta p|" in infos[CLASSIFIER].error
    assert infos[TAMPERED].state is ModelState.READY
