"""Fixtures for the runtime tests: tiny models loaded once per module, offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from collections.abc import Callable
from pathlib import Path

import pytest

from hubless_server.runtimes import ModelRuntime, RuntimeOptions, runtime_class
from tests.support.tiny_models import TinyModel

LoadRuntime = Callable[..., ModelRuntime]


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
