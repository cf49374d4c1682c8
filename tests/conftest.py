"""Shared fixtures: tiny models, models volumes and a local hub mirror.

The whole session runs with an isolated, empty ``HF_HOME`` and telemetry off, so nothing reads
or writes the user's Hugging Face cache or token. Fixtures cost nothing until a test asks for
them; the tiny models are built once and cached on disk (``<repo>/.cache/tiny-models/``).

Hub offline mode is per test, never per session: every test starts with ``HF_HUB_OFFLINE``,
``TRANSFORMERS_OFFLINE`` and ``HF_DATASETS_OFFLINE`` unset and ``huggingface_hub``'s parsed flag
off, whatever an import did before (``import hubless_server`` forces offline mode process-wide,
which would otherwise break every later test that talks to a local mirror, in-process or via a
subprocess inheriting the environment). A test that wants offline mode sets it with
``monkeypatch`` (or a directory-level autouse fixture doing so).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_MODELS_CACHE = REPO_ROOT / ".cache" / "tiny-models"

# Before anything imports huggingface_hub (it reads these once, at import).
_HF_HOME = tempfile.mkdtemp(prefix="hubless-test-hf-home-")
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
for _var in (
    *_OFFLINE_VARS,
    "HF_ENDPOINT",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_XET_CACHE",
    "HF_ASSETS_CACHE",
    "TRANSFORMERS_CACHE",
    "SENTENCE_TRANSFORMERS_HOME",
):
    os.environ.pop(_var, None)
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from hubless_fakehub import HubMirror  # noqa: E402
from hubless_fakehub.tiny import TinyModel, cached_tiny_models  # noqa: E402
from tests.support.volume import make_volume  # noqa: E402


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_HF_HOME, ignore_errors=True)


def reset_hub_offline_mode() -> None:
    """Unset the hub offline switches in the environment and in ``huggingface_hub``."""
    for var in _OFFLINE_VARS:
        os.environ.pop(var, None)
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = False  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _hub_online_by_default() -> None:
    """Each test starts with hub offline mode off (see the module docstring)."""
    reset_hub_offline_mode()


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, TinyModel]:
    """Catalog name -> tiny stand-in model (one per catalog entry), built once and cached
    across sessions.

    The directories are shared: treat them as read-only.
    """
    return cached_tiny_models(TINY_MODELS_CACHE)


@pytest.fixture
def hub_mirror(tiny_models: dict[str, TinyModel]) -> Iterator[HubMirror]:
    """A fresh hub mirror on 127.0.0.1 serving the tiny models (decoys included) at their
    real repo ids; stopped after the test. Tests may change it (``update_repo``, ``add_fault``);
    ``hub_mirror.requests`` holds only this test's requests."""
    with HubMirror(tiny_repos(tiny_models)) as mirror:
        yield mirror


@pytest.fixture(scope="session")
def session_hub_mirror(tiny_models: dict[str, TinyModel]) -> Iterator[HubMirror]:
    """Like ``hub_mirror`` but one for the whole session, for module- or session-scoped
    fixtures (e.g. a server fetched once). Shared: do not change its repos or faults."""
    with HubMirror(tiny_repos(tiny_models)) as mirror:
        yield mirror


@pytest.fixture
def hub_mirror_factory(
    tiny_models: dict[str, TinyModel],
) -> Iterator[Callable[..., HubMirror]]:
    """``make(repos=None, **options)`` starts another mirror (stopped after the test) serving
    ``{repo_id: dir}`` (every tiny model by default), with ``HubMirror`` options such as
    ``private=[...]``, ``gated=[...]``, ``tokens=[...]``, ``lfs_redirect=True``."""
    mirrors: list[HubMirror] = []

    def make(repos: dict[str, Path] | None = None, **options: Any) -> HubMirror:
        mirror = HubMirror(tiny_repos(tiny_models) if repos is None else repos, **options)
        mirrors.append(mirror)
        return mirror.start()

    yield make
    for mirror in mirrors:
        mirror.stop()


def tiny_repos(tiny_models: dict[str, TinyModel]) -> dict[str, Path]:
    """``{repo_id: dir}`` of the tiny models, what the mirrors serve."""
    return {m.repo_id: m.path for m in tiny_models.values()}


@pytest.fixture
def volume_factory(
    tiny_models: dict[str, TinyModel], tmp_path: Path
) -> Callable[[list[str] | None], Path]:
    """``make(names=None)`` returns a fresh volume in ``tmp_path`` with those tiny models
    installed (all by default), the catalog's ``[tasks]`` table as preference order."""
    counter = iter(range(1_000_000))

    def make(names: list[str] | None = None) -> Path:
        chosen = list(tiny_models) if names is None else names
        unknown = [name for name in chosen if name not in tiny_models]
        if unknown:
            raise KeyError(f"no tiny model named {unknown}; have {sorted(tiny_models)}")
        dest = tmp_path / f"volume-{next(counter)}"
        return make_volume(dest, [tiny_models[name] for name in chosen])

    return make
