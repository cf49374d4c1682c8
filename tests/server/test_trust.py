"""The server's trust checks over tiny models: ``--trusted-key`` and the golden self-test.

Volumes are the tiny models installed in-process; golden outputs are written by
``hubless-optimize --no-onnx`` (in-process), signatures by ``hubless-fetch sign`` (in-process,
keys made as in ``tests/fetcher/test_signing.py``). What someone who can write the volume does
is done here too: change a file and re-hash it in the manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hubless.v1 import models_pb2, models_pb2_grpc
from hubless_fetcher.cli import main as fetch_main
from hubless_server.cli import main as serve_main
from hubless_server.optimize.cli import main as optimize_main
from hubless_volume import FileRecord, Manifest, load_golden
from tests.fetcher.test_signing import make_keys, rewrite_and_rehash
from tests.server.harness import RunningServer, settings_for

CLASSIFIER = "distilbert-sst2"
TAMPERED = "twitter-roberta-sentiment"
EMBEDDER = "all-minilm-l6-v2"
MakeVolume = Callable[[list[str] | None], Path]
READY, FAILED = models_pb2.MODEL_STATE_READY, models_pb2.MODEL_STATE_FAILED


@pytest.fixture
def serve() -> Iterator[Callable[..., RunningServer]]:
    servers: list[RunningServer] = []

    def start(volume: Path, *flags: str) -> RunningServer:
        server = RunningServer(settings_for(volume, "--tasks", "embedding,sentiment", *flags), None)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def models(server: RunningServer) -> dict[str, models_pb2.ModelInfo]:
    listed = models_pb2_grpc.ModelsServiceStub(server.channel).ListModels(
        models_pb2.ListModelsRequest(), timeout=10
    )
    return {m.name: m for m in listed.models}


@contextlib.contextmanager
def root_handlers_kept() -> Iterator[None]:
    """The CLIs' ``main`` replace the root log handlers (pytest's among them): put them back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def write_goldens(volume: Path, *names: str) -> None:
    with root_handlers_kept():
        argv = ["--models-dir", str(volume), "--no-onnx", "--threads", "1", *names]
        assert optimize_main(argv) == 0


def sign(volume: Path, key: Path) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "HUBLESS_MODELS_DIR": str(volume)}
    with root_handlers_kept():
        assert fetch_main(["sign", "--key", str(key)], env=env) == 0


def change_classifier(volume: Path, name: str) -> None:
    """The classifier head's bias pushed hard to one label, the weights file re-hashed in the
    manifest: every file check passes."""
    from safetensors.torch import load_file, save_file

    entry = Manifest.load(volume).models[name]
    weights = entry.file_path(volume, "model.safetensors").resolve()
    tensors = load_file(str(weights))
    tensors["classifier.bias"][0] += 4.0
    changed = weights.with_name("changed.safetensors")
    save_file(tensors, str(changed), metadata={"format": "pt"})
    rewrite_and_rehash(volume, name, "model.safetensors", changed.read_bytes())
    changed.unlink()


def test_goldens_are_written_once_and_a_changed_classifier_is_refused_at_load(
    volume_factory: MakeVolume,
    serve: Callable[..., RunningServer],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    volume = volume_factory([CLASSIFIER, TAMPERED, EMBEDDER, "dialogpt-small"])
    write_goldens(volume)
    assert capsys.readouterr().out.count(" written ") == 4
    manifest = Manifest.load(volume)
    assert all(entry.golden is not None for entry in manifest.models.values())
    before = (volume / "hubless-manifest.json").read_bytes()
    write_goldens(volume)  # current: nothing written
    assert capsys.readouterr().out.count(" current ") == 4
    assert (volume / "hubless-manifest.json").read_bytes() == before

    caplog.set_level(logging.INFO, "hubless_server.models.golden")
    infos = models(serve(volume))  # the goldens as written: every model passes
    assert infos[CLASSIFIER].state == READY and infos[CLASSIFIER].error == ""
    assert "model distilbert-sst2: golden self-test passed (PyTorch float32" in caplog.text

    change_classifier(volume, CLASSIFIER)
    server = serve(volume)
    infos = models(server)
    info = infos[CLASSIFIER]
    assert info.state == FAILED
    assert info.error.startswith("refused: golden self-test: "), info.error
    assert "max |delta p|" in info.error and "(--golden-check refuse)" in info.error
    assert "PyTorch float32" in info.error and str(volume) not in info.error
    assert infos[TAMPERED].state == READY and infos[TAMPERED].is_default
    assert infos[EMBEDDER].state == READY

    warned = models(serve(volume, "--golden-check", "warn"))[CLASSIFIER]
    assert warned.state == READY
    assert warned.error.startswith("golden self-test: "), warned.error
    assert warned.error.endswith("(--golden-check warn: served anyway)")
    unchecked = models(serve(volume, "--golden-check", "off"))[CLASSIFIER]
    assert unchecked.state == READY and unchecked.error == ""


def test_generation_and_zero_shot_goldens_pass_in_float32_and_bfloat16(
    volume_factory: MakeVolume,
    serve: Callable[..., RunningServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Greedy tokens of summarization and conversation, zero-shot scores: recorded by the
    optimizer, passed by the server on PyTorch float32 (tokens identical) and bfloat16."""
    names = ["bart-large-cnn", "dialogpt-small", "bart-large-mnli"]
    volume = volume_factory(names)
    write_goldens(volume)
    for name in names[:2]:
        golden = load_golden(volume, Manifest.load(volume).models[name])
        assert golden is not None and all(1 <= len(p.tokens) <= 8 for p in golden.probes)
    tasks = ("--tasks", "zero-shot,summarization,conversation")
    caplog.set_level(logging.INFO, "hubless_server.models.golden")
    for dtype, tolerance in (("float32", "PyTorch float32"), ("bfloat16", "reduced precision")):
        caplog.clear()
        infos = models(serve(volume, *tasks, "--dtype", dtype))
        assert {infos[n].state for n in names} == {READY}, infos
        for name in names:
            assert f"model {name}: golden self-test passed ({tolerance}" in caplog.text


def test_an_unusable_golden_file_is_refused_and_a_model_without_goldens_loads(
    volume_factory: MakeVolume,
    serve: Callable[..., RunningServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    volume = volume_factory([CLASSIFIER, TAMPERED])
    write_goldens(volume, CLASSIFIER)
    entry = Manifest.load(volume).models[CLASSIFIER]
    assert entry.golden is not None
    golden = entry.golden_path(volume)
    golden.write_bytes(golden.read_bytes().replace(b'"text": "A man', b'"text": "A cat'))
    caplog.set_level(logging.INFO, "hubless_server.models.golden")
    infos = models(serve(volume))
    assert infos[CLASSIFIER].state == FAILED
    assert infos[CLASSIFIER].error == (
        "refused: golden outputs unusable (differs from its manifest record (size "
        f"{golden.stat().st_size}, sha256 {hashlib.sha256(golden.read_bytes()).hexdigest()}))"
        " (--golden-check refuse)"
    )
    assert infos[TAMPERED].state == READY and infos[TAMPERED].error == ""
    assert f"model {TAMPERED}: no golden outputs" in caplog.text


def new_unsigned_commit(volume: Path, name: str) -> str:
    """A new commit of ``name`` with the same files, unsigned (what a fetch of a new upstream
    commit installs before anyone signs it): its entry has no goldens or signature."""
    manifest = Manifest.load(volume)
    entry = manifest.models[name]
    commit = hashlib.sha1(f"{name}-next".encode()).hexdigest()
    old = entry.snapshot_dir(volume)
    shutil.copytree(old, old.with_name(commit), symlinks=True)
    entry.commit, entry.golden, entry.signature, entry.artifacts = commit, None, "", []
    manifest.save(volume)
    return commit


def test_trusted_key_serves_a_signed_volume_and_refuses_what_was_changed(
    volume_factory: MakeVolume, serve: Callable[..., RunningServer], tmp_path: Path
) -> None:
    keys = make_keys(tmp_path / "keys")
    volume = volume_factory([CLASSIFIER, TAMPERED])
    write_goldens(volume)
    sign(volume, keys.private)
    key = ("--trusted-key", str(keys.public))
    infos = models(serve(volume, *key))
    assert {infos[n].state for n in (CLASSIFIER, TAMPERED)} == {READY}
    assert infos[CLASSIFIER].error == infos[TAMPERED].error == ""

    entry = Manifest.load(volume).models[TAMPERED]
    config = entry.file_path(volume, "config.json").read_bytes()
    assert b'"negative"' in config and b'"positive"' in config
    swapped = config.replace(b'"negative"', b'"@"').replace(b'"positive"', b'"negative"')
    rewrite_and_rehash(volume, TAMPERED, "config.json", swapped.replace(b'"@"', b'"positive"'))
    infos = models(serve(volume, *key))
    assert infos[TAMPERED].state == FAILED
    assert infos[TAMPERED].error == (
        "refused: signature check failed: the snapshot does not verify: config.json differs "
        "from the signed file (--trusted-key)"
    )
    assert infos[CLASSIFIER].state == READY and infos[CLASSIFIER].is_default
    # without the key the hashes cannot tell, and the swap is served
    assert models(serve(volume))[TAMPERED].state == READY


def test_an_unsigned_live_update_keeps_the_signed_commit_serving_until_it_is_signed(
    volume_factory: MakeVolume, serve: Callable[..., RunningServer], tmp_path: Path
) -> None:
    keys = make_keys(tmp_path / "keys")
    volume = volume_factory([CLASSIFIER])
    sign(volume, keys.private)
    signed = Manifest.load(volume).models[CLASSIFIER].commit
    server = serve(volume, "--trusted-key", str(keys.public), "--reload-interval", "0")
    commit = new_unsigned_commit(volume, CLASSIFIER)
    server.call(server.server.reload_now())
    info = models(server)[CLASSIFIER]
    assert info.state == READY and info.commit == signed
    assert info.error == (
        f"update to commit {commit[:12]} failed (refused: signature check failed: not signed "
        f"(the manifest entry has no signature) (--trusted-key)); commit {signed[:12]} keeps "
        "serving"
    )
    sign(volume, keys.private)  # the same commit, signed now: a new version, loaded
    assert server.server.reloader is not None
    server.call(server.server.reloader.reload_now(force=False))  # no retry of failed ones
    info = models(server)[CLASSIFIER]
    assert info.state == READY and info.commit == commit and info.error == ""


def test_a_bad_trusted_key_stops_the_start_with_exit_2(
    volume_factory: MakeVolume,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    keys = make_keys(tmp_path / "keys")
    volume = volume_factory([CLASSIFIER])
    argv = ["--models-dir", str(volume), "--port", "0", "--metrics-port", "0"]
    with root_handlers_kept():
        assert serve_main([*argv, "--trusted-key", str(keys.private)]) == 2
        err = capsys.readouterr().err
        assert "invalid configuration: --trusted-key: trusted key" in err
        assert "is a private key; give its public half" in err
        assert serve_main([*argv, "--trusted-key", str(tmp_path / "absent.pem")]) == 2
        assert "absent.pem" in capsys.readouterr().err
        assert serve_main([*argv, "--golden-check", "maybe"]) == 2
        assert "'maybe' is not one of refuse, warn, off" in capsys.readouterr().err


def test_the_golden_comparison_and_its_tolerances() -> None:
    """The comparison alone: each precision's tolerances, ties, NaN, token prefixes."""
    from hubless_server.models.golden import TOLERANCES, compare, tolerance_for
    from hubless_server.runtimes.base import RuntimeInfo
    from hubless_volume import Golden, GoldenProbe

    commit = "a" * 40
    fp32, onnx, reduced = TOLERANCES["float32"], TOLERANCES["onnx"], TOLERANCES["reduced"]
    assert tolerance_for(RuntimeInfo("cpu", "float32", 8)) is fp32
    assert tolerance_for(RuntimeInfo("cpu", "float32", 8, backend="onnx")) is onnx
    assert tolerance_for(RuntimeInfo("cuda:0", "float16", 8)) is reduced

    def vectors(*rows: list[float]) -> Golden:
        probes = [GoldenProbe(f"t{i}", embedding=row) for i, row in enumerate(rows)]
        return Golden("e", commit, "embedding", probes)

    golden = vectors([1.0, 0.0], [0.0, 1.0])
    near = vectors([1.0, 0.01], [0.0, 1.0]).probes  # cosine 0.99995
    assert compare(golden, near, fp32).passed and compare(golden, near, onnx).passed
    far = vectors([1.0, 0.1], [0.0, 1.0]).probes  # cosine 0.995
    verdict = compare(golden, far, reduced)
    assert not verdict.passed and verdict.reason == "min cosine 0.995037 < 0.999 on 't0'"
    zero = vectors([0.0, 0.0], [0.0, 1.0]).probes
    assert not compare(golden, zero, reduced).passed  # NaN fails
    short = vectors([1.0], [1.0]).probes
    assert "vectors of 1 numbers" in compare(golden, short, fp32).reason

    def scores(task: str, *rows: list[float]) -> Golden:
        labels = ["NEG", "POS"]
        probes = [GoldenProbe(f"t{i}", labels=labels, scores=row) for i, row in enumerate(rows)]
        return Golden("c", commit, task, probes)

    golden = scores("sentiment", [0.1, 0.9], [0.501, 0.499])
    moved = scores("sentiment", [0.11, 0.89], [0.499, 0.501]).probes  # a tie may flip
    assert not compare(golden, moved, fp32).passed  # 0.01 > 0.005
    assert compare(golden, moved, reduced).passed
    flipped = scores("sentiment", [0.6, 0.4], [0.501, 0.499]).probes
    verdict = compare(golden, flipped, reduced)
    assert verdict.reason == "the top label changed on 1 of 2 probes"
    assert verdict.figures == "max |delta p| 0.5000, top label changed on 1 of 2 probes"
    other = [GoldenProbe("t0", labels=["A", "B"], scores=[0.1, 0.9])] * 2
    assert compare(golden, other, fp32).reason == "labels A, B; the goldens have NEG, POS"

    def tokens(*rows: list[int]) -> Golden:
        probes = [GoldenProbe(f"t{i}", tokens=row) for i, row in enumerate(rows)]
        return Golden("g", commit, "conversation", probes)

    golden = tokens([1, 2, 3, 4], [5, 6, 7, 8])
    late = tokens([1, 2, 3, 9], [5, 6, 7, 8]).probes
    verdict = compare(golden, late, fp32)
    assert verdict.reason == "the greedy tokens differ on 1 probe(s), first at token 4 of 't0'"
    assert compare(golden, late, reduced).passed  # 7 of 8 agree
    early = tokens([9, 2, 3, 4], [5, 9, 7, 8]).probes
    assert (
        compare(golden, early, reduced).reason == "only 1 of 8 greedy tokens agree (at least 50%)"
    )
    assert compare(golden, golden.probes, fp32).passed


def test_a_manifest_record_changed_alone_is_refused_by_the_signature(
    volume_factory: MakeVolume, serve: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """A file's sha256 changed in the manifest, not the file: with the key, even without
    --verify-sha256, the signature check hashes everything and says so."""
    keys = make_keys(tmp_path / "keys")
    volume = volume_factory([CLASSIFIER, TAMPERED])
    sign(volume, keys.private)
    manifest = Manifest.load(volume)
    entry = manifest.models[TAMPERED]
    entry.files = [
        FileRecord(f.path, f.size, "0" * 64) if f.path == "config.json" else f for f in entry.files
    ]
    manifest.save(volume)
    info = models(serve(volume, "--trusted-key", str(keys.public)))[TAMPERED]
    assert info.state == FAILED
    assert info.error == (
        "refused: signature check failed: config.json: the manifest's sha256 is not the "
        "signed one (--trusted-key)"
    )
