"""--backend / --backend-overrides, how a backend is chosen, and the artifact check."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from hubless_server.core.flags import load_settings
from hubless_server.core.values import ConfigError
from hubless_server.runtimes.backends import ArtifactError, load_forward, read_artifact
from hubless_server.runtimes.base import OnnxArtifact, RuntimeOptions
from hubless_server.runtimes.placement import resolve_backend


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
    path.write_bytes(b"0123456789")
    good = OnnxArtifact(path, 10, hashlib.sha256(b"0123456789").hexdigest())
    assert read_artifact(good) == b"0123456789"
    for artifact, why in (
        (OnnxArtifact(path, 11, good.sha256), "size differs"),
        (OnnxArtifact(path, 10, "0" * 64), "sha256 differs"),
        (OnnxArtifact(tmp_path / "gone.onnx", 10, good.sha256), "missing"),
    ):
        with pytest.raises(ArtifactError) as info:
            read_artifact(artifact)
        assert why in info.value.public and str(tmp_path) not in info.value.public


def test_an_unloadable_artifact_falls_back_to_torch(tmp_path: Path) -> None:
    from hubless_server.runtimes._common import resolve_precision

    path = tmp_path / "model.onnx"
    path.write_bytes(b"not an onnx model")
    artifact = OnnxArtifact(
        path, path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()
    )
    options = RuntimeOptions(backend="onnx", onnx=artifact)
    forward, model, _ = load_forward(
        "m", options, resolve_precision(options), lambda: "weights", "x"
    )
    assert forward.name == "torch" and model == "weights"
    assert "ONNX Runtime cannot load it" in forward.note
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
