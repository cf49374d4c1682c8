"""Fixtures of the fetcher tests: the local hub mirror (``tests/support``), a fault proxy in
front of it, and a runner for the CLI with fast retry settings."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hubless_fakehub import HubMirror
from hubless_fakehub.proxy import FaultProxy
from hubless_fetcher.cli import main
from hubless_fetcher.settings import PACKAGED_CATALOG

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def hub(hub_mirror: HubMirror) -> HubMirror:
    """The shared fixtures' local hub mirror (ten tiny models, decoys included)."""
    return hub_mirror


@pytest.fixture
def proxy(hub: HubMirror) -> Iterator[FaultProxy]:
    with FaultProxy(hub.endpoint) as fault_proxy:
        yield fault_proxy


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    """A copy of the packaged catalog in a temp folder (``lock`` writes beside it)."""
    path = tmp_path / "catalog" / "catalog.toml"
    path.parent.mkdir()
    path.write_text(PACKAGED_CATALOG.read_text("utf-8"), "utf-8")
    return path


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def env(proxy: FaultProxy, catalog: Path, models_dir: Path) -> dict[str, str]:
    """Environment of a fetcher run against the proxy, with retries in milliseconds."""
    inherited = {k: os.environ[k] for k in ("PATH", "PYTHONPATH") if k in os.environ}
    return {
        **inherited,  # a spawned CLI runs the code under test
        "HF_HOME": os.environ["HF_HOME"],
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_ENDPOINT": proxy.endpoint,
        "HUBLESS_CATALOG": str(catalog),
        "HUBLESS_MODELS_DIR": str(models_dir),
        "HUBLESS_RETRIES": "4",
        "HUBLESS_RETRY_WAIT": "0.01",
        "HUBLESS_RETRY_MAX_WAIT": "0.05",
        "HUBLESS_TIMEOUT": "2",
        "HUBLESS_DISK_MARGIN": "0",
    }


@dataclass
class Result:
    code: int
    out: str
    err: str


Run = Callable[..., Result]


@pytest.fixture
def run(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> Run:
    """``run("fetch", "x", env_overrides..., free_space=...)`` calls the CLI in-process."""

    def call(*argv: str, free_space: Callable[[Path], int] | None = None, **extra: str) -> Result:
        capsys.readouterr()
        kwargs = {"free_space": free_space} if free_space else {}
        code = main(list(argv), env={**env, **extra}, **kwargs)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return call


def spawn(env: dict[str, str], *argv: str) -> subprocess.Popen[str]:
    """The CLI as a separate process (``python -m hubless_fetcher``)."""
    return subprocess.Popen(
        [sys.executable, "-m", "hubless_fetcher", *argv],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
