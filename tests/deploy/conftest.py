"""Fixtures of the deploy tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture
def shm_dirs() -> Iterator[Callable[[str], Path]]:
    """``make(prefix)``: a fresh, empty directory for a volume or a bind mount, removed after
    the test. In /dev/shm: outside /tmp, which the sandbox replaces by a tmpfs."""
    made: list[Path] = []

    def make(prefix: str) -> Path:
        made.append(Path(tempfile.mkdtemp(prefix=f"hubless-e2e-{prefix}-", dir="/dev/shm")))
        return made[-1]

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)
