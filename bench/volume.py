"""The benchmarks' models volumes, installed offline with :mod:`hubless_fakehub.volume` (the
same helper the tests use)."""

from __future__ import annotations

from pathlib import Path

from hubless_fakehub.real_models import REAL_MINILM_NAME
from hubless_fakehub.volume import install_real_minilm, installed
from hubless_volume import default_preference

# The default catalog's per-task preference order (hubless_volume's catalog.toml).
CATALOG_TASKS: dict[str, list[str]] = default_preference()


def ensure_minilm_volume(models_dir: Path) -> Path:
    """A volume holding only the real all-MiniLM-L6-v2 (created once)."""
    if REAL_MINILM_NAME not in installed(models_dir):
        install_real_minilm(models_dir, tasks=CATALOG_TASKS)
    return models_dir
