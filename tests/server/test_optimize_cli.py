"""hubless-optimize in-process: selection and exit codes, and a model that fails its parity
check keeps PyTorch with the reason recorded (ListModels and re-runs see it)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from hubless_server.optimize import run as optimize_run
from hubless_server.optimize.cli import ExitCode, main
from hubless_server.optimize.parity import ParityResult
from hubless_volume import Manifest

CLASSIFIER = "distilbert-sst2"


def test_selection_and_usage_errors(
    volume_factory: Callable[[list[str] | None], Path], tmp_path: Path
) -> None:
    volume = volume_factory([CLASSIFIER, "dialogpt-small"])
    assert main(["--models-dir", str(tmp_path / "nowhere")]) == ExitCode.USAGE
    assert main(["--models-dir", str(volume), "bart-large"]) == ExitCode.NOT_INSTALLED
    assert main(["--models-dir", str(volume), "dialogpt-small"]) == ExitCode.USAGE
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "hubless-manifest.json").write_text(json.dumps({"version": 1, "models": []}))
    assert main(["--models-dir", str(broken)]) == ExitCode.INVALID_FILE


def test_a_failed_parity_check_keeps_pytorch_and_is_recorded(
    volume_factory: Callable[[list[str] | None], Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    volume = volume_factory([CLASSIFIER])
    monkeypatch.setattr(
        optimize_run,
        "compare",
        lambda kind, ref, cand: ParityResult(False, {"probes": 32}, "top label differs on 3"),
    )
    assert main(["--models-dir", str(volume), "--threads", "1"]) == ExitCode.OK
    entry = Manifest.load(volume).models[CLASSIFIER]
    assert entry.artifacts == []
    assert entry.optimize_error == "parity check failed: top label differs on 3"
    assert "kept-torch" in capsys.readouterr().out
    assert not (volume / ".hubless-optimize").exists()
    onnx_dirs = list(volume.glob("models--*/hubless-onnx"))
    assert onnx_dirs == []  # nothing installed
    # recorded: a re-run does nothing (and --strict says the model keeps PyTorch)
    assert main(["--models-dir", str(volume), "--strict"]) == ExitCode.FAILED
    assert "current" in capsys.readouterr().out
