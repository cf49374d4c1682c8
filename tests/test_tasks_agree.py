"""One list of tasks: the fetcher's catalog and the server's settings use the volume's TASKS.

A task is added to :data:`hubless_volume.TASKS` and nowhere else; these tests fail if either
side spells its own list again, or if the default catalog and the server's view of it differ.
"""

from __future__ import annotations

import pytest

import hubless_fetcher.catalog as fetcher_catalog
import hubless_server.config as server_config
from hubless_fetcher.catalog import Catalog
from hubless_fetcher.settings import PACKAGED_CATALOG, ConfigError
from hubless_volume import TASKS, catalog_file, default_preference


def test_the_volume_names_six_tasks() -> None:
    assert TASKS == (
        "emotion",
        "sentiment",
        "zero-shot",
        "summarization",
        "conversation",
        "embedding",
    )


def test_fetcher_catalog_uses_the_volume_tasks() -> None:
    assert fetcher_catalog.TASKS is TASKS
    catalog = Catalog.load(PACKAGED_CATALOG)
    assert set(catalog.tasks) == set(TASKS)
    assert {m.task for m in catalog.models.values()} == set(TASKS)


def test_fetcher_catalog_rejects_a_task_the_volume_does_not_know() -> None:
    data = {"models": [{"name": "x", "repo_id": "org/x", "task": "translation"}]}
    with pytest.raises(ConfigError, match="unknown task 'translation'"):
        Catalog.from_dict(data)


def test_server_config_uses_the_volume_tasks() -> None:
    assert server_config.TASKS is TASKS
    settings = server_config.load_settings(["--models-dir", "/m"], {})
    assert settings.tasks == TASKS
    with pytest.raises(server_config.ConfigError):
        server_config.load_settings(["--models-dir", "/m", "--tasks", "translation"], {})


def test_fetcher_default_catalog_is_the_volume_one() -> None:
    assert catalog_file() == PACKAGED_CATALOG
    assert catalog_file().is_file()


def test_server_default_preference_is_the_fetcher_catalog_order() -> None:
    """What the server names MISSING on an empty volume is the order a fetch would record."""
    assert default_preference() == Catalog.load(catalog_file()).tasks
