"""Fixtures of the end-to-end tests: volumes filled by the real fetcher from the local mirror."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from hubless_fakehub import HubMirror
from hubless_fakehub.tiny import TinyModel
from tests.e2e import procs


@pytest.fixture(scope="session")
def fetch_volume(
    session_hub_mirror: HubMirror, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Path]:
    """``fetch(*names)``: a new volume filled by ``hubless-fetch fetch`` from the session's
    mirror of the tiny models (every catalog model when no names are given)."""

    def fetch(*names: str) -> Path:
        root = tmp_path_factory.mktemp("e2e-volume")
        volume = root / "models"
        procs.fetch(volume, session_hub_mirror.endpoint, names, hf_home=root / "hf-home")
        return volume

    return fetch


@pytest.fixture(scope="session")
def labels(tiny_models: dict[str, TinyModel]) -> dict[str, tuple[str, ...]]:
    """Catalog name -> the model's labels (id order)."""
    return {name: model.labels for name, model in tiny_models.items()}
