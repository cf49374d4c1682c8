"""The server over real (tiny) models on a real volume: every RPC, fallback, read-only."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from hubless.v1 import (
    common_pb2,
    conversation_pb2,
    conversation_pb2_grpc,
    embeddings_pb2,
    embeddings_pb2_grpc,
    emotion_pb2,
    emotion_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    sentiment_pb2,
    sentiment_pb2_grpc,
    summarization_pb2,
    summarization_pb2_grpc,
    zero_shot_pb2,
    zero_shot_pb2_grpc,
)
from hubless_volume import Manifest
from tests.server.harness import RunningServer, settings_for

MakeVolume = Callable[[list[str] | None], Path]


@pytest.fixture
def serve() -> Iterator[Callable[..., RunningServer]]:
    servers: list[RunningServer] = []

    def start(volume: Path, *flags: str) -> RunningServer:
        server = RunningServer(settings_for(volume, *flags), None)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def tree_state(root: Path) -> dict[str, tuple[int, int, int]]:
    """(mode, size, mtime_ns) of every path under ``root``, without following links."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            path = Path(dirpath, name)
            st = path.lstat()
            state[str(path)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return state


def make_read_only(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            if not path.is_symlink():
                path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    root.chmod(root.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def make_writable(root: Path) -> None:
    root.chmod(root.stat().st_mode | stat.S_IWUSR)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_every_rpc_on_a_read_only_volume(
    volume_factory: MakeVolume, serve: Callable[..., RunningServer]
) -> None:
    volume = volume_factory(None)
    manifest = Manifest.load(volume)
    make_read_only(volume)
    before = tree_state(volume)
    try:
        server = serve(volume)
        ch = server.channel
        listed = models_pb2_grpc.ModelsServiceStub(ch).ListModels(
            models_pb2.ListModelsRequest(), timeout=10
        )
        assert {m.name for m in listed.models if m.state == models_pb2.MODEL_STATE_READY} == set(
            manifest.models
        )

        embedded = embeddings_pb2_grpc.EmbeddingsServiceStub(ch).Embed(
            embeddings_pb2.EmbedRequest(texts=["a sentence embedding", "hello"]), timeout=30
        )
        vector = np.array(embedded.embeddings[0].values)
        assert embedded.dimension == len(vector) > 0
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-3)
        entry = manifest.models["all-minilm-l6-v2"]
        assert (embedded.model.name, embedded.model.repo_id, embedded.model.commit) == (
            entry.name,
            entry.repo_id,
            entry.commit,
        )

        detected = emotion_pb2_grpc.EmotionServiceStub(ch).DetectEmotion(
            emotion_pb2.DetectEmotionRequest(texts=["I love this song"]), timeout=30
        )
        assert detected.results[0].label in {s.label for s in detected.results[0].scores}

        sentiment = sentiment_pb2_grpc.SentimentServiceStub(ch)
        for name in ("bert-multilingual-sentiment", "twitter-roberta-sentiment", "distilbert-sst2"):
            analyzed = sentiment.AnalyzeSentiment(
                sentiment_pb2.AnalyzeSentimentRequest(texts=["great phone"], model=name), timeout=30
            )
            result = analyzed.results[0]
            assert analyzed.model.name == name
            assert result.polarity != sentiment_pb2.POLARITY_UNSPECIFIED
            assert result.score <= result.polarity_score <= 1.0 + 1e-6

        classified = zero_shot_pb2_grpc.ZeroShotServiceStub(ch).ClassifyZeroShot(
            zero_shot_pb2.ClassifyZeroShotRequest(
                texts=["The council met to discuss the budget"],
                candidate_labels=["politics", "sports"],
            ),
            timeout=30,
        )
        scores = [s.score for s in classified.results[0].scores]
        assert sum(scores) == pytest.approx(1.0, abs=1e-3) and scores == sorted(scores)[::-1]

        summary = summarization_pb2_grpc.SummarizationServiceStub(ch).Summarize(
            summarization_pb2.SummarizeRequest(
                texts=["The city council met on Tuesday to discuss the budget."], max_length=8
            ),
            timeout=60,
        )
        assert 0 < summary.summaries[0].tokens <= 8

        chat = conversation_pb2_grpc.ConversationServiceStub(ch)
        reply = chat.Reply(
            conversation_pb2.ReplyRequest(turns=["Hi!"], max_new_tokens=6), timeout=60
        )
        assert reply.model.name == "dialogpt-medium" and 0 < reply.tokens <= 6
        chunks = list(
            chat.StreamReply(
                conversation_pb2.ReplyRequest(turns=["Hi!"], max_new_tokens=6), timeout=60
            )
        )
        assert chunks[0].model.name == "dialogpt-medium"
        assert chunks[-1].finish_reason != conversation_pb2.FINISH_REASON_UNSPECIFIED
        assert "".join(c.text for c in chunks) == reply.text  # greedy: same text both ways
    finally:
        after = tree_state(volume)
        make_writable(volume)
    assert after == before  # nothing written, created, touched or deleted on the volume


def test_input_too_long_with_real_tokenizer(
    volume_factory: MakeVolume, serve: Callable[..., RunningServer]
) -> None:
    server = serve(volume_factory(["emotion-english-distilroberta"]), "--tasks", "emotion")
    stub = emotion_pb2_grpc.EmotionServiceStub(server.channel)
    long_text = "word " * 1000
    response = stub.DetectEmotion(
        emotion_pb2.DetectEmotionRequest(texts=[long_text, "short"]), timeout=30
    )
    assert [r.truncated for r in response.results] == [True, False]
    with pytest.raises(grpc.RpcError) as info:
        stub.DetectEmotion(
            emotion_pb2.DetectEmotionRequest(
                texts=[long_text], truncation=common_pb2.TRUNCATION_ERROR
            ),
            timeout=30,
        )
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "tokens long; the model accepts at most" in info.value.details()


def test_dialogpt_small_answers_when_medium_is_missing(
    volume_factory: MakeVolume, serve: Callable[..., RunningServer]
) -> None:
    server = serve(volume_factory(["dialogpt-small"]), "--tasks", "conversation")
    reply = conversation_pb2_grpc.ConversationServiceStub(server.channel).Reply(
        conversation_pb2.ReplyRequest(turns=["Hello"], max_new_tokens=4), timeout=60
    )
    assert reply.model.name == "dialogpt-small"
    listed = {
        m.name: m
        for m in models_pb2_grpc.ModelsServiceStub(server.channel)
        .ListModels(models_pb2.ListModelsRequest(), timeout=10)
        .models
    }
    assert listed["dialogpt-medium"].state == models_pb2.MODEL_STATE_MISSING
    assert listed["dialogpt-medium"].error == (
        "not installed; fetch it with `hubless-fetch fetch dialogpt-medium`"
    )
    assert listed["dialogpt-small"].is_default
