"""One list of tasks: the fetcher's catalog and the server's settings use the volume's TASKS.

A task is added to :data:`hubless_volume.TASKS` and nowhere else; these tests fail if either
side spells its own list again, or if the default catalog and the server's view of it differ.
The server's task table (:mod:`hubless_server.core.tasks`: service, servicer, runtime per task)
must cover exactly the volume's tasks and the proto ``Task`` enum.
"""

from __future__ import annotations

from typing import Any

import pytest

import hubless_fetcher.catalog as fetcher_catalog
import hubless_server.core.flags as server_config
import hubless_server.core.tasks as server_tasks
import hubless_server.runtimes as server_runtimes
from hubless.v1 import common_pb2
from hubless_fetcher.catalog import Catalog
from hubless_fetcher.settings import PACKAGED_CATALOG, ConfigError
from hubless_server.services import SERVICERS
from hubless_server.services.wire import add_service
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
    assert server_config.TASKS == TASKS
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


def test_server_task_table_covers_the_volume_tasks_and_the_proto_enum() -> None:
    """The server table, config's TASKS, the proto Task enum (minus UNSPECIFIED) and the
    volume's TASKS name the same tasks, in the volume's order."""
    assert server_tasks.TASKS == TASKS
    assert server_config.TASKS == TASKS
    enum_values = {v for k, v in common_pb2.Task.items() if k != "TASK_UNSPECIFIED"}
    assert {spec.task for spec in server_tasks.TASK_SPECS} == enum_values
    for spec in server_tasks.TASK_SPECS:
        enum_name = common_pb2.Task.Name(spec.task)
        assert enum_name == "TASK_" + spec.name.upper().replace("-", "_")


class _Registrations:
    """Records what ``wire.add_service`` registers."""

    def __init__(self) -> None:
        self.services: list[str] = []

    def add_generic_rpc_handlers(self, handlers: tuple[Any, ...]) -> None:
        self.services += [handler.service_name() for handler in handlers]

    def add_registered_method_handlers(self, name: str, handlers: dict[str, Any]) -> None:
        return None


def test_every_task_has_a_service_servicer_and_runtime() -> None:
    for spec in server_tasks.TASK_SPECS:
        assert spec.service_name.startswith("hubless.v1.")
        assert spec.service_name.endswith("Service")
        servicer = SERVICERS[spec.name]
        assert servicer.task == spec.name
        for method in spec.service.methods:
            assert callable(getattr(servicer, method.name, None)), method.full_name
        registrations = _Registrations()
        add_service(registrations, spec.service, servicer.__new__(servicer))  # type: ignore[arg-type]
        assert registrations.services == [spec.service_name]
        assert spec.runtime in server_runtimes.KINDS
        assert server_runtimes.runtime_class(spec.name) is server_runtimes.KINDS[spec.runtime]
