"""The HTTP door of a real ``hubless-serve`` process with the real all-MiniLM-L6-v2: the real
OpenAI SDK gets, float for float, the vectors that gRPC's Embed gives for the same texts."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import numpy as np
import openai
import pytest

from hubless_fakehub import HubMirror
from hubless_fakehub.real_models import REAL_MINILM_NAME, REAL_MINILM_REPO_ID, real_minilm_dir
from tests.e2e import procs
from tests.server.http_calls import call, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TEXTS = [
    "A man is eating food.",
    "A man is riding a horse.",
    "Hubless serves Hugging Face models over gRPC, offline.",
    " ".join(["The city council met on Tuesday to discuss the budget."] * 40),
]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    root = tmp_path_factory.mktemp("e2e-http")
    volume = root / "models"
    with HubMirror({REAL_MINILM_REPO_ID: real_minilm_dir()}) as mirror:
        procs.fetch(volume, mirror.endpoint, [REAL_MINILM_NAME], hf_home=root / "hf-home")
    procs.set_read_only(volume)
    http_port = free_port()
    try:
        with procs.running_server(
            volume,
            root / "server",
            extra_args=["--tasks", "embedding", "--http-port", str(http_port)],
            wait_for=["", procs.TASK_SERVICES["embedding"]],
        ) as running:
            yield running, f"http://127.0.0.1:{http_port}"
    finally:
        procs.set_read_only(volume, read_only=False)


def test_openai_sdk_embeddings_equal_grpc(served: tuple[Any, str]) -> None:
    server, base = served
    expected = server.client(timeout=120).embed(TEXTS)
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)
    default = client.embeddings.create(input=TEXTS, model=REAL_MINILM_NAME)  # base64 on the wire
    floats = client.embeddings.create(input=TEXTS, model=REAL_MINILM_NAME, encoding_format="float")
    encoded = client.embeddings.create(
        input=TEXTS, model=REAL_MINILM_NAME, encoding_format="base64"
    )
    for response in (default, floats):
        assert response.model == REAL_MINILM_NAME
        assert [len(d.embedding) for d in response.data] == [384] * len(TEXTS)
        for got, want in zip(response.data, expected.vectors, strict=True):
            assert got.embedding == pytest.approx(want, abs=1e-6)
        assert response.usage.prompt_tokens == sum(expected.tokens)
    for got, want in zip(encoded.data, floats.data, strict=True):
        vector = np.frombuffer(base64.b64decode(got.embedding), dtype="<f4")  # type: ignore[arg-type]
        assert vector.tolist() == want.embedding
    assert [m.id for m in client.models.list().data] == [REAL_MINILM_NAME]


def test_http_errors_and_health_from_the_real_process(served: tuple[Any, str]) -> None:
    _, base = served
    missing = call("POST", f"{base}/v1/embeddings", {"input": "hi", "model": "ada-002"})
    assert missing.status == 404 and missing.error["code"] == "model_not_found"
    assert call("GET", f"{base}/readyz").json()["status"] == "SERVING"
    assert call("GET", f"{base}/healthz").status == 200
