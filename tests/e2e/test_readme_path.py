"""The README's subset path, end to end: ``hubless-fetch fetch all-minilm-l6-v2
distilbert-sst2`` fills a volume with two models, ``hubless-serve`` serves it, and the
README's first call, ``client.wait_until_serving(timeout=...)``, returns: whole-server health
counts the tasks whose models are installed, not every task of the catalog."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hubless_client import Client, HealthStatus
from tests.e2e import procs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

README_SUBSET = ("all-minilm-l6-v2", "distilbert-sst2")
SERVING_WITHIN_S = 60.0


def test_a_two_model_volume_reports_serving_to_wait_until_serving(
    fetch_volume: Callable[..., Path], tmp_path: Path
) -> None:
    volume = fetch_volume(*README_SUBSET)
    # Only the port is awaited here: readiness is what the README's call checks.
    with procs.running_server(volume, tmp_path / "server", ready=lambda _: True) as server:
        started = time.monotonic()
        with server.explain_death(), Client(server.target, timeout=30) as client:
            client.wait_until_serving(timeout=SERVING_WITHIN_S)
            assert time.monotonic() - started < SERVING_WITHIN_S
            emb = client.embed(["A cat sat on the mat.", "A kitten rested on the rug."])
            assert len(emb.vectors) == 2
            sentiment = client.analyze_sentiment(["Great value"], model="distilbert-sst2")
            assert sentiment[0].label
            # the tasks with nothing installed stay NOT_SERVING; they do not hold "" back
            zero_shot = client.health(procs.TASK_SERVICES["zero-shot"])
            assert zero_shot is HealthStatus.NOT_SERVING
