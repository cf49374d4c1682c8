"""Live model updates over fake runtimes and a fake volume, through a real in-process server:
new commit swapped in under concurrent load with no failed request, removal and fallback, a
corrupt new version, explicit reload and SIGHUP, quick successive updates, a start while a
fetch moves files, the preference order, and the memory guard."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hubless.v1 import (
    conversation_pb2,
    conversation_pb2_grpc,
    embeddings_pb2,
    embeddings_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    sentiment_pb2,
    sentiment_pb2_grpc,
)
from hubless_server.core.values import parse_size
from hubless_server.models import load_retry
from hubless_server.models.memory import estimate_weights_bytes, safetensors_bytes
from hubless_server.observability import metrics
from hubless_volume import Manifest
from tests.server.conftest import StartFake
from tests.server.fakes import (
    FakeRuntime,
    fake_factory,
    fake_safetensors,
    make_fake_volume,
    remove_fake_model,
    update_fake_model,
)
from tests.server.harness import RunningServer, settings_for

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
EMBEDDER = "all-minilm-l6-v2"
SENTIMENT = "bert-multilingual-sentiment"


Serve = Callable[..., RunningServer]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """``serve(volume, *flags, wait=True)``: a server over fake runtimes on ``volume``."""
    FakeRuntime.reset()
    servers: list[RunningServer] = []

    def start(volume: Path, *flags: str, wait: bool = True) -> RunningServer:
        server = RunningServer(settings_for(volume, *flags), fake_factory, wait=wait)
        servers.append(server)
        return server

    yield start
    FakeRuntime.reset()
    for server in servers:
        server.stop()


def volume_of(server: RunningServer) -> Path:
    return Path(server.server.settings.models_dir)


def reload(server: RunningServer) -> None:
    """An explicit reload (what SIGHUP does), waited for."""
    server.call(server.server.reload_now())


def models(server: RunningServer) -> dict[str, models_pb2.ModelInfo]:
    stub = models_pb2_grpc.ModelsServiceStub(server.channel)
    return {m.name: m for m in stub.ListModels(models_pb2.ListModelsRequest(), timeout=5).models}


def health(server: RunningServer, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(server.channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def embed_commit(server: RunningServer) -> str:
    stub = embeddings_pb2_grpc.EmbeddingsServiceStub(server.channel)
    return stub.Embed(embeddings_pb2.EmbedRequest(texts=["x"]), timeout=10).model.commit


def reloads(model: str, result: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "hubless_model_reloads_total", {"model": model, "result": result}
    )
    return value or 0.0


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


async def hammer(
    port: int, stop: asyncio.Event, clients: int = 6
) -> tuple[list[list[tuple[str, str]]], list[BaseException]]:
    """``clients`` concurrent loops of Embed and AnalyzeSentiment until ``stop``; returns what
    each saw ((model, commit) per response) and every error."""
    errors: list[BaseException] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        embed = embeddings_pb2_grpc.EmbeddingsServiceStub(channel)
        sentiment = sentiment_pb2_grpc.SentimentServiceStub(channel)

        async def client(index: int) -> list[tuple[str, str]]:
            seen: list[tuple[str, str]] = []
            while not stop.is_set():
                try:
                    if index % 2:
                        response = await embed.Embed(
                            embeddings_pb2.EmbedRequest(texts=[f"text {index}", "two words"]),
                            timeout=10,
                        )
                    else:
                        response = await sentiment.AnalyzeSentiment(
                            sentiment_pb2.AnalyzeSentimentRequest(texts=["great"]), timeout=10
                        )
                except grpc.aio.AioRpcError as exc:
                    errors.append(exc)
                    continue
                seen.append((response.model.name, response.model.commit))
            return seen

        seen = await asyncio.gather(*(client(i) for i in range(clients)))
    return list(seen), errors


def test_new_commit_is_swapped_in_under_load_without_a_failed_request(
    start_fake: StartFake,
) -> None:
    server = start_fake(None, "--reload-interval", "0.2")
    volume = volume_of(server)
    before = Manifest.load(volume).models
    FakeRuntime.delay = 0.005  # requests overlap the swap
    FakeRuntime.load_delay = 0.3  # the new versions load while the old ones serve
    loaded_before = reloads(EMBEDDER, "loaded")
    health_seen: set[int] = set()
    commits: dict[str, str] = {}

    async def scenario() -> tuple[list[list[tuple[str, str]]], list[BaseException]]:
        stop = asyncio.Event()
        load = asyncio.ensure_future(hammer(server.port, stop))
        await asyncio.sleep(0.3)
        for name in (EMBEDDER, SENTIMENT):  # fetch --refresh: new commits, old ones pruned
            commits[name] = await asyncio.to_thread(update_fake_model, volume, name)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for service in ("", "hubless.v1.EmbeddingsService", "hubless.v1.SentimentService"):
                health_seen.add(await asyncio.to_thread(health, server, service))
            listed = await asyncio.to_thread(models, server)
            if all(
                listed[n].commit == c
                and listed[n].state == models_pb2.MODEL_STATE_READY
                and not listed[n].replacing_commit
                for n, c in commits.items()
            ):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # keep serving on the new versions for a while
        stop.set()
        return await load

    seen, errors = asyncio.run(scenario())
    assert errors == []
    assert health_seen == {SERVING}
    for per_client in seen:
        assert per_client
        name = per_client[0][0]
        order = [commit for _, commit in per_client]
        # each client sees the old commit, then the new one, never back
        assert order[0] == before[name].commit and order[-1] == commits[name]
        switch = order.index(commits[name])
        assert set(order[:switch]) == {before[name].commit} and set(order[switch:]) == {
            commits[name]
        }
    listed = models(server)
    assert listed[EMBEDDER].is_default and listed[SENTIMENT].is_default
    assert listed[EMBEDDER].loaded_at.seconds > 0
    assert reloads(EMBEDDER, "loaded") == loaded_before + 1


def test_listing_shows_the_version_being_replaced_and_the_old_one_is_released(
    start_fake: StartFake,
) -> None:
    server = start_fake([EMBEDDER], "--reload-interval", "0", "--tasks", "embedding")
    volume = volume_of(server)
    old_commit = embed_commit(server)
    old_runtime = weakref.ref(server.server.registry.records[EMBEDDER].runtime)
    gate = FakeRuntime.gate = threading.Event()  # hold the warm-up request of the new version
    new_commit = update_fake_model(volume, EMBEDDER)
    server.server.reload()
    wait_for(lambda: models(server)[EMBEDDER].replacing_commit == old_commit, 10, "the load")
    loading = models(server)[EMBEDDER]
    assert loading.commit == new_commit and loading.state == models_pb2.MODEL_STATE_LOADING
    assert loading.is_default  # the old version still answers the task
    assert health(server, "hubless.v1.EmbeddingsService") == SERVING
    gate.set()
    wait_for(lambda: models(server)[EMBEDDER].state == models_pb2.MODEL_STATE_READY, 10, "swap")
    wait_for(lambda: not models(server)[EMBEDDER].replacing_commit, 10, "the drain")
    assert embed_commit(server) == new_commit
    wait_for(lambda: gc.collect() >= 0 and old_runtime() is None, 10, "the old runtime freed")
    assert server.server.registry.in_transit() == ()


def test_removed_model_is_drained_and_its_task_falls_back(start_fake: StartFake) -> None:
    server = start_fake(["dialogpt-medium", "dialogpt-small"], "--tasks", "conversation")
    volume = volume_of(server)
    stub = conversation_pb2_grpc.ConversationServiceStub(server.channel)

    def reply() -> str:
        return stub.Reply(conversation_pb2.ReplyRequest(turns=["hi"]), timeout=10).model.name

    assert reply() == "dialogpt-medium"
    removed_before = reloads("dialogpt-medium", "removed")
    remove_fake_model(volume, "dialogpt-medium")
    reload(server)
    assert reply() == "dialogpt-small"
    listed = models(server)
    assert listed["dialogpt-medium"].state == models_pb2.MODEL_STATE_MISSING
    assert listed["dialogpt-small"].is_default
    assert reloads("dialogpt-medium", "removed") == removed_before + 1
    assert health(server, "hubless.v1.ConversationService") == SERVING
    metric = metrics.REGISTRY.get_sample_value(
        "hubless_model_ready", {"model": "dialogpt-medium", "task": "conversation"}
    )
    assert metric == 0

    remove_fake_model(volume, "dialogpt-small")  # the last one: the task stops serving
    reload(server)
    assert health(server, "hubless.v1.ConversationService") == NOT_SERVING
    assert health(server, "") == NOT_SERVING
    with pytest.raises(grpc.RpcError) as info:
        reply()
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE

    update_fake_model(volume, "dialogpt-small", version=3)  # installed again: served again
    reload(server)
    assert reply() == "dialogpt-small"
    assert health(server, "") == SERVING


def test_corrupt_new_version_leaves_the_old_one_serving(start_fake: StartFake) -> None:
    server = start_fake([EMBEDDER], "--tasks", "embedding")
    volume = volume_of(server)
    old_commit = embed_commit(server)
    failed_before = reloads(EMBEDDER, "failed")
    bad_commit = update_fake_model(volume, EMBEDDER, corrupt=True)  # old snapshot pruned
    reload(server)
    assert embed_commit(server) == old_commit  # from memory: its files are gone
    info = models(server)[EMBEDDER]
    assert info.state == models_pb2.MODEL_STATE_READY and info.commit == old_commit
    assert f"update to commit {bad_commit[:12]} failed" in info.error
    assert "corrupt install" in info.error and "keeps serving" in info.error
    assert reloads(EMBEDDER, "failed") == failed_before + 1
    assert health(server, "hubless.v1.EmbeddingsService") == SERVING

    server.call(server.server.reloader.check())  # unchanged manifest: not retried
    assert reloads(EMBEDDER, "failed") == failed_before + 1
    good_commit = update_fake_model(volume, EMBEDDER, version=3)  # a fixed entry: loaded
    reload(server)
    assert embed_commit(server) == good_commit
    assert models(server)[EMBEDDER].error == ""


def test_two_updates_in_quick_succession_end_on_the_last(start_fake: StartFake) -> None:
    server = start_fake([EMBEDDER], "--tasks", "embedding", "--reload-interval", "0.05")
    volume = volume_of(server)
    FakeRuntime.load_delay = 0.2
    update_fake_model(volume, EMBEDDER, version=2)
    time.sleep(0.1)  # the first is loading when the second lands (its files pruned)
    last = update_fake_model(volume, EMBEDDER, version=3)
    wait_for(lambda: embed_commit(server) == last, 15, "the last commit")
    wait_for(lambda: not models(server)[EMBEDDER].replacing_commit, 10, "the drains")
    info = models(server)[EMBEDDER]
    assert info.state == models_pb2.MODEL_STATE_READY and info.commit == last
    assert server.server.registry.in_transit() == ()


def test_start_while_files_are_missing_then_appear(
    serve: Serve, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(load_retry, "MISSING_FILE_BACKOFF_S", 0.2)
    volume = make_fake_volume(tmp_path / "v", [EMBEDDER, "distilbert-sst2"])
    snapshot = Manifest.load(volume).models[EMBEDDER].snapshot_dir(volume)
    aside = tmp_path / "aside"
    snapshot.rename(aside)  # a fetch is moving the files
    timer = threading.Timer(0.4, lambda: aside.rename(snapshot))
    timer.start()
    server = serve(volume, "--tasks", "embedding,sentiment", "--reload-interval", "0")
    timer.join()
    info = models(server)[EMBEDDER]
    assert info.state == models_pb2.MODEL_STATE_READY, info.error
    assert health(server, "") == SERVING


def test_failed_for_missing_files_is_retried_when_the_entry_changes(
    serve: Serve,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    monkeypatch.setattr(load_retry, "MISSING_FILE_RETRIES", 1)
    monkeypatch.setattr(load_retry, "MISSING_FILE_BACKOFF_S", 0.01)
    volume = make_fake_volume(tmp_path / "v", [EMBEDDER])
    shutil.rmtree(Manifest.load(volume).models[EMBEDDER].snapshot_dir(volume))
    server = serve(volume, "--tasks", "embedding", "--reload-interval", "0.05")
    info = models(server)[EMBEDDER]
    assert info.state == models_pb2.MODEL_STATE_FAILED
    assert health(server, "") == NOT_SERVING
    assert any("files missing" in r.getMessage() for r in caplog.records)
    fixed = update_fake_model(volume, EMBEDDER, version=2)  # the fetch finished
    wait_for(lambda: models(server)[EMBEDDER].commit == fixed, 10, "the retry")
    wait_for(lambda: health(server, "") == SERVING, 10, "SERVING")


def test_a_new_preferred_model_becomes_the_default(start_fake: StartFake) -> None:
    server = start_fake(["dialogpt-small"], "--tasks", "conversation", "--no-load-alternates")
    volume = volume_of(server)
    assert models(server)["dialogpt-small"].is_default
    update_fake_model(volume, "dialogpt-medium", version=1)  # installed live
    reload(server)
    listed = models(server)
    assert listed["dialogpt-medium"].is_default
    assert listed["dialogpt-medium"].state == models_pb2.MODEL_STATE_READY
    # --no-load-alternates: the superseded default is unloaded
    assert listed["dialogpt-small"].state == models_pb2.MODEL_STATE_SKIPPED
    assert reloads("dialogpt-small", "unloaded") >= 1
    remove_fake_model(volume, "dialogpt-medium")  # and back: the alternate is loaded again
    reload(server)
    listed = models(server)
    assert listed["dialogpt-small"].is_default
    assert listed["dialogpt-small"].state == models_pb2.MODEL_STATE_READY


def test_memory_guard_unloads_the_old_version_first(
    serve: Serve, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    volume = make_fake_volume(tmp_path / "v", [EMBEDDER])
    update_fake_model(volume, EMBEDDER, version=1, weights=1000)  # 4000 bytes as float32
    flags = ("--tasks", "embedding", "--reload-interval", "0", "--max-model-memory")
    roomy = serve(volume, *flags, "1M")
    update_fake_model(volume, EMBEDDER, version=2, weights=1000)
    reload(roomy)
    assert embed_commit(roomy) == Manifest.load(volume).models[EMBEDDER].commit
    assert not any("does not fit" in r.getMessage() for r in caplog.records)

    tight = serve(volume, *flags, "6000")  # 4000 + 4000 > 6000
    FakeRuntime.load_delay = 0.5
    new = update_fake_model(volume, EMBEDDER, version=3, weights=1000)
    tight.server.reload()
    wait_for(lambda: health(tight, "hubless.v1.EmbeddingsService") == NOT_SERVING, 5, "the gap")
    wait_for(lambda: embed_commit_or_none(tight) == new, 10, "the new version")
    assert health(tight, "hubless.v1.EmbeddingsService") == SERVING
    assert any("does not fit" in r.getMessage() for r in caplog.records)


def embed_commit_or_none(server: RunningServer) -> str | None:
    try:
        return embed_commit(server)
    except grpc.RpcError:
        return None


def test_weights_estimate_and_sizes(tmp_path: Path) -> None:
    assert parse_size("8G") == 8 << 30 and parse_size("512Mi") == 512 << 20
    assert parse_size("0") == 0 and parse_size("1.5GiB") == 3 << 29
    with pytest.raises(ValueError):
        parse_size("lots")
    path = tmp_path / "w.safetensors"
    path.write_bytes(fake_safetensors(10))
    assert safetensors_bytes(path, 4) == 40 and safetensors_bytes(path, 2) == 20
    volume = make_fake_volume(tmp_path / "v", [EMBEDDER])
    update_fake_model(volume, EMBEDDER, weights=100)
    entry = Manifest.load(volume).models[EMBEDDER]
    assert estimate_weights_bytes(entry, volume, "cpu", "bfloat16") == 400  # fp32 on CPU
    assert estimate_weights_bytes(entry, volume, "cuda:0", "float16") == 200
    (entry.snapshot_dir(volume) / "model.safetensors").write_bytes(b"garbage!" * 4)
    size = next(f.size for f in entry.files if f.path == "model.safetensors")
    assert estimate_weights_bytes(entry, volume, "cpu", "float32") == size * 2  # worst case


def test_sighup_reloads_a_running_server(tmp_path: Path) -> None:
    """``hubless-serve`` (fake runtimes) with polling off: SIGHUP makes it see a new commit."""
    volume = make_fake_volume(tmp_path / "v", [EMBEDDER])
    port_file = tmp_path / "port"
    code = (
        "import sys, hubless_server.models.registry as r, tests.server.fakes as f;"
        "r._default_runtime_factory = f.fake_factory;"
        "from hubless_server.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    args = ["--models-dir", str(volume), "--host", "127.0.0.1", "--port", "0"]
    args += ["--port-file", str(port_file), "--metrics-port", "0", "--tasks", "embedding"]
    args += ["--reload-interval", "0", "--log-format", "json"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBLESS_")}
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], env=env, cwd=root, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: port_file.exists() and port_file.read_text().strip() != "", 60, "port")
        with grpc.insecure_channel(f"127.0.0.1:{int(port_file.read_text())}") as channel:
            stub = embeddings_pb2_grpc.EmbeddingsServiceStub(channel)

            def commit() -> str:
                try:
                    return stub.Embed(
                        embeddings_pb2.EmbedRequest(texts=["x"]), timeout=5
                    ).model.commit
                except grpc.RpcError:
                    return ""

            wait_for(lambda: commit() != "", 60, "the model")
            new = update_fake_model(volume, EMBEDDER)
            time.sleep(0.5)
            assert commit() != new  # polling is off
            proc.send_signal(signal.SIGHUP)
            wait_for(lambda: commit() == new, 20, "the reload")
            assert proc.poll() is None  # SIGHUP did not end it
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "reload requested" in err and "swapped in" in err


def test_reload_logs_one_line_per_change(
    start_fake: StartFake, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_fake([EMBEDDER, "dialogpt-small"], "--tasks", "embedding,conversation")
    volume = volume_of(server)
    caplog.set_level(logging.INFO, logger="hubless_server.models.reload")
    caplog.clear()
    update_fake_model(volume, EMBEDDER)
    remove_fake_model(volume, "dialogpt-small")
    reload(server)
    lines = [r.getMessage() for r in caplog.records if r.name == "hubless_server.models.reload"]
    assert sum("swapped in" in m for m in lines) == 1
    assert sum("removed from the volume" in m for m in lines) == 1
