"""The registry applies the volume format's checks before it loads: a hostile manifest entry
is FAILED with the field named, nothing is loaded from outside the volume, and the other models
are served."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from hubless_server.models.registry import Registry, State
from hubless_volume import MANIFEST_NAME
from tests.server.fakes import FakeRuntime, fake_factory, make_fake_volume
from tests.server.harness import settings_for


class _Batcher:
    def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


def _load(volume: Path) -> tuple[Registry, list[Path]]:
    """A registry over ``volume`` with fake runtimes, loaded; and every path a runtime was
    given."""
    paths: list[Path] = []

    def factory(task: str) -> Any:
        base = fake_factory(task)

        class Recording(base):  # type: ignore[misc, valid-type]
            def __init__(self, name: str, path: Path, options: Any) -> None:
                paths.append(Path(path))
                super().__init__(name, path, options)

        return Recording

    registry = Registry(
        settings_for(volume),
        "cpu",
        lambda name, runtime: _Batcher(),  # type: ignore[arg-type, return-value]
        factory,
    )
    asyncio.run(registry.load_all())
    return registry, paths


def test_hostile_entry_is_failed_and_nothing_outside_is_loaded(tmp_path: Path) -> None:
    FakeRuntime.reset()
    volume = make_fake_volume(
        tmp_path / "volume", ["twitter-roberta-sentiment", "distilbert-sst2", "all-minilm-l6-v2"]
    )
    outside = tmp_path / "outside"  # a model the hostile entry points at
    outside.mkdir()
    (outside / "config.json").write_text('{"name": "evil"}\n')
    data = json.loads((volume / MANIFEST_NAME).read_text())
    data["models"]["distilbert-sst2"]["commit"] = "../../../../outside"
    data["models"]["all-minilm-l6-v2"]["files"][0]["path"] = str(outside / "config.json")
    (volume / MANIFEST_NAME).write_text(json.dumps(data))

    registry, paths = _load(volume)

    evil = registry.records["distilbert-sst2"]
    assert evil.state is State.FAILED and evil.entry is None
    assert "invalid manifest entry" in evil.error
    assert "models['distilbert-sst2'].commit" in evil.error
    absolute = registry.records["all-minilm-l6-v2"]
    assert absolute.state is State.FAILED
    assert "models['all-minilm-l6-v2'].files[0].path" in absolute.error
    assert "is absolute" in absolute.error
    assert registry.records["twitter-roberta-sentiment"].state is State.READY  # still served
    assert registry.default("sentiment") is registry.records["twitter-roberta-sentiment"]
    assert "invalid manifest entry" in registry.unavailable_message("embedding")
    real_volume = volume.resolve()
    assert paths and all(real_volume in p.resolve().parents for p in paths)
    FakeRuntime.reset()


def test_manifest_of_the_wrong_shape_serves_nothing_and_says_why(tmp_path: Path) -> None:
    volume = make_fake_volume(tmp_path / "volume", ["distilbert-sst2"])
    (volume / MANIFEST_NAME).write_text(json.dumps({"version": 1, "models": []}))
    registry, paths = _load(volume)
    assert paths == []
    assert "models: is list" in registry.manifest_error
    assert registry.records["distilbert-sst2"].state is State.MISSING


def test_manifest_that_links_out_of_the_volume_is_refused_unread(tmp_path: Path) -> None:
    """A manifest is a regular file inside the volume: a link to a valid manifest elsewhere is
    refused (and counted), nothing is loaded from it."""
    from hubless_server.observability import metrics

    volume = make_fake_volume(tmp_path / "volume", ["distilbert-sst2"])
    elsewhere = tmp_path / "elsewhere.json"
    (volume / MANIFEST_NAME).rename(elsewhere)
    (volume / MANIFEST_NAME).symlink_to(elsewhere)
    before = metrics.REGISTRY.get_sample_value(
        "hubless_manifest_errors_total", {"reason": "unreadable"}
    )
    registry, paths = _load(volume)
    assert paths == []
    assert "outside the volume" in registry.manifest_error
    assert registry.records["distilbert-sst2"].state is State.MISSING
    after = metrics.REGISTRY.get_sample_value(
        "hubless_manifest_errors_total", {"reason": "unreadable"}
    )
    assert (after or 0) == (before or 0) + 1
