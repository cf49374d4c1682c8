"""--backend / --backend-overrides, how a backend is chosen, and the artifact check."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from hubless_server.core.flags import load_settings
from hubless_server.core.values import ConfigError
from hubless_server.runtimes.backends import ArtifactError, load_forward, read_artifact
from hubless_server.runtimes.base import OnnxArtifact, RuntimeOptions
from hubless_server.runtimes.placement import resolve_backend

MINIMAL_ONNX = b"\x3a\x00"
"""A ModelProto holding one empty graph: it passes the external-data check, and ONNX Runtime
cannot load it (no opset)."""


def test_backend_settings() -> None:
    settings = load_settings(["--models-dir", "x"], {})
    assert settings.backend == "auto" and settings.backend_overrides == {}
    settings = load_settings(
        ["--models-dir", "x", "--backend-overrides", "embedding=torch,bart-large-mnli=onnx"],
        {"HUBLESS_BACKEND": "onnx"},
    )
    assert settings.backend_for("embedding", "all-minilm-l6-v2") == "torch"
    assert settings.backend_for("zero-shot", "bart-large-mnli") == "onnx"
    assert settings.backend_for("sentiment", "distilbert-sst2") == "onnx"
    with pytest.raises(ConfigError, match="BACKEND"):
        load_settings(["--models-dir", "x", "--backend-overrides", "embedding=tensorrt"], {})
    with pytest.raises(ConfigError, match="--backend"):
        load_settings(["--models-dir", "x", "--backend", "tvm"], {})


@pytest.mark.parametrize(
    ("requested", "device", "kind", "artifact", "expected"),
    [
        ("auto", "cpu", "embedding", True, "onnx"),
        ("auto", "cpu", "classification", True, "onnx"),
        ("auto", "cpu", "zero_shot", True, "onnx"),
        ("auto", "cpu", "embedding", False, "torch"),
        ("auto", "cuda", "embedding", True, "torch"),  # a GPU stays on PyTorch
        ("auto", "cpu", "chat", True, "torch"),  # generation: always PyTorch
        ("torch", "cpu", "embedding", True, "torch"),
        ("onnx", "cpu", "embedding", False, "onnx"),  # the runtime then says why it is torch
        ("onnx", "cuda:0", "embedding", True, "torch"),
        ("onnx", "cpu", "seq2seq", True, "torch"),
    ],
)
def test_resolve_backend(
    requested: str, device: str, kind: str, artifact: bool, expected: str
) -> None:
    assert resolve_backend(requested, device, kind, artifact) == expected


def test_auto_keeps_pytorch_in_bfloat16() -> None:
    """A CPU with native bf16: PyTorch bf16 beats ONNX Runtime's float32; --backend onnx
    still asks for it."""
    assert resolve_backend("auto", "cpu", "embedding", True, "bfloat16") == "torch"
    assert resolve_backend("onnx", "cpu", "embedding", True, "bfloat16") == "onnx"
    assert resolve_backend("auto", "cpu", "embedding", True, "float32") == "onnx"


def test_read_artifact_checks_size_and_sha256(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(MINIMAL_ONNX)
    sha256 = hashlib.sha256(MINIMAL_ONNX).hexdigest()
    good = OnnxArtifact(path, len(MINIMAL_ONNX), sha256, tmp_path)
    assert read_artifact(good) == MINIMAL_ONNX
    for artifact, why in (
        (OnnxArtifact(path, len(MINIMAL_ONNX) + 1, sha256, tmp_path), "size differs"),
        (OnnxArtifact(path, len(MINIMAL_ONNX) - 1, sha256, tmp_path), "size differs"),
        (OnnxArtifact(path, len(MINIMAL_ONNX), "0" * 64, tmp_path), "sha256 differs"),
        (OnnxArtifact(tmp_path / "gone.onnx", 10, sha256, tmp_path), "missing"),
    ):
        with pytest.raises(ArtifactError) as info:
            read_artifact(artifact)
        assert why in info.value.public and str(tmp_path) not in info.value.public


def test_read_artifact_refuses_what_is_not_a_file_inside_the_volume(tmp_path: Path) -> None:
    """A FIFO is refused without blocking; a link leaving the volume (to /dev/zero, or to a
    file elsewhere with the recorded bytes) is refused without being read."""
    volume = tmp_path / "volume"
    volume.mkdir()
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(MINIMAL_ONNX)
    sha256 = hashlib.sha256(MINIMAL_ONNX).hexdigest()
    fifo = volume / "fifo.onnx"
    os.mkfifo(fifo)
    (volume / "zero.onnx").symlink_to("/dev/zero")
    (volume / "out.onnx").symlink_to(outside)
    for name, why in (
        ("fifo.onnx", "FIFO"),
        ("zero.onnx", "not a file inside the volume"),
        ("out.onnx", "not a file inside the volume"),
    ):
        artifact = OnnxArtifact(volume / name, len(MINIMAL_ONNX), sha256, volume)
        with pytest.raises(ArtifactError) as info:
            read_artifact(artifact)
        assert "refused" in info.value.public and why in info.value.public
        assert str(tmp_path) not in info.value.public


def external_data_model(location: str) -> bytes:
    """An ONNX model (an embedding-table lookup) whose table is external data at
    ``location``: ONNX Runtime refuses only absolute and ``..`` locations, so a relative one
    is read from the working folder, and the "embedding" returns that file's bytes."""
    from onnx import TensorProto, helper

    table = TensorProto(name="table", data_type=TensorProto.FLOAT, dims=[4, 1])
    table.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        table.external_data.add(key=key, value=value)
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, [None])
    out = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [None, 1])
    node = helper.make_node("Gather", ["table", "input_ids"], ["last_hidden_state"])
    graph = helper.make_graph([node], "main_graph", [ids], [out], initializer=[table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def test_an_artifact_with_external_data_is_refused_and_falls_back_to_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The attack of issue 17: the artifact's tensor reads ``secret.bin`` from the server's
    working folder; its size and sha256 are the manifest's (whoever wrote one wrote both)."""
    from hubless_server.runtimes._common import resolve_precision

    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.bin").write_bytes(b"TOP-SECRET-BYTES")
    volume = tmp_path / "volume"
    volume.mkdir()
    path = volume / "model.onnx"
    path.write_bytes(external_data_model("secret.bin"))
    data = path.read_bytes()
    artifact = OnnxArtifact(path, len(data), hashlib.sha256(data).hexdigest(), volume)
    with pytest.raises(ArtifactError) as info:
        read_artifact(artifact)
    assert "initializer 'table'" in str(info.value) and "secret.bin" in str(info.value)
    options = RuntimeOptions(backend="onnx", onnx=artifact)
    forward, model, _ = load_forward(
        "m", options, resolve_precision(options), lambda: "weights", "x"
    )
    assert forward.name == "torch" and model == "weights"
    assert "not a self-contained ONNX model" in forward.note
    assert "serving with PyTorch" in forward.note and str(tmp_path) not in forward.note
    assert "not a self-contained ONNX model" in caplog.text


def test_an_unloadable_artifact_falls_back_to_torch(tmp_path: Path) -> None:
    from hubless_server.runtimes._common import resolve_precision

    path = tmp_path / "model.onnx"
    for data, why in (
        (MINIMAL_ONNX, "ONNX Runtime cannot load it"),  # a graph, but no model ORT runs
        (b"not an onnx model", "cannot be read as an ONNX model"),  # refused before ORT
    ):
        path.write_bytes(data)
        artifact = OnnxArtifact(path, len(data), hashlib.sha256(data).hexdigest(), tmp_path)
        options = RuntimeOptions(backend="onnx", onnx=artifact)
        precision = resolve_precision(options)
        forward, model, _ = load_forward("m", options, precision, lambda: "weights", "x")
        assert forward.name == "torch" and model == "weights"
        assert why in forward.note
    none = RuntimeOptions(backend="onnx")
    forward, _, _ = load_forward("m", none, resolve_precision(none), lambda: "weights", "x")
    assert forward.name == "torch" and "no ONNX artifact" in forward.note


def test_list_models_says_why_a_model_runs_on_pytorch() -> None:
    from hubless_server.models.registry import ModelRecord, State
    from hubless_server.runtimes.base import RuntimeInfo
    from hubless_server.services.models import model_info
    from hubless_volume import FileRecord, ModelEntry

    class Loaded:
        def __init__(self, backend: str, note: str = "") -> None:
            self.backend, self.note = backend, note

        def info(self) -> RuntimeInfo:
            return RuntimeInfo("cpu", "float32", 512, backend=self.backend, backend_note=self.note)

    entry = ModelEntry(
        "distilbert-sst2", "org/m", "main", "a" * 40, "sentiment", [FileRecord("x", 1, "b" * 64)]
    )
    record = ModelRecord("distilbert-sst2", "sentiment", entry, State.READY, backend="onnx")
    record.runtime = Loaded("onnx")  # type: ignore[assignment]
    info = model_info(record)
    assert info.backend == "onnx" and info.error == ""
    record.backend = "torch"
    record.runtime = Loaded(
        "torch", "ONNX artifact unusable: its sha256 differs; serving with PyTorch"
    )  # type: ignore[assignment]
    assert "sha256 differs" in model_info(record).error
    entry.optimize_error = "parity check failed: top label differs on 3 probe(s)"
    record.runtime = Loaded("torch")  # type: ignore[assignment]
    info = model_info(record)
    assert info.backend == "torch"
    assert info.error.startswith("no ONNX artifact, serving with PyTorch: parity check failed")
