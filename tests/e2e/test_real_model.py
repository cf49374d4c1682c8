"""The real all-MiniLM-L6-v2, end to end: served by the local mirror, fetched by the real
fetcher, served by the real server; its embeddings match in-process sentence-transformers."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

from hubless_client import Client
from hubless_fakehub import HubMirror
from hubless_fakehub.real_models import REAL_MINILM_NAME, REAL_MINILM_REPO_ID, real_minilm_dir
from tests.e2e import procs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TEXTS = [
    "A man is eating food.",
    "A man is riding a horse.",
    "The new movie is awesome!",
    "Hubless serves Hugging Face models over gRPC, offline.",
    " ".join(["The city council met on Tuesday to discuss the budget."] * 40),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[procs.ServerProcess]:
    root = tmp_path_factory.mktemp("e2e-real")
    volume = root / "models"
    with HubMirror({REAL_MINILM_REPO_ID: real_minilm_dir()}) as mirror:
        procs.fetch(volume, mirror.endpoint, [REAL_MINILM_NAME], hf_home=root / "hf-home")
    procs.set_read_only(volume)
    try:
        with procs.running_server(
            volume,
            root / "server",
            extra_args=["--tasks", "embedding"],
            wait_for=["", procs.TASK_SERVICES["embedding"]],
        ) as running:
            yield running
    finally:
        procs.set_read_only(volume, read_only=False)


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


@pytest.mark.parametrize("normalize", [True, False])
def test_embeddings_match_in_process_sentence_transformers(
    server: procs.ServerProcess, normalize: bool
) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(real_minilm_dir()), device="cpu").encode(
        TEXTS, normalize_embeddings=normalize, convert_to_numpy=True
    )
    client: Client = server.client(timeout=120)
    result = client.embed(TEXTS, normalize=normalize)
    assert result.model.name == REAL_MINILM_NAME
    assert result.model.repo_id == REAL_MINILM_REPO_ID
    assert result.dimension == 384 == reference.shape[1]
    assert result.truncated == [False, False, False, False, True]
    for served, expected in zip(result.vectors, reference.tolist(), strict=True):
        assert _cosine(served, expected) >= 0.9999
        if normalize:
            assert served == pytest.approx(expected, abs=1e-3)
        else:
            # The model's own Normalize module is skipped: the raw mean-pooled vector.
            assert math.sqrt(sum(x * x for x in served)) > 1.5
    similar = _cosine(result.vectors[0], result.vectors[1])
    unrelated = _cosine(result.vectors[0], result.vectors[2])
    assert similar > unrelated
