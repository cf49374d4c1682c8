"""fetch -> hubless-optimize -> read-only server on ONNX Runtime, end to end.

The real all-MiniLM-L6-v2 (parity on a real model, vectors against in-process
sentence-transformers) and two tiny stand-ins (a classifier and the NLI zero-shot model) are
fetched from the local mirror; two optimizers start at once on the volume (one works, the
other waits for the write lock and finds everything current); the server, on the volume made
read-only, serves all three with backend onnx. A flipped byte in an artifact makes that model
serve with PyTorch, and ListModels says so; so does an artifact whose tensor keeps its data
in another file (external data), whatever its recorded sha256.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hubless_client import Client, ModelState
from hubless_fakehub import HubMirror
from hubless_fakehub.real_models import REAL_MINILM_NAME, REAL_MINILM_REPO_ID, real_minilm_dir
from hubless_fakehub.tiny import TinyModel
from hubless_volume import Manifest
from tests.conftest import tiny_repos
from tests.e2e import procs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLASSIFIER = "distilbert-sst2"
ZERO_SHOT = "bart-large-mnli"
MODELS = (REAL_MINILM_NAME, CLASSIFIER, ZERO_SHOT)
TEXTS = [
    "A man is eating food.",
    "The new movie is awesome!",
    "Hubless serves Hugging Face models over gRPC, offline.",
    " ".join(["The city council met on Tuesday to discuss the budget."] * 40),
]
SERVE = ["--tasks", "embedding,sentiment,zero-shot"]
WAIT = ["", procs.TASK_SERVICES["embedding"], procs.TASK_SERVICES["zero-shot"]]


@dataclass
class Optimized:
    volume: Path
    root: Path
    runs: list[subprocess.CompletedProcess[str]]


def optimize(volume: Path, hf_home: Path, *args: str) -> subprocess.Popen[str]:
    command = [procs.console_script("hubless-optimize"), "--models-dir", str(volume), *args]
    env = procs.child_env(hf_home, HUBLESS_THREADS="1")
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.fixture(scope="module")
def optimized(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, TinyModel]
) -> Iterator[Optimized]:
    root = tmp_path_factory.mktemp("e2e-optimize")
    volume = root / "models"
    repos = tiny_repos(tiny_models) | {REAL_MINILM_REPO_ID: real_minilm_dir()}
    with HubMirror(repos) as mirror:
        procs.fetch(volume, mirror.endpoint, MODELS, hf_home=root / "hf-home")
    first = optimize(volume, root / "hf-1")
    deadline = time.monotonic() + 300
    while not (volume / ".hubless-optimize").exists():  # made once it holds the write lock
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0]
        time.sleep(0.05)
    second = optimize(volume, root / "hf-2")
    runs = []
    for proc in (first, second):
        out, _ = proc.communicate(timeout=1200)
        runs.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, ""))
    yield Optimized(volume, root, runs)


def test_two_optimizers_at_once_one_works_the_other_finds_it_done(optimized: Optimized) -> None:
    first, second = optimized.runs
    assert first.returncode == 0, first.stdout
    assert second.returncode == 0, second.stdout
    for name in MODELS:
        assert any(
            line.startswith(name) and " optimized " in line for line in first.stdout.splitlines()
        ), first.stdout
        assert any(
            line.startswith(name) and " current " in line for line in second.stdout.splitlines()
        ), second.stdout
    assert "waiting" in second.stdout


def test_parity_recorded_and_a_rerun_is_a_fast_no_op(optimized: Optimized) -> None:
    manifest = Manifest.load(optimized.volume)
    assert all(entry.golden is not None for entry in manifest.models.values())
    real = manifest.models[REAL_MINILM_NAME].artifact("onnx")
    assert real is not None and real.parity["min_cosine"] >= 0.9999
    for name in (CLASSIFIER, ZERO_SHOT):
        artifact = manifest.models[name].artifact("onnx")
        assert artifact is not None, manifest.models[name].optimize_error
        assert artifact.parity["max_abs_delta"] <= 1e-3
        assert artifact.parity["top_label_mismatches"] == 0
        assert artifact.path.startswith(f"hubless-onnx/{manifest.models[name].commit}/")
    before = (optimized.volume / "hubless-manifest.json").read_bytes()
    started = time.monotonic()
    proc = optimize(optimized.volume, optimized.root / "hf-3")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert time.monotonic() - started < 30
    assert (optimized.volume / "hubless-manifest.json").read_bytes() == before
    assert out.count(" current ") == 2 * len(MODELS)  # the artifacts and the goldens


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _torch_scores(model_dir: Path, name: str) -> list[list[tuple[str, float]]]:
    from hubless_server.runtimes import SequenceClassificationRuntime, TextItem
    from hubless_server.runtimes.base import RuntimeOptions

    runtime = SequenceClassificationRuntime(name, model_dir, RuntimeOptions())
    runtime.load()
    out = runtime.predict([runtime.prepare(TextItem(t)) for t in TEXTS])
    return [o.scores for o in out]


def test_read_only_server_serves_onnx_with_the_same_answers(optimized: Optimized) -> None:
    from sentence_transformers import SentenceTransformer

    volume = optimized.volume
    procs.set_read_only(volume)
    before = procs.tree_state(volume)
    try:
        with procs.running_server(
            volume, optimized.root / "server", extra_args=SERVE, wait_for=WAIT
        ) as server:
            client: Client = server.client(timeout=120)
            infos = {m.name: m for m in client.list_models() if m.name in MODELS}
            for name in MODELS:
                assert infos[name].state is ModelState.READY, infos[name]
                assert infos[name].backend == "onnx", infos[name]
                assert infos[name].dtype == "float32" and infos[name].error == ""
            # the goldens (PyTorch float32) hold on ONNX Runtime too
            passed = "golden self-test passed (ONNX Runtime float32"
            assert server.log_tail(400).count(passed) == len(MODELS)
            result = client.embed(TEXTS)
            reference = SentenceTransformer(str(real_minilm_dir()), device="cpu").encode(
                TEXTS, normalize_embeddings=True
            )
            for served, expected in zip(result.vectors, reference.tolist(), strict=True):
                assert _cosine(list(served), expected) >= 0.9999
            assert result.truncated == [False, False, False, True]
            entry = Manifest.load(volume).models[CLASSIFIER]
            expected_scores = _torch_scores(entry.snapshot_dir(volume), CLASSIFIER)
            sentiment = client.analyze_sentiment(TEXTS, model=CLASSIFIER)
            for item, scores in zip(sentiment, expected_scores, strict=True):
                served_scores = {s.label: s.score for s in item.scores}
                for label, p in scores:
                    assert served_scores[label] == pytest.approx(p, abs=1e-3)
            shot = client.classify_zero_shot(TEXTS[:2], ["food", "movies"])
            assert len(shot) == 2
        assert procs.tree_state(volume) == before  # the server wrote nothing
    finally:
        procs.set_read_only(volume, read_only=False)


def test_a_flipped_byte_in_an_artifact_serves_with_pytorch_and_says_so(
    optimized: Optimized, tmp_path: Path
) -> None:
    volume = tmp_path / "copy"
    shutil.copytree(optimized.volume, volume, symlinks=True)
    entry = Manifest.load(volume).models[REAL_MINILM_NAME]
    artifact = entry.artifact_path(volume, entry.artifacts[0])
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))
    with procs.running_server(
        volume,
        tmp_path / "server",
        extra_args=["--tasks", "embedding"],
        wait_for=["", procs.TASK_SERVICES["embedding"]],
    ) as server:
        client: Client = server.client(timeout=120)
        (info,) = [m for m in client.list_models() if m.name == REAL_MINILM_NAME]
        assert info.state is ModelState.READY
        assert info.backend == "torch"
        assert "ONNX artifact unusable" in info.error and "sha256" in info.error
        assert str(volume) not in info.error
        assert len(client.embed(["A man is eating food."]).vectors[0]) == 384
        assert "ONNX artifact unusable" in server.log_tail(200)


def test_an_artifact_with_external_data_is_refused_and_serves_with_pytorch(
    optimized: Optimized, tmp_path: Path
) -> None:
    """Issue 17's attack: the artifact's largest tensor is moved to external data at a path
    relative to the server's working folder (ONNX Runtime would read it from there), and the
    manifest records the new file's size and sha256. The server refuses it before ONNX Runtime
    sees it: the model serves with PyTorch and ListModels says why."""
    import dataclasses
    import hashlib

    import onnx

    volume = tmp_path / "copy"
    shutil.copytree(optimized.volume, volume, symlinks=True)
    workdir = tmp_path / "server"
    workdir.mkdir()
    manifest = Manifest.load(volume)
    entry = manifest.models[REAL_MINILM_NAME]
    record = entry.artifacts[0]
    artifact = entry.artifact_path(volume, record)
    model = onnx.load(str(artifact))
    table = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    assert table.raw_data
    (workdir / "secret.bin").write_bytes(table.raw_data)  # what the tensor would read
    table.ClearField("raw_data")
    table.data_location = onnx.TensorProto.EXTERNAL
    table.external_data.add(key="location", value="secret.bin")
    artifact.unlink()  # a fresh file: the copy's artifact may share nothing with the original
    artifact.write_bytes(model.SerializeToString())
    data = artifact.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    entry.artifacts = [dataclasses.replace(record, size=len(data), sha256=sha256)]
    manifest.save(volume)
    with procs.running_server(
        volume,
        workdir,
        extra_args=["--tasks", "embedding"],
        wait_for=["", procs.TASK_SERVICES["embedding"]],
    ) as server:
        client: Client = server.client(timeout=120)
        info = client.get_model(REAL_MINILM_NAME)
        assert info.state is ModelState.READY and info.backend == "torch"
        assert "not a self-contained ONNX model" in info.error, info.error
        assert str(volume) not in info.error
        assert len(client.embed(["A man is eating food."]).vectors[0]) == 384
        assert "secret.bin" in server.log_tail(200)  # the log names the tensor and the file


def test_a_running_server_moves_to_onnx_when_the_artifact_appears(
    optimized: Optimized, tmp_path: Path
) -> None:
    """The server follows the manifest: an artifact recorded after it loaded the model (what
    hubless-optimize does after a fetch) is a new version, loaded beside and swapped in."""
    volume = tmp_path / "copy"
    shutil.copytree(optimized.volume, volume, symlinks=True)
    manifest_path = volume / "hubless-manifest.json"
    optimized_manifest = manifest_path.read_bytes()
    manifest = Manifest.load(volume)
    manifest.models[REAL_MINILM_NAME].artifacts = []  # as fetched, before the optimizer
    manifest.save(volume)
    with procs.running_server(
        volume,
        tmp_path / "server",
        extra_args=["--tasks", "embedding", "--reload-interval", "0.5"],
        wait_for=["", procs.TASK_SERVICES["embedding"]],
    ) as server:
        client: Client = server.client(timeout=120)
        assert client.get_model(REAL_MINILM_NAME).backend == "torch"
        tmp = manifest_path.with_name(".swap")
        tmp.write_bytes(optimized_manifest)
        tmp.replace(manifest_path)  # the optimizer's atomic manifest write
        deadline = time.monotonic() + 120
        while client.get_model(REAL_MINILM_NAME).backend != "onnx":
            assert time.monotonic() < deadline, server.log_tail(80)
            time.sleep(0.5)
        info = client.get_model(REAL_MINILM_NAME)
        assert info.state is ModelState.READY and info.error == ""
        assert len(client.embed(["A man is eating food."]).vectors[0]) == 384
