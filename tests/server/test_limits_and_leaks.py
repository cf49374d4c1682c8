"""Cost caps per request (zero-shot pairs, generated tokens), sampling bounds, and what error
statuses may carry: no volume path, no library text, request values cut short."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from hubless.v1 import (
    conversation_pb2,
    conversation_pb2_grpc,
    embeddings_pb2,
    embeddings_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    summarization_pb2,
    summarization_pb2_grpc,
    zero_shot_pb2,
    zero_shot_pb2_grpc,
)
from hubless_server.core.flags import load_settings
from hubless_server.core.redact import ECHO_LIMIT
from hubless_server.core.values import ConfigError
from hubless_server.models.registry import VolumeError, check_model_files
from hubless_volume import Manifest
from tests.server.fakes import FakeRuntime, fake_factory, make_fake_volume
from tests.server.harness import RunningServer, settings_for
from tests.server.rich_errors import Details, details_of


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    FakeRuntime.reset()
    volume = make_fake_volume(tmp_path_factory.mktemp("volume"))
    running = RunningServer(settings_for(volume), fake_factory)  # the default limits
    yield running
    running.stop()


def failure(fn: object, request: object) -> tuple[grpc.RpcError, Details]:
    with pytest.raises(grpc.RpcError) as info:
        fn(request, timeout=10)  # type: ignore[operator]
    return info.value, details_of(info.value)


def zero_shot(server: RunningServer, **kw: object) -> object:
    stub = zero_shot_pb2_grpc.ZeroShotServiceStub(server.channel)
    return stub.ClassifyZeroShot, zero_shot_pb2.ClassifyZeroShotRequest(**kw)  # type: ignore[arg-type]


def summarize(server: RunningServer, **kw: object) -> object:
    stub = summarization_pb2_grpc.SummarizationServiceStub(server.channel)
    return stub.Summarize, summarization_pb2.SummarizeRequest(**kw)  # type: ignore[arg-type]


# ---- cost caps ------------------------------------------------------------------------


def test_zero_shot_pairs_are_capped(server: RunningServer) -> None:
    labels = [f"label {i}" for i in range(32)]
    fn, request = zero_shot(server, texts=["a text"] * 8, candidate_labels=labels)  # type: ignore[misc]
    assert len(fn(request, timeout=10).results) == 8  # 8 x 32 = 256: at the cap
    fn, request = zero_shot(server, texts=["a text"] * 64, candidate_labels=labels)  # type: ignore[misc]
    error, details = failure(fn, request)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "LIMIT_EXCEEDED")
    assert details.fields == ["candidate_labels"]
    assert details.info.metadata["limit"] == "--max-zero-shot-pairs"
    assert details.info.metadata["limit_value"] == "256"
    message = error.details()  # type: ignore[attr-defined]
    assert "64 x 32 = 2048" in message and "at most 256" in message
    assert "requests of at most 8" in message


def test_generated_tokens_are_capped(server: RunningServer) -> None:
    fn, request = summarize(server, texts=["x"] * 64)  # type: ignore[misc]
    assert len(fn(request, timeout=10).summaries) == 64  # 64 x 1 x 128 = 8192: the defaults
    cases = {
        "num_beams": {"texts": ["x"] * 64, "num_beams": 4},  # 64 x 4 x 128 = 32768
        "max_length": {"texts": ["x"] * 64, "max_length": 512},  # 64 x 1 x 512
        "texts": {"texts": ["x"] * 64, "min_length": 300},  # max_length follows min: 300
    }
    for field, kw in cases.items():
        fn, request = summarize(server, **kw)  # type: ignore[misc]
        error, details = failure(fn, request)
        assert details.reason == "LIMIT_EXCEEDED" and details.fields == [field], field
        assert details.info.metadata["limit"] == "--max-generation-tokens"
        assert details.info.metadata["limit_value"] == "16384"
        message = error.details()  # type: ignore[attr-defined]
        assert "--max-generation-tokens" in message and "send at most" in message
    fn, request = summarize(server, texts=["x"] * 32, num_beams=4)  # type: ignore[misc]
    assert len(fn(request, timeout=10).summaries) == 32  # 32 x 4 x 128 = 16384


def test_cost_settings_are_validated() -> None:
    base = ["--models-dir", "/m"]
    settings = load_settings(base, {"HUBLESS_MAX_ZERO_SHOT_PAIRS": "64"})
    assert (settings.max_zero_shot_pairs, settings.max_generation_tokens) == (64, 16384)
    with pytest.raises(ConfigError, match="--max-zero-shot-pairs must be at least 1"):
        load_settings([*base, "--max-zero-shot-pairs", "0"], {})
    with pytest.raises(ConfigError, match="--max-generation-tokens must be at least"):
        load_settings([*base, "--max-generation-tokens", "100"], {})  # < --summary-max-length


# ---- sampling bounds --------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1e-40, 0.001, 100.5, 1e30, -1.0])
def test_temperatures_that_cannot_be_sampled_are_refused(
    server: RunningServer, temperature: float
) -> None:
    stub = conversation_pb2_grpc.ConversationServiceStub(server.channel)
    request = conversation_pb2.ReplyRequest(turns=["hi"], temperature=temperature)
    error, details = failure(stub.Reply, request)
    assert (details.reason, details.fields) == ("INVALID_FIELD", ["temperature"])
    assert "0 (greedy) or between 0.01 and 100" in error.details()  # type: ignore[attr-defined]


@pytest.mark.parametrize(("temperature", "top_p"), [(0.01, 1e-30), (100.0, 1.0), (0.0, 0.5)])
def test_bounds_of_sampling_are_accepted(
    server: RunningServer, temperature: float, top_p: float
) -> None:
    stub = conversation_pb2_grpc.ConversationServiceStub(server.channel)
    request = conversation_pb2.ReplyRequest(
        turns=["hi"], temperature=temperature, top_p=top_p, max_new_tokens=4
    )
    assert stub.Reply(request, timeout=10).text


# ---- echoed request values ----------------------------------------------------------------


def test_a_huge_model_name_is_not_echoed(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hubless_server.access")
    huge = "m" * 1_000_000
    stub = embeddings_pb2_grpc.EmbeddingsServiceStub(server.channel)
    error, details = failure(stub.Embed, embeddings_pb2.EmbedRequest(texts=["x"], model=huge))
    assert details.code is grpc.StatusCode.NOT_FOUND
    assert len(error.details()) < 400  # type: ignore[attr-defined]
    assert "m" * ECHO_LIMIT not in error.details()  # type: ignore[attr-defined]
    model = details.info.metadata["model"]
    assert len(model) == ECHO_LIMIT and model.endswith("\u2026")
    models = models_pb2_grpc.ModelsServiceStub(server.channel)
    error, details = failure(models.GetModel, models_pb2.GetModelRequest(name=huge))
    assert details.code is grpc.StatusCode.NOT_FOUND
    assert len(details.info.metadata["model"]) == ECHO_LIMIT
    assert "m" * ECHO_LIMIT not in error.details()  # type: ignore[attr-defined]
    access = [r for r in caplog.records if r.name == "hubless_server.access"]
    assert access and all(len(r.fields["model"]) <= ECHO_LIMIT for r in access)  # type: ignore[attr-defined]


def test_long_labels_and_templates_are_not_echoed(server: RunningServer) -> None:
    long = "label " * 3000  # 18000 characters, under --max-text-chars
    fn, request = zero_shot(server, texts=["x"], candidate_labels=[long, long])  # type: ignore[misc]
    error, details = failure(fn, request)
    assert details.fields == ["candidate_labels[1]"] and "unique" in error.details()  # type: ignore[attr-defined]
    assert len(error.details()) < 300  # type: ignore[attr-defined]
    fn, request = zero_shot(server, texts=["x"], candidate_labels=["a"], hypothesis_template=long)  # type: ignore[misc]
    error, details = failure(fn, request)
    assert details.fields == ["hypothesis_template"] and len(error.details()) < 300  # type: ignore[attr-defined]
    over = "y" * 20_001
    fn, request = zero_shot(server, texts=["x"], candidate_labels=[over])  # type: ignore[misc]
    error, details = failure(fn, request)
    assert details.reason == "LIMIT_EXCEEDED" and details.fields == ["candidate_labels[0]"]
    assert details.info.metadata["limit"] == "--max-text-chars"
    fn, request = zero_shot(server, texts=["x"], candidate_labels=["a"], hypothesis_template=over)  # type: ignore[misc]
    _, details = failure(fn, request)
    assert details.reason == "LIMIT_EXCEEDED" and details.fields == ["hypothesis_template"]


# ---- the registry's messages ------------------------------------------------------------


def _all_client_text(running: RunningServer) -> str:
    """Every ModelInfo.error, GetModel included, and the UNAVAILABLE messages."""
    models = models_pb2_grpc.ModelsServiceStub(running.channel)
    listed = models.ListModels(models_pb2.ListModelsRequest(), timeout=5).models
    texts = [m.error for m in listed]
    for info in listed:
        texts.append(models.GetModel(models_pb2.GetModelRequest(name=info.name)).model.error)
    summarize_stub = summarization_pb2_grpc.SummarizationServiceStub(running.channel)
    with pytest.raises(grpc.RpcError) as error:
        summarize_stub.Summarize(summarization_pb2.SummarizeRequest(texts=["x"]), timeout=5)
    texts.append(error.value.details())  # type: ignore[attr-defined]
    return "\n".join(texts)


def test_client_facing_model_errors_carry_no_paths_or_library_text(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="hubless_server.models.registry")
    FakeRuntime.fail_load = {"dialogpt-medium"}  # "weights of dialogpt-medium are unreadable"
    volume = make_fake_volume(
        tmp_path / "v", ["dialogpt-medium", "dialogpt-small", "all-minilm-l6-v2", "bart-large"]
    )
    # bart-large: a file of the wrong size; all-minilm-l6-v2: its folder links off the volume
    (bart,) = (volume / "models--facebook--bart-large" / "snapshots").iterdir()
    (bart / "config.json").write_text("{}")
    repo = volume / "models--sentence-transformers--all-MiniLM-L6-v2"
    outside = tmp_path / "elsewhere"
    repo.rename(outside)
    repo.symlink_to(outside)
    running = RunningServer(settings_for(volume), fake_factory)
    try:
        text = _all_client_text(running)
    finally:
        running.stop()
    assert (
        str(volume) not in text and str(volume.resolve()) not in text and str(tmp_path) not in text
    )
    assert "--models-dir" not in text
    assert "unreadable" not in text  # the library's message ...
    assert "failed to load (RuntimeError); the server log has the details" in text
    assert "corrupt install: config.json: size" in text
    assert "corrupt install: refused, its folder leads off the volume" in text
    assert (
        "not installed; fetch it with `hubless-fetch fetch emotion-english-distilroberta`" in text
    )
    assert "hubless-fetch fetch bart-large`" in text
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "weights of dialogpt-medium are unreadable" in logged  # ... stays in the log
    assert str(volume) in logged


def test_a_volume_problem_with_a_path_is_told_without_it(tmp_path: Path) -> None:
    volume = make_fake_volume(tmp_path / "v", ["all-minilm-l6-v2"])
    entry = Manifest.load(volume).models["all-minilm-l6-v2"]
    snapshot = entry.snapshot_dir(volume)
    (snapshot / "config.json").unlink()
    snapshot.rmdir()
    with pytest.raises(VolumeError) as info:
        check_model_files(entry, volume)
    assert str(volume) in str(info.value)  # for the log
    assert str(tmp_path) not in info.value.public
    assert info.value.public == (
        "its files are not where the manifest says (the server log has the path)"
    )
