"""The default catalog shipped with the volume format (``catalog.toml``, package data).

The fetcher installs it when no ``HUBLESS_CATALOG``/``--catalog`` is given; the server reads
only its per-task preference order, to name the models that are MISSING from an empty volume.
Both read it from here, so the server never reaches into the fetcher's package. Parsing and
validating a catalog stays the fetcher's job (``hubless_fetcher.catalog``).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from hubless_volume.safeio import MAX_CATALOG_BYTES, read_regular_file

CATALOG_NAME = "catalog.toml"


def catalog_file() -> Path:
    """Path of the packaged default catalog (its lock file is ``catalog.lock.json`` beside it)."""
    return Path(__file__).with_name(CATALOG_NAME)


def default_preference() -> dict[str, list[str]]:
    """The default catalog's per-task preference order: its ``[tasks]`` table, then every
    model it does not rank, in catalog order. Empty if the file is unreadable."""
    try:
        raw = read_regular_file(catalog_file(), MAX_CATALOG_BYTES)
        data = tomllib.loads(raw.decode("utf-8"))
    except (OSError, ValueError):
        return {}
    return preference_of(data)


def preference_of(data: dict[str, Any]) -> dict[str, list[str]]:
    """Per-task order of a parsed catalog (ill-typed parts are skipped, not fatal)."""
    tasks: dict[str, list[str]] = {}
    raw = data.get("tasks", {})
    for task, names in raw.items() if isinstance(raw, dict) else []:
        if isinstance(names, list):
            tasks[str(task)] = [str(n) for n in dict.fromkeys(names) if isinstance(n, str)]
    models = data.get("models", [])
    for model in models if isinstance(models, list) else []:
        if not isinstance(model, dict):
            continue
        name, task = model.get("name"), model.get("task")
        if isinstance(name, str) and isinstance(task, str):
            ranked = tasks.setdefault(task, [])
            if name not in ranked:
                ranked.append(name)
    return tasks
