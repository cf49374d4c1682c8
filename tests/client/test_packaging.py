"""The client distribution as users install it: a wheel built from clients/python carries the
PEP 561 ``py.typed`` marker (so mypy and pyright read its annotations), the generated stubs'
``.pyi`` files and both console scripts. Built offline from a copy of the sources
(``--no-build-isolation``: the setuptools already installed)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_package_in_use_is_typed() -> None:
    assert resources.files("hubless_client").joinpath("py.typed").is_file()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "client"
    shutil.copytree(
        REPO_ROOT / "clients/python",
        source,
        ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"),
    )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", work, source],
        check=True,
        timeout=300,
    )
    (built,) = work.glob("hubless_client-*.whl")
    return built


def test_the_wheel_ships_the_marker_the_stubs_and_the_scripts(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    assert "hubless_client/py.typed" in names
    assert "hubless/v1/embeddings_pb2.pyi" in names and "hubless/v1/common_pb2.pyi" in names
    assert "hubless_client/fleet.py" in names and "hubless_client/cli.py" in names
    assert "hubless-client = hubless_client.cli:main" in scripts
    assert "hubless-health-probe = hubless_client.probe:main" in scripts


def test_the_installed_package_has_py_typed(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "install"),
            *("--no-deps", "--no-index", "--target", target, wheel),
        ],
        check=True,
        timeout=300,
    )
    assert (target / "hubless_client" / "py.typed").is_file()
    assert (target / "hubless" / "v1" / "models_pb2.pyi").is_file()
