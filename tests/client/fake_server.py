"""An in-process gRPC server implementing every hubless service with canned answers.

It records what reached it (requests, metadata, cancellations) so tests can check the client
end to end over a real socket without models.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

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

#: Texts that make the fake misbehave.
FLAKY = "flaky"  # Embed: the first call with this text fails UNAVAILABLE, the next succeeds
ALWAYS_DOWN = "down"  # Embed: always UNAVAILABLE
SLOW = "slow"  # Summarize: sleeps SLOW_SECONDS (for deadlines)
ENDLESS = "endless"  # ReplyStream: streams until cancelled
SLOW_STREAM = "slow-stream"  # ReplyStream: sleeps SLOW_SECONDS before the first chunk
SLOW_SECONDS = 3.0

STREAM_PIECES = ("Hel", "lo", " there", "!")
REPLY_TEXT = "".join(STREAM_PIECES)
EMOTION_LABELS = ("joy", "anger", "sadness")


def model_ref(name: str) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(name=name, repo_id=f"org/{name}", commit="c" * 40)


@dataclass
class Recorder:
    """What the fake saw."""

    metadata: dict[str, list[dict[str, str]]] = field(default_factory=lambda: defaultdict(list))
    requests: dict[str, list[object]] = field(default_factory=lambda: defaultdict(list))
    attempts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    stream_cancelled: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, method: str, request: object, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.requests[method].append(request)
            self.metadata[method].append(
                {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
            )

    def reset(self) -> None:
        with self.lock:
            self.metadata.clear()
            self.requests.clear()
            self.attempts.clear()
            self.stream_cancelled.clear()


def _require_texts(texts: object, context: grpc.ServicerContext) -> None:
    if not texts:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "texts must not be empty")


class Embeddings(embeddings_pb2_grpc.EmbeddingsServicer):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    def Embed(self, request, context):
        self.rec.record("Embed", request, context)
        _require_texts(request.texts, context)
        if ALWAYS_DOWN in request.texts:
            context.abort(grpc.StatusCode.UNAVAILABLE, "no embedding model loaded")
        if FLAKY in request.texts:
            with self.rec.lock:
                self.rec.attempts["Embed"] += 1
                first = self.rec.attempts["Embed"] == 1
            if first:
                context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        scale = 1.0 if request.normalize else 2.0
        return embeddings_pb2.EmbedResponse(
            embeddings=[
                embeddings_pb2.Embedding(
                    values=[scale * i, scale * 0.5, float(len(text))],
                    truncated=text.startswith("long"),
                    tokens=len(text.split()),
                )
                for i, text in enumerate(request.texts)
            ],
            dimension=3,
            model=model_ref(request.model or "mini"),
        )


class Emotion(emotion_pb2_grpc.EmotionServicer):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    def Detect(self, request, context):
        self.rec.record("Detect", request, context)
        _require_texts(request.texts, context)
        scores = [
            common_pb2.LabelScore(label=lbl, score=s)
            for lbl, s in zip(EMOTION_LABELS, (0.75, 0.125, 0.125), strict=True)
        ]
        return emotion_pb2.DetectResponse(
            results=[
                emotion_pb2.EmotionResult(label="joy", score=0.75, scores=scores)
                for _ in request.texts
            ],
            model=model_ref("emo"),
        )


class Sentiment(sentiment_pb2_grpc.SentimentServicer):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    def Analyze(self, request, context):
        self.rec.record("Analyze", request, context)
        _require_texts(request.texts, context)
        if request.model == "missing":
            context.abort(grpc.StatusCode.NOT_FOUND, "no model named 'missing'")
        if request.model == "busy":
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
        results = []
        for text in request.texts:
            good = "good" in text
            results.append(
                sentiment_pb2.SentimentResult(
                    label="5 stars" if good else "1 star",
                    score=0.5,
                    polarity=sentiment_pb2.POLARITY_POSITIVE
                    if good
                    else sentiment_pb2.POLARITY_NEGATIVE,
                    polarity_score=0.75,
                    scores=[
                        common_pb2.LabelScore(label="5 stars" if good else "1 star", score=0.5),
                        common_pb2.LabelScore(label="3 stars", score=0.25),
                    ],
                    truncated=False,
                )
            )
        return sentiment_pb2.AnalyzeResponse(
            results=results, model=model_ref(request.model or "stars")
        )


class ZeroShot(zero_shot_pb2_grpc.ZeroShotServicer):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    def Classify(self, request, context):
        self.rec.record("Classify", request, context)
        _require_texts(request.texts, context)
        if not request.candidate_labels:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "candidate_labels must not be empty")
        n = len(request.candidate_labels)
        # Highest first: the last label wins, to check the client keeps the server's order.
        ordered = list(reversed(request.candidate_labels))
        scores = [
            common_pb2.LabelScore(label=lbl, score=(n - i) / (n * (n + 1) / 2))
            for i, lbl in enumerate(ordered)
        ]
        return zero_shot_pb2.ClassifyResponse(
            results=[zero_shot_pb2.ZeroShotResult(scores=scores) for _ in request.texts],
            model=model_ref("nli"),
        )


class Summarization(summarization_pb2_grpc.SummarizationServicer):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    def Summarize(self, request, context):
        self.rec.record("Summarize", request, context)
        _require_texts(request.texts, context)
        if SLOW in request.texts:
            time.sleep(SLOW_SECONDS)
        return summarization_pb2.SummarizeResponse(
            summaries=[
                summarization_pb2.Summary(text=t[:10], truncated=len(t) > 50, tokens=3)
                for t in request.texts
            ],
            model=model_ref("bart"),
        )


class Conversation(conversation_pb2_grpc.ConversationServicer):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    def Reply(self, request, context):
        self.rec.record("Reply", request, context)
        if not request.turns:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "turns must not be empty")
        return conversation_pb2.ReplyResponse(
            text=REPLY_TEXT,
            tokens=4,
            finish_reason=conversation_pb2.FINISH_REASON_STOP,
            history_truncated=len(request.turns) > 3,
            model=model_ref("dialo"),
        )

    def ReplyStream(self, request, context):
        self.rec.record("ReplyStream", request, context)
        if not request.turns:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "turns must not be empty")
        if request.turns[-1] == SLOW_STREAM:
            time.sleep(SLOW_SECONDS)
        if request.turns[-1] == ENDLESS:
            finished = threading.Event()

            def on_done() -> None:
                if not finished.is_set():
                    self.rec.stream_cancelled.set()

            context.add_callback(on_done)
            yield conversation_pb2.ReplyChunk(text="and ", model=model_ref("dialo"))
            deadline = time.monotonic() + 10
            while context.is_active() and time.monotonic() < deadline:
                time.sleep(0.02)
                yield conversation_pb2.ReplyChunk(text="on ")
            if context.is_active():
                finished.set()
            return
        for i, piece in enumerate(STREAM_PIECES):
            yield conversation_pb2.ReplyChunk(
                text=piece,
                model=model_ref("dialo") if i == 0 else None,
                history_truncated=i == 0 and len(request.turns) > 3,
            )
        yield conversation_pb2.ReplyChunk(
            text="", finish_reason=conversation_pb2.FINISH_REASON_LENGTH
        )


class Models(models_pb2_grpc.ModelsServicer):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    def List(self, request, context):
        self.rec.record("List", request, context)
        return models_pb2.ListResponse(
            models=[
                models_pb2.ModelInfo(
                    name="mini",
                    task="embedding",
                    repo_id="org/mini",
                    commit="c" * 40,
                    device="cpu",
                    dtype="float32",
                    state=models_pb2.MODEL_STATE_READY,
                    is_default=True,
                    size_bytes=1234,
                    load_seconds=0.5,
                ),
                models_pb2.ModelInfo(
                    name="dialogpt-medium",
                    task="conversation",
                    repo_id="microsoft/DialoGPT-medium",
                    state=models_pb2.MODEL_STATE_MISSING,
                    error="not installed",
                ),
            ]
        )


@dataclass
class FakeServer:
    """A running fake; ``target`` is ``127.0.0.1:<port>``."""

    server: grpc.Server
    port: int
    recorder: Recorder
    health: health.HealthServicer

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(grace=None)


def start_fake_server() -> FakeServer:
    """Start the fake on a free loopback port. Health: the server and every service SERVING
    except ``hubless.v1.Sentiment`` (NOT_SERVING)."""
    rec = Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    embeddings_pb2_grpc.add_EmbeddingsServicer_to_server(Embeddings(rec), server)
    emotion_pb2_grpc.add_EmotionServicer_to_server(Emotion(rec), server)
    sentiment_pb2_grpc.add_SentimentServicer_to_server(Sentiment(rec), server)
    zero_shot_pb2_grpc.add_ZeroShotServicer_to_server(ZeroShot(rec), server)
    summarization_pb2_grpc.add_SummarizationServicer_to_server(Summarization(rec), server)
    conversation_pb2_grpc.add_ConversationServicer_to_server(Conversation(rec), server)
    models_pb2_grpc.add_ModelsServicer_to_server(Models(rec), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    serving = health_pb2.HealthCheckResponse.SERVING
    for name in ("", "hubless.v1.Embeddings", "hubless.v1.Conversation", "hubless.v1.Models"):
        health_servicer.set(name, serving)
    health_servicer.set("hubless.v1.Sentiment", health_pb2.HealthCheckResponse.NOT_SERVING)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return FakeServer(server=server, port=port, recorder=rec, health=health_servicer)
