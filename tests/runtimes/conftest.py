"""Fixtures for the runtime tests: tiny models loaded once per module, offline."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from hubless_fakehub.tiny import TinyModel
from hubless_server.runtimes import ModelRuntime, RuntimeOptions, runtime_class

LoadRuntime = Callable[..., ModelRuntime]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runtime tests run with the hub switched off (runtimes load with local_files_only
    anyway). Set per test, not at import: an import-time setting leaked into every test
    collected in the same session, and the e2e fetcher subprocesses then refused to fetch."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def load_runtime(model: TinyModel, dtype: str = "float32", cls: type | None = None) -> ModelRuntime:
    """Load ``model`` with the runtime class of its task (or ``cls``) on CPU."""
    runtime_cls = cls or runtime_class(model.task)
    runtime = runtime_cls(model.name, Path(model.path), RuntimeOptions("cpu", dtype))
    runtime.load()
    return runtime


@pytest.fixture(scope="module")
def loaded(tiny_models: dict[str, TinyModel]) -> LoadRuntime:
    """``loaded(name, dtype="float32")``: the tiny model loaded, cached for the module."""
    cache: dict[tuple[str, str], ModelRuntime] = {}

    def get(name: str, dtype: str = "float32") -> ModelRuntime:
        key = (name, dtype)
        if key not in cache:
            cache[key] = load_runtime(tiny_models[name], dtype)
        return cache[key]

    return get
