"""The CLI itself: ``--help`` lists every exit code and environment variable (from their one
table each), every argument has help, a closed stdout (``| head``) is quiet, and a suggestion
only ever names a model of the catalog."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hubless_fetcher import __version__
from hubless_fetcher.cli import SEE_MAIN_HELP, _parser, main
from hubless_fetcher.errors import EXIT_CODES, ExitCode
from hubless_fetcher.settings import ENVIRONMENT
from tests.fetcher.conftest import REPO_ROOT

SOURCES = REPO_ROOT / "fetcher" / "src" / "hubless_fetcher"


def help_text(*argv: str) -> str:
    """``hubless-fetch [argv] --help`` as a user sees it (a separate process)."""
    result = subprocess.run(
        [sys.executable, "-m", "hubless_fetcher", *argv, "--help"],
        env={**os.environ, "COLUMNS": "100"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def words(text: str) -> str:
    return " ".join(text.split())


def test_help_lists_every_exit_code_with_its_meaning() -> None:
    assert set(EXIT_CODES) == set(ExitCode), "every exit code has a meaning"
    text = help_text()
    codes = text[text.index("exit codes:") :]
    for code, meaning in EXIT_CODES.items():
        assert re.search(rf"(?m)^\s+{int(code)}\s", codes), code
        assert words(meaning) in words(codes), code


def test_help_names_every_environment_variable_the_fetcher_reads() -> None:
    """Every HF_*/HUBLESS_*/TRANSFORMERS_* name the sources quote is in the one table, and
    the table is in --help; the hub's own and the token included."""
    quoted: set[str] = set()
    for path in SOURCES.glob("*.py"):
        quoted |= set(re.findall(r"[\"'`]((?:HUBLESS|HF|TRANSFORMERS)_[A-Z_]+)", path.read_text()))
    assert {"HF_ENDPOINT", "HF_TOKEN", "HUBLESS_MODELS_DIR"} <= quoted
    assert quoted <= set(ENVIRONMENT), sorted(quoted - set(ENVIRONMENT))
    text = help_text()
    section = text[text.index("environment variables") : text.index("exit codes:")]
    for name, meaning in ENVIRONMENT.items():
        assert re.search(rf"(?m)^\s+{name}\s", section), name
        assert words(meaning) in words(section), name


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = _parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_argument_has_help(command: str) -> None:
    """Positionals (BUNDLE, NAME...) included; and each command's help says where the
    environment variables and exit codes are."""
    parser = _subcommands()[command]
    for action in parser._actions:
        assert action.help and action.help != argparse.SUPPRESS, (command, action.dest)
    text = help_text(command)
    assert words(SEE_MAIN_HELP) in words(text)
    for positional in (a for a in parser._actions if not a.option_strings):
        assert f"{positional.metavar}" in text and words(positional.help) in words(text)


def test_version_is_kept() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hubless_fetcher", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout.strip() == f"hubless-fetch {__version__}"


def test_a_closed_stdout_is_quiet(volume_factory, tmp_path: Path) -> None:
    """``hubless-fetch list --json | head -1``: the reader is gone before the output is
    written; no BrokenPipeError, no traceback, exit 141 (as after SIGPIPE)."""
    models_dir = volume_factory(["distilbert-sst2", "all-minilm-l6-v2"])
    read, write = os.pipe()
    os.close(read)  # the reader exited already
    try:
        result = subprocess.run(
            [sys.executable, "-m", "hubless_fetcher", "list", "--json"],
            env={**os.environ, "HUBLESS_MODELS_DIR": str(models_dir)},
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write)
    assert result.returncode == ExitCode.STDOUT_CLOSED == 141
    assert result.stderr == ""


def test_a_pipe_that_reads_everything_is_unaffected(volume_factory) -> None:
    models_dir = volume_factory(["distilbert-sst2"])
    result = subprocess.run(
        f"{sys.executable} -m hubless_fetcher list --json | head -1",
        shell=True,
        env={**os.environ, "HUBLESS_MODELS_DIR": str(models_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout == "[\n" and "Error" not in result.stderr


def test_an_unknown_name_gets_a_suggestion_from_the_catalog_only(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    env = {"HUBLESS_MODELS_DIR": str(tmp_path / "models"), "HF_HUB_OFFLINE": "1"}
    assert main(["fetch", "distilbert-sst"], env=env) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "not in the catalog: distilbert-sst" in err
    assert "did you mean distilbert-sst2?" in err
    assert main(["fetch", "nosuch"], env=env) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "not in the catalog: nosuch" in err and "did you mean" not in err


def test_verify_suggests_a_fetch_only_for_catalog_names(
    volume_factory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing catalog model: `fetch --deep` of it. A name the catalog lacks: no fetch
    command (it would fail), a close catalog name instead."""
    models_dir = volume_factory(["all-minilm-l6-v2"])
    env = {"HUBLESS_MODELS_DIR": str(models_dir)}
    code = main(["verify", "all-minilm-l6-v2", "distilbert-sst2", "distilbert-sst"], env=env)
    assert code == ExitCode.CORRUPT
    captured = capsys.readouterr()
    assert "all-minilm-l6-v2: ok" in captured.out
    assert "run `hubless-fetch fetch --deep distilbert-sst2` to repair" in captured.err
    assert "not in the catalog: distilbert-sst; distilbert-sst: did you mean" in captured.err
    assert "fetch --deep distilbert-sst " not in captured.err + " "
    assert main(["verify", "nosuch"], env=env) == ExitCode.CORRUPT
    err = capsys.readouterr().err
    assert "hubless-fetch fetch" not in err and "did you mean" not in err
    assert "not in the catalog: nosuch" in err
