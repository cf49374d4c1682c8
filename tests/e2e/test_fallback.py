"""Graceful fallback, end to end: models removed with ``hubless-fetch remove`` before the
server starts. DialoGPT-medium gone: DialoGPT-small answers. Every sentiment model gone:
Sentiment is UNAVAILABLE and NOT_SERVING, and nothing else is affected."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hubless_client import Client, HealthStatus, ModelState, NotFound, Unavailable
from hubless_volume import Manifest
from tests.e2e import procs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SENTIMENT_MODELS = ("bert-multilingual-sentiment", "twitter-roberta-sentiment", "distilbert-sst2")
REMOVED = ("dialogpt-medium", *SENTIMENT_MODELS)
SENTIMENT = procs.TASK_SERVICES["sentiment"]


@pytest.fixture(scope="module")
def server(
    fetch_volume: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[procs.ServerProcess]:
    volume = fetch_volume()
    hf_home = tmp_path_factory.mktemp("e2e-remove-hf-home")
    for name in REMOVED:
        procs.remove(volume, name, hf_home=hf_home)
    remaining = set(Manifest.load(volume).models)
    assert remaining.isdisjoint(REMOVED) and "dialogpt-small" in remaining
    procs.set_read_only(volume)
    try:
        wait_for = ["", *(s for s in procs.ALL_SERVICES if s != SENTIMENT)]
        with procs.running_server(
            volume,
            tmp_path_factory.mktemp("e2e-fallback-server"),
            # sentiment has nothing installed: the whole server ("") is SERVING all the same
            wait_for=wait_for,
        ) as running:
            yield running
    finally:
        procs.set_read_only(volume, read_only=False)


@pytest.fixture(scope="module")
def client(server: procs.ServerProcess) -> Client:
    return server.client(timeout=30)


def test_small_dialogpt_answers_when_medium_is_removed(client: Client) -> None:
    reply = client.reply(["Hello, how are you?"], max_new_tokens=8)
    assert reply.model.name == "dialogpt-small"
    assert reply.model.repo_id == "microsoft/DialoGPT-small"
    stream = client.stream_reply(["Hello, how are you?"], max_new_tokens=8)
    assert "".join(stream) == reply.text
    assert stream.model == reply.model
    with pytest.raises(NotFound):
        client.reply(["Hello"], model="dialogpt-medium")


def test_models_report_the_removed_ones_missing(client: Client) -> None:
    models = {m.name: m for m in client.list_models()}
    for name in REMOVED:
        assert models[name].state is ModelState.MISSING, name
        assert models[name].error
        assert not models[name].is_default
    assert models["dialogpt-small"].state is ModelState.READY
    assert models["dialogpt-small"].is_default


def test_sentiment_unavailable_everything_else_serving(client: Client) -> None:
    with pytest.raises(Unavailable) as info:
        client.analyze_sentiment(["I love it"])
    assert info.value.details
    with pytest.raises(NotFound):
        client.analyze_sentiment(["I love it"], model="distilbert-sst2")
    assert client.health(SENTIMENT) is HealthStatus.NOT_SERVING
    for service in procs.ALL_SERVICES:
        if service != SENTIMENT:
            assert client.health(service) is HealthStatus.SERVING, service
    assert client.health() is HealthStatus.SERVING
    assert client.detect_emotion(["I love it"])[0].label
    assert len(client.embed(["I love it"]).vectors) == 1


def test_health_probe_per_service(server: procs.ServerProcess) -> None:
    probe = procs.console_script("hubless-health-probe")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [probe, "--target", server.target, "--timeout", "5", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=30)

    assert run().returncode == 0
    assert run("--service", "hubless.v1.ConversationService").returncode == 0
    down = run("--service", SENTIMENT)
    assert down.returncode == 1
    assert "NOT_SERVING" in down.stderr and SENTIMENT in down.stderr
