"""Every RPC through the client against the real server, on a read-only volume that the real
fetcher filled from the local hub mirror. One server for the whole module."""

from __future__ import annotations

import asyncio
import itertools
import math
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hubless_client import (
    AsyncClient,
    Client,
    DeadlineExceeded,
    FinishReason,
    HealthStatus,
    InvalidArgument,
    ModelState,
    NotFound,
    Polarity,
    Truncation,
)
from hubless_fakehub import HubMirror
from hubless_fakehub.tiny import EMBEDDING_DIM, load_catalog
from hubless_volume import Manifest
from tests.e2e import procs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SENTIMENT_MODELS = ("bert-multilingual-sentiment", "twitter-roberta-sentiment", "distilbert-sst2")
TEXTS = [
    "I am so happy today, this is the best day of my life!",
    "This movie was terrible and boring; I want my money back.",
    "The weather is fine, nothing special.",
]
LONG_TEXT = " ".join(["The city council met on Tuesday to discuss the budget."] * 40)
TURNS = ["Hello, how are you?", "I am fine, thank you. And you?", "Do you want a coffee?"]


@pytest.fixture(scope="module")
def served(
    fetch_volume: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[procs.ServerProcess, Path]]:
    """The server on a volume holding the whole (tiny) catalog, made read-only first; after
    the module, the volume must be exactly as the fetcher left it."""
    volume = fetch_volume()
    procs.set_read_only(volume)
    before = procs.tree_state(volume)
    try:
        with procs.running_server(volume, tmp_path_factory.mktemp("e2e-server")) as server:
            yield server, volume
        assert procs.tree_state(volume) == before
    finally:
        procs.set_read_only(volume, read_only=False)


@pytest.fixture(scope="module")
def server(served: tuple[procs.ServerProcess, Path]) -> procs.ServerProcess:
    return served[0]


@pytest.fixture(scope="module")
def client(server: procs.ServerProcess) -> Client:
    return server.client(timeout=60)


def _is_sorted_desc(scores: list[float]) -> bool:
    return all(a >= b for a, b in itertools.pairwise(scores))


# ---- models and health ------------------------------------------------------------------


def test_models_lists_the_catalog_ready(
    client: Client, served: tuple[procs.ServerProcess, Path], session_hub_mirror: HubMirror
) -> None:
    catalog = load_catalog()
    manifest = Manifest.load(served[1])
    models = {m.name: m for m in client.list_models()}
    assert set(models) == {m.name for m in catalog.models}
    for entry in catalog.models:
        info = models[entry.name]
        assert info.state is ModelState.READY, (info.name, info.error)
        assert (info.task, info.repo_id) == (entry.task, entry.repo_id)
        installed = manifest.models[entry.name]
        assert info.commit == installed.commit == session_hub_mirror.commits[entry.repo_id]
        assert info.size_bytes == installed.size
        assert info.device == "cpu" and info.dtype == "float32"
    for task, names in catalog.tasks.items():
        defaults = [m.name for m in models.values() if m.task == task and m.is_default]
        assert defaults == [names[0]], task


def test_health_serving_everywhere(client: Client, server: procs.ServerProcess) -> None:
    assert client.health() is HealthStatus.SERVING
    for service in procs.ALL_SERVICES:
        assert client.health(service) is HealthStatus.SERVING, service
    assert client.health("hubless.v1.NoSuchService") is HealthStatus.SERVICE_UNKNOWN
    probe = procs.console_script("hubless-health-probe")
    ok = subprocess.run([probe, "--target", server.target], capture_output=True, timeout=30)
    assert ok.returncode == 0, ok.stderr


# ---- embeddings ---------------------------------------------------------------------------


def test_embed_shapes_norms_and_order(client: Client, session_hub_mirror: HubMirror) -> None:
    result = client.embed(TEXTS)
    assert result.dimension == EMBEDDING_DIM
    assert [len(v) for v in result.vectors] == [EMBEDDING_DIM] * len(TEXTS)
    for vector in result.vectors:
        assert math.sqrt(sum(x * x for x in vector)) == pytest.approx(1.0, abs=1e-4)
    assert result.truncated == [False] * 3 and all(t > 0 for t in result.tokens)
    assert result.model.name == "all-minilm-l6-v2"
    assert result.model.repo_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert result.model.commit == session_hub_mirror.commits[result.model.repo_id]
    reversed_result = client.embed(TEXTS[::-1])
    for a, b in zip(result.vectors, reversed_result.vectors[::-1], strict=True):
        assert a == pytest.approx(b, abs=1e-5)


def test_embed_unnormalized_and_truncation(client: Client) -> None:
    raw = client.embed(TEXTS[:1], normalize=False).vectors[0]
    unit = client.embed(TEXTS[:1]).vectors[0]
    norm = math.sqrt(sum(x * x for x in raw))
    assert [x / norm for x in raw] == pytest.approx(unit, abs=1e-4)
    long = client.embed([LONG_TEXT, "short"], truncation=Truncation.TRUNCATE)
    assert long.truncated == [True, False]
    assert long.tokens[0] > long.tokens[1]


def test_large_inputs_are_split_in_order(client: Client) -> None:
    texts = [f"sentence number {i} of a long list" for i in range(150)]  # --max-texts is 64
    whole = client.embed(texts, as_numpy=True)
    assert whole.vectors.shape == (150, EMBEDDING_DIM) and whole.models == (whole.model,)
    for i in (0, 63, 64, 149):  # each vector is the one of its own text, across chunks
        assert whole[i].tolist() == pytest.approx(client.embed([texts[i]])[0], abs=1e-4)


def test_the_servers_limits_are_learned(server: procs.ServerProcess) -> None:
    """A client that assumes a larger --max-texts (and no pairs limit) is refused with
    LIMIT_EXCEEDED, splits to the limit_value in the error, and remembers it."""
    client = server.client(max_batch=100)
    assert len(client.embed([f"text {i}" for i in range(100)])) == 100
    assert client.max_batch == 64
    labels = [f"topic {i}" for i in range(30)]  # 9 x 30 pairs > --max-zero-shot-pairs 256
    result = client.classify_zero_shot(TEXTS * 3, labels)
    assert len(result) == 9 and all(len(z.scores) == 30 for z in result)


# ---- classification -----------------------------------------------------------------------


def test_emotion_labels_and_scores(client: Client, labels: dict[str, tuple[str, ...]]) -> None:
    result = client.detect_emotion(TEXTS)
    assert len(result) == len(TEXTS)
    assert result.model.name == "emotion-english-distilroberta"
    expected = set(labels["emotion-english-distilroberta"])
    for emotion in result:
        assert {s.label for s in emotion.scores} == expected
        values = [s.score for s in emotion.scores]
        assert _is_sorted_desc(values) and sum(values) == pytest.approx(1.0, abs=1e-4)
        assert (emotion.label, emotion.score) == (emotion.scores[0].label, values[0])
        assert not emotion.truncated
    assert client.detect_emotion([LONG_TEXT])[0].truncated


def _expected_polarity(label: str) -> Polarity:
    lowered = label.lower()
    if lowered[0].isdigit():
        stars = int(lowered[0])
        return (
            Polarity.NEGATIVE
            if stars <= 2
            else Polarity.NEUTRAL
            if stars == 3
            else Polarity.POSITIVE
        )
    return Polarity(lowered)


@pytest.mark.parametrize("model", ["", *SENTIMENT_MODELS])
def test_sentiment_every_model(
    client: Client, labels: dict[str, tuple[str, ...]], model: str
) -> None:
    result = client.analyze_sentiment(TEXTS, model=model)
    name = model or SENTIMENT_MODELS[0]
    assert result.model.name == name
    assert len(result) == len(TEXTS)
    for sentiment in result:
        assert {s.label for s in sentiment.scores} == set(labels[name])
        values = [s.score for s in sentiment.scores]
        assert _is_sorted_desc(values) and sum(values) == pytest.approx(1.0, abs=1e-4)
        assert sentiment.label == sentiment.scores[0].label
        assert sentiment.polarity is _expected_polarity(sentiment.label)
        same_side = sum(
            s.score for s in sentiment.scores if _expected_polarity(s.label) is sentiment.polarity
        )
        assert sentiment.polarity_score == pytest.approx(same_side, abs=1e-4)


def test_zero_shot_single_and_multi_label(client: Client) -> None:
    candidates = ["sports", "politics", "technology", "travel"]
    single = client.classify_zero_shot(TEXTS, candidates)
    assert single.model.name == "bart-large-mnli" and len(single) == len(TEXTS)
    for result in single:
        assert sorted(s.label for s in result.scores) == sorted(candidates)
        values = [s.score for s in result.scores]
        assert _is_sorted_desc(values) and sum(values) == pytest.approx(1.0, abs=1e-4)
    multi = client.classify_zero_shot(
        TEXTS[:1], candidates, multi_label=True, hypothesis_template="This text is about {}."
    )[0]
    assert sorted(multi.by_label) == sorted(candidates)
    assert all(0.0 <= s.score <= 1.0 for s in multi.scores)
    assert _is_sorted_desc([s.score for s in multi.scores])
    # A single label is scored on its own (entailment vs contradiction), as transformers does.
    one = client.classify_zero_shot(TEXTS[:1], ["sports"])[0]
    assert one.label == "sports" and 0.0 < one.score < 1.0


# ---- generation ---------------------------------------------------------------------------


def test_summarize(client: Client) -> None:
    result = client.summarize([LONG_TEXT, TEXTS[0]], min_length=2, max_length=12, num_beams=2)
    assert result.model.name == "bart-large-cnn" and len(result) == 2
    for summary in result:
        assert isinstance(summary.text, str)
        assert 0 < summary.tokens <= 12
    assert [s.truncated for s in result] == [True, False]
    again = client.summarize([TEXTS[0]], min_length=2, max_length=12, num_beams=2)
    assert again[0] == result[1]


# The tiny random dialogpt-medium answers TURNS with EOS at once under greedy decoding, which
# would make the stream check below trivially true; this history gets a 12-token reply.
GREEDY_TURNS = ["hi"]


def test_reply_greedy_is_deterministic_and_streams_the_same_text(client: Client) -> None:
    reply = client.reply(GREEDY_TURNS, max_new_tokens=12)
    assert reply.model.name == "dialogpt-medium"
    assert reply.tokens == 12 and reply.finish_reason is FinishReason.LENGTH
    assert reply.text
    assert client.reply(GREEDY_TURNS, max_new_tokens=12) == reply
    stream = client.stream_reply(GREEDY_TURNS, max_new_tokens=12)
    pieces = list(stream)
    assert "".join(pieces) == stream.text == reply.text
    assert stream.finish_reason is reply.finish_reason
    assert stream.model == reply.model
    assert stream.history_truncated is reply.history_truncated


def test_reply_seeded_sampling_is_reproducible_and_streams_the_same_text(client: Client) -> None:
    options = {"max_new_tokens": 30, "temperature": 1.0, "top_p": 0.95, "seed": 11}
    first = client.reply(TURNS, **options)
    assert client.reply(TURNS, **options) == first
    assert first.tokens > 1 and first.text
    stream = client.stream_reply(TURNS, **options)
    pieces = list(stream)
    assert len(pieces) > 1
    assert "".join(pieces) == stream.text == first.text
    assert stream.finish_reason is first.finish_reason
    assert stream.model == first.model


def test_reply_drops_the_oldest_turns_when_history_is_too_long(client: Client) -> None:
    reply = client.reply(TURNS * 10, max_new_tokens=20)
    assert reply.history_truncated
    stream = client.stream_reply(TURNS * 10, max_new_tokens=20)
    stream.result()
    assert stream.history_truncated
    assert not client.reply(TURNS[-1:], max_new_tokens=20).history_truncated


def test_reply_named_alternate_model(client: Client) -> None:
    reply = client.reply(TURNS, max_new_tokens=5, model="dialogpt-small")
    assert reply.model.name == "dialogpt-small"


# ---- errors -------------------------------------------------------------------------------

INVALID = {
    "embed: no texts": lambda c: c.embed([]),
    "embed: blank text": lambda c: c.embed(["ok", "   "]),
    "embed: text too long": lambda c: c.embed(["x" * 20001]),
    "embed: too long with truncation=error": lambda c: c.embed([LONG_TEXT], truncation="error"),
    "emotion: no texts": lambda c: c.detect_emotion([]),
    "emotion: too long with truncation=error": lambda c: c.detect_emotion(
        [LONG_TEXT], truncation=Truncation.ERROR
    ),
    "sentiment: too long with truncation=error": lambda c: c.analyze_sentiment(
        [LONG_TEXT], truncation=Truncation.ERROR
    ),
    "zero-shot: no labels": lambda c: c.classify_zero_shot(["t"], []),
    "zero-shot: too many labels": lambda c: c.classify_zero_shot(
        ["t"], [f"l{i}" for i in range(33)]
    ),
    "zero-shot: duplicate label": lambda c: c.classify_zero_shot(["t"], ["a", "a"]),
    "zero-shot: blank label": lambda c: c.classify_zero_shot(["t"], ["a", " "]),
    "zero-shot: template without {}": lambda c: c.classify_zero_shot(
        ["t"], ["a"], hypothesis_template="x"
    ),
    "zero-shot: template with {} twice": lambda c: c.classify_zero_shot(
        ["t"], ["a"], hypothesis_template="{} or {}"
    ),
    "summarize: max below min": lambda c: c.summarize(["t"], min_length=10, max_length=5),
    "summarize: negative length": lambda c: c.summarize(["t"], min_length=-1),
    "summarize: max_length over the cap": lambda c: c.summarize(["t"], max_length=513),
    "summarize: too many beams": lambda c: c.summarize(["t"], num_beams=5),
    "summarize: too long with truncation=error": lambda c: c.summarize(
        [LONG_TEXT], truncation="error"
    ),
    "reply: no turns": lambda c: c.reply([]),
    "reply: blank turn": lambda c: c.reply(["hi", ""]),
    "reply: negative max_new_tokens": lambda c: c.reply(["hi"], max_new_tokens=-1),
    "reply: max_new_tokens over the cap": lambda c: c.reply(["hi"], max_new_tokens=513),
    "reply: negative temperature": lambda c: c.reply(["hi"], temperature=-0.5),
    "reply: top_p zero": lambda c: c.reply(["hi"], temperature=1.0, top_p=0.0),
    "reply: top_p above one": lambda c: c.reply(["hi"], temperature=1.0, top_p=1.5),
    "reply: temperature not finite": lambda c: c.reply(["hi"], temperature=float("nan")),
    "reply: last turn longer than the context": lambda c: c.reply([LONG_TEXT]),
    "reply_stream: no turns": lambda c: list(c.stream_reply([])),
    "reply_stream: top_p above one": lambda c: list(c.stream_reply(["hi"], top_p=2.0)),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_argument(client: Client, case: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        INVALID[case](client)
    assert info.value.details


def test_too_long_last_turn_says_how_to_fix_it(client: Client) -> None:
    # Chat has no truncation option, so the message must not point at one.
    with pytest.raises(InvalidArgument) as info:
        client.reply([LONG_TEXT])
    assert "max_new_tokens" in info.value.details
    assert "TRUNCATION" not in info.value.details


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.analyze_sentiment(["t"], model="no-such-model"),
        lambda c: c.embed(["t"], model="distilbert-sst2"),
        lambda c: c.reply(["t"], model="all-minilm-l6-v2"),
    ],
    ids=["unknown model", "model of another task", "embedding model for chat"],
)
def test_not_found(client: Client, call: Callable[[Client], object]) -> None:
    with pytest.raises(NotFound) as info:
        call(client)
    assert info.value.details


def test_async_client(server: procs.ServerProcess) -> None:
    async def body() -> None:
        async with AsyncClient(server.target, timeout=60) as client:
            embedded, emotion = await asyncio.gather(
                client.embed(TEXTS), client.detect_emotion(TEXTS)
            )
            assert len(embedded.vectors) == len(emotion) == len(TEXTS)
            options = {"max_new_tokens": 20, **SAMPLING}
            reply = await client.reply(TURNS, **options)
            stream = client.stream_reply(TURNS, **options)
            assert "".join([piece async for piece in stream]) == reply.text
            assert (await stream.result()).finish_reason is reply.finish_reason
            assert await client.health("hubless.v1.EmbeddingsService") is HealthStatus.SERVING
            with pytest.raises(InvalidArgument):
                await client.classify_zero_shot(TEXTS, [])

    with server.explain_death():
        asyncio.run(body())


# ---- deadlines and cancellation -----------------------------------------------------------

SAMPLING = {"temperature": 1.0, "seed": 5}


def test_deadline_exceeded_and_server_keeps_serving(
    client: Client, server: procs.ServerProcess
) -> None:
    texts = [LONG_TEXT] * 16
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        client.summarize(texts, min_length=60, max_length=64, num_beams=4, timeout=0.05)
    assert time.monotonic() - started < 5
    with server.explain_death():
        for _ in range(6):  # a stream whose deadline passes mid-generation, several times
            with pytest.raises(DeadlineExceeded):
                list(client.stream_reply(TURNS, max_new_tokens=100, timeout=0.02, **SAMPLING))
        time.sleep(0.5)
        server.check_alive()
    assert client.health() is HealthStatus.SERVING
    assert len(client.embed(["still serving"]).vectors) == 1
    assert len(client.summarize([LONG_TEXT], max_length=8)) == 1


def test_cancel_a_stream_midway(client: Client, server: procs.ServerProcess) -> None:
    server.check_alive()
    with client.stream_reply(TURNS, max_new_tokens=100, timeout=60, **SAMPLING) as stream:
        received = []
        for piece in stream:
            received.append(piece)
            if len(received) == 2:
                stream.cancel()
    assert len(received) == 2 and stream.done
    assert stream.finish_reason is None
    server.check_alive()
    full = client.stream_reply(TURNS, max_new_tokens=100, **SAMPLING)
    pieces = list(full)
    assert pieces[:2] == received
    assert full.finish_reason is not None
    assert "".join(pieces) == client.reply(TURNS, max_new_tokens=100, **SAMPLING).text
    assert client.health("hubless.v1.ConversationService") is HealthStatus.SERVING
