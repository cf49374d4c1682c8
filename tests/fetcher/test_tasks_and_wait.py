"""``fetch --tasks``: only the catalog models of some tasks (a pod fetches what it serves);
``verify --wait``: poll a volume until a verified model of each task is installed (what the
shared-cache server pods run while the fetch Job fills the volume)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hubless_fetcher.catalog import Catalog
from hubless_fetcher.errors import ExitCode
from hubless_volume import Manifest
from tests.fetcher.conftest import Run, spawn


def _installed(models_dir: Path) -> list[str]:
    return sorted(Manifest.load(models_dir).models)


def test_fetch_tasks_installs_only_those_tasks(run: Run, catalog: Path, models_dir: Path) -> None:
    result = run("fetch", "--tasks", "emotion,embedding")
    assert result.code == ExitCode.OK, result.err
    assert _installed(models_dir) == ["all-minilm-l6-v2", "emotion-english-distilroberta"]
    sentiment = [m.name for m in Catalog.load(catalog).models.values() if m.task == "sentiment"]
    result = run("fetch", "dialogpt-small", "--tasks", "sentiment")  # names and tasks: both
    assert result.code == ExitCode.OK, result.err
    assert set(_installed(models_dir)) == {
        "all-minilm-l6-v2",
        "emotion-english-distilroberta",
        "dialogpt-small",
        *sentiment,
    }


def test_fetch_tasks_are_checked(
    run: Run, catalog: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run("fetch", "--tasks", "emotion,translation")
    assert exit_info.value.code == ExitCode.USAGE
    assert "translation" in capsys.readouterr().err
    text = catalog.read_text()  # a catalog without emotion models
    kept = [block for block in text.split("[[models]]") if 'task = "emotion"' not in block]
    catalog.write_text(
        "[[models]]".join(kept).replace('emotion = ["emotion-english-distilroberta"]', "")
    )
    result = run("fetch", "--tasks", "emotion")
    assert result.code == ExitCode.USAGE
    assert "no model for task(s): emotion" in result.err


def test_verify_wait_passes_on_a_complete_volume(
    run: Run, volume_factory: Callable[..., Path]
) -> None:
    volume = volume_factory()
    started = time.monotonic()
    result = run("verify", "--wait", "--timeout", "30", HUBLESS_MODELS_DIR=str(volume))
    assert result.code == ExitCode.OK, result.err
    assert time.monotonic() - started < 10
    assert "ready:" in result.out and "embedding: all-minilm-l6-v2" in result.out


def test_verify_wait_gives_up_naming_the_tasks_without_a_model(
    run: Run, volume_factory: Callable[..., Path]
) -> None:
    volume = str(volume_factory(["distilbert-sst2", "dialogpt-small"]))
    wait = ("verify", "--wait", "--timeout", "1", "--interval", "0.2")
    result = run(*wait, HUBLESS_MODELS_DIR=volume)
    assert result.code == ExitCode.CORRUPT
    assert "gave up after 1s" in result.err
    for task in ("emotion", "zero-shot", "summarization", "embedding"):
        assert f"task {task}" in result.err
    assert "task sentiment" not in result.err and "task conversation" not in result.err
    # only what this pod serves, or named models
    assert run(*wait, "--tasks", "sentiment,conversation", HUBLESS_MODELS_DIR=volume).code == 0
    assert run(*wait, "distilbert-sst2", HUBLESS_MODELS_DIR=volume).code == ExitCode.OK
    missing = run(*wait, "bart-large", HUBLESS_MODELS_DIR=volume)
    assert missing.code == ExitCode.CORRUPT and "model bart-large" in missing.err
    assert run("verify", "--tasks", "emotion", HUBLESS_MODELS_DIR=volume).code == ExitCode.USAGE


def test_verify_wait_needs_sound_files(run: Run, volume_factory: Callable[..., Path]) -> None:
    """A model listed in the manifest whose file is short does not count."""
    volume = volume_factory(["all-minilm-l6-v2"])
    entry = Manifest.load(volume).models["all-minilm-l6-v2"]
    biggest = max(entry.files, key=lambda f: f.size)
    path = entry.file_path(volume, biggest.path).resolve()
    path.write_bytes(path.read_bytes()[:10])
    result = run(
        "verify",
        "--wait",
        "--tasks",
        "embedding",
        "--timeout",
        "0.5",
        HUBLESS_MODELS_DIR=str(volume),
    )
    assert result.code == ExitCode.CORRUPT


def test_verify_wait_returns_once_a_fetch_installed_the_task(
    run: Run, env: dict[str, str], models_dir: Path
) -> None:
    """The waiter runs beside the fetch that fills the volume, as the shared-cache pods do."""
    waiter = spawn(env, "verify", "--wait", "--tasks", "embedding", "--interval", "0.1")
    try:
        time.sleep(1.0)
        assert waiter.poll() is None, waiter.communicate()
        assert run("fetch", "--tasks", "embedding").code == ExitCode.OK
        out, err = waiter.communicate(timeout=30)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
    assert waiter.returncode == ExitCode.OK, err
    assert "ready: embedding: all-minilm-l6-v2" in out
    assert "waiting for a verified model of task embedding" in err
