"""Volume files are files: what sits at the manifest's path (a FIFO, a link to /dev/zero,
nothing at all) never freezes the ports, fills the memory or unloads the models, at startup
or while serving; and a model file that is a FIFO does not hang the weights estimate.

Every call here has a deadline: before the fix, a FIFO manifest blocked the event loop in
``open`` (the reload check and the startup plan read it there) and every port stopped
answering; a link to /dev/zero read until the memory ran out; a vanished manifest unloaded
every model at the next check."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hubless.v1 import embeddings_pb2, embeddings_pb2_grpc, models_pb2, models_pb2_grpc
from hubless_server.models.load_retry import replan_one
from hubless_server.models.memory import estimate_weights_bytes
from hubless_server.models.registry import Registry, State
from hubless_server.observability import metrics
from hubless_volume import MANIFEST_NAME, FileRecord, ModelEntry
from tests.server.fakes import FakeRuntime, fake_factory, make_fake_volume, update_fake_model
from tests.server.harness import RunningServer, settings_for

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
EMBEDDER = "all-minilm-l6-v2"
EMBEDDINGS_SERVICE = "hubless.v1.EmbeddingsService"
DEADLINE_S = 10.0
"""Every call's deadline: a blocked event loop would miss it (a behaviour, not a timing)."""


def manifest_errors(reason: str) -> float:
    value = metrics.REGISTRY.get_sample_value("hubless_manifest_errors_total", {"reason": reason})
    return value or 0.0


def health(server: RunningServer, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(server.channel)
    request = health_pb2.HealthCheckRequest(service=service)
    return stub.Check(request, timeout=DEADLINE_S).status


def embed_commit(server: RunningServer) -> str:
    stub = embeddings_pb2_grpc.EmbeddingsServiceStub(server.channel)
    reply = stub.Embed(embeddings_pb2.EmbedRequest(texts=["x"]), timeout=DEADLINE_S)
    return reply.model.commit


def states(server: RunningServer) -> dict[str, int]:
    stub = models_pb2_grpc.ModelsServiceStub(server.channel)
    listing = stub.ListModels(models_pb2.ListModelsRequest(), timeout=DEADLINE_S)
    return {m.name: m.state for m in listing.models}


def check(server: RunningServer, force: bool = False) -> bool:
    """One reload check (what ``--reload-interval`` runs), waited for with a deadline."""
    reloader = server.server.reloader
    assert reloader is not None
    return server.call(reloader.check(force), timeout=DEADLINE_S)


def put_fifo(path: Path) -> None:
    """Replace ``path`` with a FIFO nobody writes to, atomically (a rename)."""
    tmp = path.with_name(f".{path.name}.fifo")
    os.mkfifo(tmp)
    os.replace(tmp, path)


def put_dev_zero(path: Path) -> None:
    """Replace ``path`` with a link to /dev/zero, atomically."""
    tmp = path.with_name(f".{path.name}.link")
    os.symlink("/dev/zero", tmp)
    os.replace(tmp, path)


Serve = Callable[..., RunningServer]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """``serve(volume, *flags, wait=True)``: a server over fake runtimes on ``volume``; no
    periodic checks (the tests run each check themselves)."""
    FakeRuntime.reset()
    servers: list[RunningServer] = []

    def start(volume: Path, *flags: str, wait: bool = True) -> RunningServer:
        settings = settings_for(volume, "--reload-interval", "0", *flags)
        server = RunningServer(settings, fake_factory, wait=wait)
        servers.append(server)
        return server

    yield start
    FakeRuntime.reset()
    for server in servers:
        server.stop()


@pytest.mark.parametrize("swap", [put_fifo, put_dev_zero], ids=["fifo", "dev-zero"])
def test_a_manifest_swapped_while_serving_leaves_every_port_answering(
    tmp_path: Path, serve: Serve, swap: Callable[[Path], None], caplog: pytest.LogCaptureFixture
) -> None:
    volume = make_fake_volume(tmp_path / "volume", [EMBEDDER])
    server = serve(volume, "--tasks", "embedding")
    commit = embed_commit(server)
    before = manifest_errors("unreadable")
    caplog.set_level(logging.ERROR, logger="hubless_server.models.reload")

    swap(volume / MANIFEST_NAME)
    assert check(server) is False  # returns: the loop never blocked on the manifest

    assert health(server) == SERVING and health(server, EMBEDDINGS_SERVICE) == SERVING
    assert embed_commit(server) == commit
    assert states(server)[EMBEDDER] == models_pb2.MODEL_STATE_READY
    assert manifest_errors("unreadable") == before + 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "cannot read the volume manifest" in errors[0]
    assert "not a regular file" in errors[0] or "outside the volume" in errors[0]

    assert check(server) is False  # the same file again: not reported twice
    assert manifest_errors("unreadable") == before + 1
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1


def test_a_vanished_manifest_keeps_the_models_serving_until_it_is_back(
    tmp_path: Path, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    volume = make_fake_volume(tmp_path / "volume", [EMBEDDER, "distilbert-sst2"])
    server = serve(volume, "--tasks", "embedding,sentiment")
    commit = embed_commit(server)
    before = manifest_errors("missing")
    caplog.set_level(logging.INFO, logger="hubless_server.models.reload")
    manifest = volume / MANIFEST_NAME
    saved = manifest.read_bytes()

    manifest.unlink()
    assert check(server) is False
    assert check(server) is False  # still gone: one error per disappearance

    assert health(server) == SERVING  # /readyz stays ready: nothing was unloaded
    assert health(server, EMBEDDINGS_SERVICE) == SERVING
    assert embed_commit(server) == commit
    listed = states(server)
    assert listed[EMBEDDER] == listed["distilbert-sst2"] == models_pb2.MODEL_STATE_READY
    assert manifest_errors("missing") == before + 1
    lines = [r.getMessage() for r in caplog.records if r.name == "hubless_server.models.reload"]
    gone = [m for m in lines if "is gone" in m]
    assert len(gone) == 1 and "2 loaded model(s) keep serving" in gone[0]
    assert not any("removed from the volume" in m for m in lines)

    manifest.write_bytes(saved)  # it comes back, with a new commit of the embedder
    new_commit = update_fake_model(volume, EMBEDDER)
    assert check(server) is True
    assert embed_commit(server) == new_commit  # the reloader follows it again
    lines = [r.getMessage() for r in caplog.records if r.name == "hubless_server.models.reload"]
    assert sum("readable again" in m for m in lines) == 1
    assert states(server)["distilbert-sst2"] == models_pb2.MODEL_STATE_READY


def test_a_forced_reload_of_a_vanished_manifest_unloads_nothing(
    tmp_path: Path, serve: Serve
) -> None:
    """SIGHUP (a forced check) reads again and reports again, and still unloads nothing."""
    volume = make_fake_volume(tmp_path / "volume", [EMBEDDER])
    server = serve(volume, "--tasks", "embedding")
    before = manifest_errors("missing")
    (volume / MANIFEST_NAME).unlink()
    server.call(server.server.reload_now(), timeout=DEADLINE_S)
    assert manifest_errors("missing") == before + 1
    assert health(server) == SERVING and embed_commit(server)


def test_start_with_a_fifo_manifest_answers_health_and_says_why(
    tmp_path: Path, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    volume = make_fake_volume(tmp_path / "volume", [EMBEDDER])
    manifest = volume / MANIFEST_NAME
    saved = manifest.read_bytes()
    put_fifo(manifest)
    before = manifest_errors("unreadable")
    caplog.set_level(logging.ERROR, logger="hubless_server.models.registry")

    server = serve(volume, "--tasks", "embedding")  # starts and finishes loading

    assert health(server) == NOT_SERVING and health(server, EMBEDDINGS_SERVICE) == NOT_SERVING
    assert manifest_errors("unreadable") == before + 1
    assert any(
        "cannot read the volume manifest" in r.getMessage() and "FIFO" in r.getMessage()
        for r in caplog.records
    )
    stub = embeddings_pb2_grpc.EmbeddingsServiceStub(server.channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Embed(embeddings_pb2.EmbedRequest(texts=["x"]), timeout=DEADLINE_S)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "the volume manifest cannot be read" in (info.value.details() or "")

    tmp = manifest.with_name(".manifest.new")  # a fetch writes a real one: it is followed
    tmp.write_bytes(saved)
    os.replace(tmp, manifest)
    assert check(server) is True
    assert embed_commit(server) and health(server) == SERVING


def test_load_retries_treat_a_vanished_manifest_as_an_error(tmp_path: Path) -> None:
    """A model whose files went missing re-reads the manifest; a manifest gone meanwhile
    ends the retries (the model fails alone) instead of reading as an empty volume."""
    volume = make_fake_volume(tmp_path / "volume", [EMBEDDER])
    registry = Registry(
        settings_for(volume, "--tasks", "embedding"),
        "cpu",
        lambda name, runtime: None,  # type: ignore[arg-type, return-value]
        fake_factory,
    )
    record = registry.records[EMBEDDER]
    assert record.state is State.LOADING and record.entry is not None
    before = manifest_errors("missing")
    (volume / MANIFEST_NAME).unlink()
    assert asyncio.run(replan_one(registry, record)) is None
    assert manifest_errors("missing") == before + 1
    put_fifo(volume / MANIFEST_NAME)
    before = manifest_errors("unreadable")
    assert asyncio.run(replan_one(registry, record)) is None
    assert manifest_errors("unreadable") == before + 1


def test_a_weights_file_that_is_a_fifo_does_not_hang_the_estimate(tmp_path: Path) -> None:
    snapshot = tmp_path / "models--org--m" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    os.mkfifo(snapshot / "model.safetensors")
    entry = ModelEntry(
        "m",
        "org/m",
        "main",
        "a" * 40,
        "embedding",
        [FileRecord("model.safetensors", 100, "b" * 64)],
    )
    # the header cannot be read: the worst case from the manifest size (float16 -> float32)
    assert estimate_weights_bytes(entry, tmp_path, "cpu", "float32") == 200
