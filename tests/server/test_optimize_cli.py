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
    # a generation model gets golden outputs only; with --no-golden there is nothing to do
    assert main(["--models-dir", str(volume), "--no-golden", "dialogpt-small"]) == ExitCode.USAGE
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


def save_with_external_data(path: Path, location: str) -> None:
    """A small ONNX model (``y = x @ w``) at ``path`` whose weight ``w`` is external data in
    ``location`` (relative to ``path``'s folder)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    weight = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4])],
        [weight],
    )
    onnx.save_model(
        helper.make_model(graph),
        str(path),
        save_as_external_data=True,
        location=location,
        size_threshold=0,
    )


@pytest.mark.parametrize("location", ["exported.onnx.data", "weights.bin"])
def test_an_export_with_external_data_is_folded_into_one_file(
    tmp_path: Path, location: str
) -> None:
    """The exporter writes the weights beside the graph when it thinks they pass 2 GB (it did
    for bart-large-mnli, 1.6 GB): the artifact must be one file the server reads whole, and
    one the server accepts (no tensor keeps its data in another file), whatever the name of
    the file the data went to."""
    import onnx
    from onnx import numpy_helper

    from hubless_server.optimize.export import _one_file
    from hubless_volume import external_data_problems

    path = tmp_path / "exported.onnx"
    save_with_external_data(path, location)
    assert (tmp_path / location).exists() and external_data_problems(path)
    _one_file(path)
    assert external_data_problems(path) == []
    if location.startswith(path.name):
        assert sorted(p.name for p in tmp_path.iterdir()) == ["exported.onnx"]
    model = onnx.load(str(path), load_external_data=False)
    assert numpy_helper.to_array(model.graph.initializer[0]).sum() == 66


def test_an_export_that_keeps_external_data_is_recorded_not_installed(
    volume_factory: Callable[[list[str] | None], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last check before an export is loaded and installed: an artifact the server would
    refuse (a tensor in another file) is a recorded failure, and nothing is installed."""
    from hubless_server.optimize import export

    volume = volume_factory([CLASSIFIER])

    def export_beside(model: object, example: object, output: str, path: Path) -> None:
        (path.parent / "elsewhere").mkdir()
        save_with_external_data(path, "elsewhere/weights.bin")

    monkeypatch.setattr(export, "export_onnx", export_beside)
    assert main(["--models-dir", str(volume), "--threads", "1"]) == ExitCode.OK
    entry = Manifest.load(volume).models[CLASSIFIER]
    assert entry.artifacts == []
    assert entry.optimize_error.startswith("the export is not a self-contained ONNX model")
    assert "initializer 'w'" in entry.optimize_error
    assert list(volume.glob("models--*/hubless-onnx")) == []


def test_a_volume_it_cannot_write_is_exit_1_not_a_traceback(
    volume_factory: Callable[[list[str] | None], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from hubless_server.optimize import cli

    volume = volume_factory([CLASSIFIER])

    def refuse(self: object) -> None:
        raise PermissionError(13, "Read-only file system", str(volume / ".hubless.lock"))

    monkeypatch.setattr(cli.VolumeWriteLock, "__enter__", refuse)
    assert main(["--models-dir", str(volume)]) == ExitCode.FAILED


def test_version_and_the_exit_codes_in_help_match_the_docs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from hubless_server import __version__
    from hubless_server.optimize.cli import EXIT_CODES, build_parser

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"hubless-optimize {__version__}"
    assert set(EXIT_CODES) == set(ExitCode)
    epilog = " ".join(build_parser().format_help().split("exit codes:", 1)[1].split())
    for code, meaning in EXIT_CODES.items():
        assert f"{int(code)} {meaning.replace('`', '')}" in epilog, code
    doc = Path(__file__).resolve().parents[2] / "docs" / "optimize.md"
    table = doc.read_text(encoding="utf-8").split("| code | meaning |\n|---|---|\n", 1)[1]
    rows = [line.strip("|").split(" | ", 1) for line in table.split("\n\n", 1)[0].splitlines()]
    assert {int(c): m.strip() for c, m in rows} == {int(c): m for c, m in EXIT_CODES.items()}


def test_names_outside_the_catalog_get_catalog_suggestions_not_a_fetch_command(
    volume_factory: Callable[[list[str] | None], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    volume = volume_factory([CLASSIFIER])
    assert main(["--models-dir", str(volume), "nosuch", "all-minilm-l6"]) == ExitCode.NOT_INSTALLED
    message = capsys.readouterr().err
    assert "'nosuch'" in message and "not in the catalog" in message
    assert "did you mean all-minilm-l6-v2?" in message
    assert "hubless-fetch fetch nosuch" not in message
    assert "hubless-fetch fetch all-minilm-l6" not in message
    assert main(["--models-dir", str(volume), "all-minilm-l6-v2"]) == ExitCode.NOT_INSTALLED
    assert "install with `hubless-fetch fetch all-minilm-l6-v2`" in capsys.readouterr().err
    assert main(["--models-dir", str(volume), "--no-golden", "bart-large"]) == (
        ExitCode.NOT_INSTALLED
    )
    message = capsys.readouterr().err
    assert "summarization model" in message and "hubless-fetch fetch" not in message
    assert main(["--models-dir", str(volume), "bart-large"]) == ExitCode.NOT_INSTALLED
    assert "install with `hubless-fetch fetch bart-large`" in capsys.readouterr().err
