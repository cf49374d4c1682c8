"""``hubless_model_info``: one series per served model version, through a real in-process
server over fake runtimes: the commit, backend and dtype of what serves, the old commit gone
once a live update swapped the new one in, nothing for a removed model, ``signed`` only where
``--trusted-key`` checked a recorded signature, and servers sharing a process keeping their
own series."""

from __future__ import annotations

import hashlib
from pathlib import Path

from prometheus_client import generate_latest

from hubless_server.app import HublessServer
from hubless_server.models.records import ModelRecord, State
from hubless_server.observability import metrics
from hubless_server.observability.metrics import ServedModels
from hubless_volume import Manifest
from tests.server.conftest import StartFake
from tests.server.fakes import (
    FakeRuntime,
    fake_factory,
    make_fake_volume,
    remove_fake_model,
    update_fake_model,
)
from tests.server.harness import RunningServer, settings_for

EMBEDDER = "all-minilm-l6-v2"
CHAT = ("dialogpt-medium", "dialogpt-small")


def info_series(model: str) -> list[dict[str, str]]:
    """The label sets of ``hubless_model_info`` for ``model`` (each with value 1)."""
    found = []
    for family in metrics.REGISTRY.collect():
        if family.name != "hubless_model_info":
            continue
        for sample in family.samples:
            if sample.labels["model"] == model:
                assert sample.value == 1
                found.append(dict(sample.labels))
    return found


def commit_of(name: str, version: int = 1) -> str:
    """The commit the fake volume gives ``version`` of ``name`` (tests.server.fakes)."""
    seed = name if version == 1 else f"{name}@{version}"
    return hashlib.sha1(seed.encode()).hexdigest()


def test_each_served_model_has_one_series_with_its_commit(start_fake: StartFake) -> None:
    start_fake([EMBEDDER, *CHAT], "--tasks", "embedding,conversation")
    assert info_series(EMBEDDER) == [
        {
            "model": EMBEDDER,
            "task": "embedding",
            "commit": commit_of(EMBEDDER),
            "backend": "torch",
            "dtype": "float32",
            "signed": "false",
        }
    ]
    for name in CHAT:  # the alternate is loaded too: it answers when asked for by name
        assert [s["commit"] for s in info_series(name)] == [commit_of(name)]
    assert info_series("bart-large") == []  # not served (its task is not)
    text = generate_latest(metrics.REGISTRY).decode()  # what /metrics serves
    assert f'commit="{commit_of(EMBEDDER)}"' in text
    assert f'hubless_model_info{{backend="torch",commit="{commit_of(EMBEDDER)}"' in text


def test_a_live_update_relabels_and_a_removal_clears(tmp_path: Path) -> None:
    FakeRuntime.reset()
    volume = make_fake_volume(tmp_path / "volume", [*CHAT])
    server = RunningServer(settings_for(volume, "--tasks", "conversation"), fake_factory)
    try:
        new = update_fake_model(volume, "dialogpt-medium", version=2)
        server.call(server.server.reload_now())
        assert [s["commit"] for s in info_series("dialogpt-medium")] == [new]  # never two
        remove_fake_model(volume, "dialogpt-medium")
        server.call(server.server.reload_now())
        assert info_series("dialogpt-medium") == []
        small = [s["commit"] for s in info_series("dialogpt-small")]
        assert small == [commit_of("dialogpt-small")]
    finally:
        server.stop()
    assert info_series("dialogpt-small") == []  # a stopped server shows nothing


def test_a_failed_load_has_no_series(start_fake: StartFake) -> None:
    FakeRuntime.fail_load = {"dialogpt-medium"}
    start_fake([*CHAT], "--tasks", "conversation")
    assert info_series("dialogpt-medium") == []
    assert len(info_series("dialogpt-small")) == 1


def test_signed_is_what_the_trusted_key_verified_at_load(tmp_path: Path) -> None:
    """``signed`` is "true" for a version whose signature ``--trusted-key`` verified when it
    loaded (``ModelRecord.signed``), "false" for one nobody checked."""
    volume = make_fake_volume(tmp_path / "volume", [EMBEDDER, "distilbert-sst2"])
    manifest = Manifest.load(volume)
    records = {
        name: ModelRecord(name, e.task, e, State.READY, backend="onnx", dtype="float32")
        for name, e in manifest.models.items()
    }
    records[EMBEDDER].signed = True
    records["bart-large"] = ModelRecord("bart-large", "summarization", None, State.MISSING)

    class Registry:
        pass

    registry = Registry()
    registry.records = records  # type: ignore[attr-defined]
    server = HublessServer(settings_for(volume))
    served = {row[0]: row[5] for row in server._served(registry)}  # type: ignore[arg-type]
    assert served == {EMBEDDER: True, "distilbert-sst2": False}


def test_servers_in_one_process_keep_their_own_series() -> None:
    first, second = ServedModels(), ServedModels()
    first.update([("m-first", "embedding", "a" * 40, "onnx", "float32", True)])
    second.update([("m-second", "embedding", "b" * 40, "torch", "bfloat16", False)])
    assert info_series("m-first")[0]["signed"] == "true"
    second.update([("m-second", "embedding", "c" * 40, "torch", "bfloat16", False)])
    assert [s["commit"] for s in info_series("m-second")] == ["c" * 40]
    assert len(info_series("m-first")) == 1  # untouched by the other server
    first.clear()
    second.clear()
    assert info_series("m-first") == info_series("m-second") == []
