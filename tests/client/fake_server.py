"""An in-process gRPC server implementing every hubless service with canned answers.

It records what reached it (requests, metadata, cancellations) so tests can check the client
end to end over a real socket without models. Most errors carry the rich details of the
hubless error contract (see tests.client.fake_errors); a few carry none, or broken ones.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass

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
from tests.client.fake_errors import abort_broken, abort_rich
from tests.client.recorder import Recorder

#: Texts that make the fake misbehave.
FLAKY = "flaky"  # Embed: the first call with this text fails UNAVAILABLE (no details)
ALWAYS_DOWN = "down"  # Embed: always UNAVAILABLE, MODEL_LOADING + RetryInfo(DOWN_RETRY_S)
TOO_LONG = "too-long"  # Embed with truncation ERROR: INPUT_TOO_LONG, texts[i] violation
HINTED = "too-long-hinted"  # Embed: INPUT_TOO_LONG worded as the server does (proto names)
SLOW = "slow"  # Summarize: sleeps SLOW_SECONDS (for deadlines), stops early when cancelled
BAD = "bad"  # Summarize: INVALID_ARGUMENT, INVALID_FIELD, texts[i] violation
PAUSE = "pause"  # Embed: sleeps PAUSE_SECONDS (to see requests overlap)
NEW_VERSION = "v2"  # Embed: answered by NEW_COMMIT instead of the usual commit
ENDLESS = "endless"  # StreamReply: streams until cancelled
SLOW_STREAM = "slow-stream"  # StreamReply: sleeps SLOW_SECONDS before the first chunk
SLOW_SECONDS = 5.0

PAUSE_SECONDS = 0.2

#: Sentiment ``model=`` values that fail (and those of tests.client.fake_errors).
MISSING = "missing"  # NOT_FOUND, MODEL_NOT_FOUND
BUSY = "busy"  # RESOURCE_EXHAUSTED, QUEUE_FULL + RetryInfo(BUSY_RETRY_S)
SHRINKING = "shrinking"  # LIMIT_EXCEEDED --max-texts, limit one less than the texts sent

#: DetectEmotion with this ``model=`` takes at most LIMITED_MAX_TEXTS texts (LIMIT_EXCEEDED).
LIMITED = "limited"
LIMITED_MAX_TEXTS = 5
#: Embed with ``model=f"{CALLER_LIMITED}{n}"`` allows n such requests in flight at once, as
#: ``--max-caller-concurrency n`` would: one more is refused with RESOURCE_EXHAUSTED,
#: CALLER_LIMIT, ``limit_value`` n and RetryInfo(CALLER_RETRY_S); each takes CALLER_WORK_S.
CALLER_LIMITED = "caller-limit-"
CALLER_RETRY_S = 0.02
CALLER_WORK_S = 0.05
#: ClassifyZeroShot with this ``model=`` takes at most MAX_PAIRS texts x labels.
PAIRED = "paired"
MAX_PAIRS = 6
NEW_COMMIT = "e" * 40

BUSY_RETRY_S = 0.25
DOWN_RETRY_S = 1.5
QUEUE_LIMIT = 64
EMBED_MAX_TOKENS = 8

STREAM_PIECES = ("Hel", "lo", " there", "!")
REPLY_TEXT = "".join(STREAM_PIECES)
EMOTION_LABELS = ("joy", "anger", "sadness")


def model_ref(name: str, commit: str = "c" * 40) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(name=name, repo_id=f"org/{name}", commit=commit)


def abort_limit(context: grpc.ServicerContext, limit: str, value: int, message: str) -> None:
    """LIMIT_EXCEEDED as the server has it: the flag and its value in the metadata."""
    abort_rich(
        context,
        grpc.StatusCode.INVALID_ARGUMENT,
        message,
        "LIMIT_EXCEEDED",
        metadata={"limit": limit, "limit_value": str(value)},
        violations=[("texts" if limit == "--max-texts" else "candidate_labels", message)],
    )


def _require_texts(texts: Sequence[str], context: grpc.ServicerContext) -> None:
    if not texts:
        abort_rich(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            "texts must not be empty",
            "INVALID_FIELD",
            violations=[("texts", "must not be empty")],
        )


class Embeddings(embeddings_pb2_grpc.EmbeddingsServiceServicer):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    def Embed(self, request, context):
        if request.model.startswith(CALLER_LIMITED):
            return self._caller_limited(request, context)
        with self.rec.track("Embed"):
            return self._embed(request, context)

    def _caller_limited(self, request, context):
        """Embed under a per-caller concurrency limit (see :data:`CALLER_LIMITED`)."""
        limit = int(request.model.removeprefix(CALLER_LIMITED))
        with self.rec.lock:
            admitted = self.rec.running["caller"] < limit
            if admitted:
                self.rec.running["caller"] += 1
                self.rec.peak["caller"] = max(self.rec.peak["caller"], self.rec.running["caller"])
            else:
                self.rec.attempts["refused"] += 1
        if not admitted:
            self.rec.record("Embed", request, context)
            abort_rich(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this caller already has {limit} calls in flight, the most this server allows "
                f"(--max-caller-concurrency={limit})",
                "CALLER_LIMIT",
                metadata={"limit": "--max-caller-concurrency", "limit_value": str(limit)},
                retry_delay=CALLER_RETRY_S,
            )
        try:
            time.sleep(CALLER_WORK_S)
            return self._embed(request, context)
        finally:
            with self.rec.lock:
                self.rec.running["caller"] -= 1

    def _embed(self, request, context):
        self.rec.record("Embed", request, context)
        _require_texts(request.texts, context)
        if PAUSE in request.texts:
            time.sleep(PAUSE_SECONDS)
        if ALWAYS_DOWN in request.texts:
            abort_rich(
                context,
                grpc.StatusCode.UNAVAILABLE,
                "no embedding model loaded",
                "MODEL_LOADING",
                metadata={"model": "mini", "task": "embedding"},
                retry_delay=DOWN_RETRY_S,
            )
        if FLAKY in request.texts:
            with self.rec.lock:
                self.rec.attempts["Embed"] += 1
                first = self.rec.attempts["Embed"] == 1
            if first:
                context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        if request.truncation == common_pb2.TRUNCATION_ERROR and TOO_LONG in request.texts:
            index = list(request.texts).index(TOO_LONG)
            abort_rich(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"texts[{index}] is longer than {EMBED_MAX_TOKENS} tokens",
                "INPUT_TOO_LONG",
                metadata={"model": "mini", "limit": "tokens", "limit_value": "8"},
                violations=[(f"texts[{index}]", f"longer than {EMBED_MAX_TOKENS} tokens")],
            )
        if HINTED in request.texts:
            field = f"texts[{list(request.texts).index(HINTED)}]"
            message = (
                f"{field}: 12 tokens, the most this model reads is {EMBED_MAX_TOKENS} "
                "(truncation=TRUNCATION_ERROR; shorten it or set truncation=TRUNCATION_TRUNCATE)"
            )
            abort_rich(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                message,
                "INPUT_TOO_LONG",
                metadata={"tokens": "12", "max_input_tokens": str(EMBED_MAX_TOKENS)},
                violations=[(field, message)],
            )
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
            model=model_ref(
                request.model or "mini", NEW_COMMIT if NEW_VERSION in request.texts else "c" * 40
            ),
        )


class Emotion(emotion_pb2_grpc.EmotionServiceServicer):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    def DetectEmotion(self, request, context):
        self.rec.record("DetectEmotion", request, context)
        _require_texts(request.texts, context)
        if request.model == LIMITED and len(request.texts) > LIMITED_MAX_TEXTS:
            abort_limit(
                context,
                "--max-texts",
                LIMITED_MAX_TEXTS,
                f"texts has {len(request.texts)} entries; at most {LIMITED_MAX_TEXTS}",
            )
        scores = [
            common_pb2.LabelScore(label=lbl, score=s)
            for lbl, s in zip(EMOTION_LABELS, (0.75, 0.125, 0.125), strict=True)
        ]
        return emotion_pb2.DetectEmotionResponse(
            results=[
                emotion_pb2.EmotionResult(label="joy", score=0.75, scores=scores)
                for _ in request.texts
            ],
            model=model_ref("emo"),
        )


class Sentiment(sentiment_pb2_grpc.SentimentServiceServicer):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    def AnalyzeSentiment(self, request, context):
        self.rec.record("AnalyzeSentiment", request, context)
        _require_texts(request.texts, context)
        if request.model == MISSING:
            abort_rich(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"no model named {MISSING!r}",
                "MODEL_NOT_FOUND",
                metadata={"model": MISSING, "task": "sentiment"},
            )
        if request.model == BUSY:
            abort_rich(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "queue full",
                "QUEUE_FULL",
                metadata={"model": BUSY, "limit": "queue", "limit_value": str(QUEUE_LIMIT)},
                retry_delay=BUSY_RETRY_S,
            )
        if request.model == SHRINKING and len(request.texts) > 1:
            limit = len(request.texts) - 1
            abort_limit(context, "--max-texts", limit, f"at most {limit} texts")
        abort_broken(request.model, context)
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
        return sentiment_pb2.AnalyzeSentimentResponse(
            results=results, model=model_ref(request.model or "stars")
        )


class ZeroShot(zero_shot_pb2_grpc.ZeroShotServiceServicer):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    def ClassifyZeroShot(self, request, context):
        self.rec.record("ClassifyZeroShot", request, context)
        _require_texts(request.texts, context)
        if not request.candidate_labels:
            abort_rich(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "candidate_labels must not be empty",
                "INVALID_FIELD",
                violations=[("candidate_labels", "must not be empty")],
            )
        n = len(request.candidate_labels)
        if request.model == PAIRED and len(request.texts) * n > MAX_PAIRS:
            abort_limit(
                context, "--max-zero-shot-pairs", MAX_PAIRS, f"at most {MAX_PAIRS} text-label pairs"
            )
        # Highest first: the last label wins, to check the client keeps the server's order.
        ordered = list(reversed(request.candidate_labels))
        scores = [
            common_pb2.LabelScore(label=lbl, score=(n - i) / (n * (n + 1) / 2))
            for i, lbl in enumerate(ordered)
        ]
        return zero_shot_pb2.ClassifyZeroShotResponse(
            results=[zero_shot_pb2.ZeroShotResult(scores=scores) for _ in request.texts],
            model=model_ref("nli"),
        )


class Summarization(summarization_pb2_grpc.SummarizationServiceServicer):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    def Summarize(self, request, context):
        self.rec.record("Summarize", request, context)
        _require_texts(request.texts, context)
        if BAD in request.texts:
            index = list(request.texts).index(BAD)
            abort_rich(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"texts[{index}] is bad",
                "INVALID_FIELD",
                violations=[(f"texts[{index}]", f"texts[{index}] is bad")],
            )
        if SLOW in request.texts:
            self.rec.sleep("Summarize", SLOW_SECONDS, context)
        return summarization_pb2.SummarizeResponse(
            summaries=[
                summarization_pb2.Summary(text=t[:10], truncated=len(t) > 50, tokens=3)
                for t in request.texts
            ],
            model=model_ref("bart"),
        )


def _require_turns(turns: Sequence[str], context: grpc.ServicerContext) -> None:
    if not turns:
        abort_rich(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            "turns must not be empty",
            "INVALID_FIELD",
            violations=[("turns", "must not be empty")],
        )


class Conversation(conversation_pb2_grpc.ConversationServiceServicer):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    def Reply(self, request, context):
        self.rec.record("Reply", request, context)
        _require_turns(request.turns, context)
        return conversation_pb2.ReplyResponse(
            text=REPLY_TEXT,
            tokens=4,
            finish_reason=conversation_pb2.FINISH_REASON_STOP,
            history_truncated=len(request.turns) > 3,
            model=model_ref("dialo"),
        )

    def StreamReply(self, request, context):
        self.rec.record("StreamReply", request, context)
        _require_turns(request.turns, context)
        if request.turns[-1] == SLOW_STREAM:
            time.sleep(SLOW_SECONDS)
        if request.turns[-1] == ENDLESS:
            finished = threading.Event()

            def on_done() -> None:
                if not finished.is_set():
                    self.rec.stream_cancelled.set()

            context.add_callback(on_done)
            yield conversation_pb2.StreamReplyResponse(
                text="and ", model=model_ref("dialo"), tokens=1
            )
            deadline = time.monotonic() + 10
            tokens = 1
            while context.is_active() and time.monotonic() < deadline:
                time.sleep(0.02)
                tokens += 1
                yield conversation_pb2.StreamReplyResponse(text="on ", tokens=tokens)
            if context.is_active():
                finished.set()
            return
        for i, piece in enumerate(STREAM_PIECES):
            yield conversation_pb2.StreamReplyResponse(
                text=piece,
                model=model_ref("dialo") if i == 0 else None,
                history_truncated=i == 0 and len(request.turns) > 3,
                tokens=i + 1,
            )
        yield conversation_pb2.StreamReplyResponse(
            text="",
            finish_reason=conversation_pb2.FINISH_REASON_LENGTH,
            tokens=len(STREAM_PIECES),
        )


MODELS = (
    models_pb2.ModelInfo(
        name="mini",
        task=common_pb2.TASK_EMBEDDING,
        repo_id="org/mini",
        commit="c" * 40,
        device="cpu",
        dtype="float32",
        state=models_pb2.MODEL_STATE_READY,
        is_default=True,
        size_bytes=1234,
        load_seconds=0.5,
        max_input_tokens=EMBED_MAX_TOKENS,
        embedding_dimension=3,
    ),
    models_pb2.ModelInfo(
        name="distilbert-sst2",
        task=common_pb2.TASK_SENTIMENT,
        repo_id="distilbert/distilbert-base-uncased-finetuned-sst-2-english",
        commit="d" * 40,
        device="cpu",
        dtype="float32",
        state=models_pb2.MODEL_STATE_READY,
        is_default=True,
        max_input_tokens=512,
        labels=["NEGATIVE", "POSITIVE"],
    ),
    models_pb2.ModelInfo(
        name="bart-large-mnli",
        task=common_pb2.TASK_ZERO_SHOT,
        repo_id="facebook/bart-large-mnli",
        state=models_pb2.MODEL_STATE_SKIPPED,
        error="not loaded: --no-load-alternates",
    ),
    models_pb2.ModelInfo(
        name="dialogpt-medium",
        task=common_pb2.TASK_CONVERSATION,
        repo_id="microsoft/DialoGPT-medium",
        state=models_pb2.MODEL_STATE_MISSING,
        error="not installed",
    ),
)


class Models(models_pb2_grpc.ModelsServiceServicer):
    def __init__(self, rec: Recorder, models: Sequence[models_pb2.ModelInfo] = MODELS) -> None:
        self.rec = rec
        self.models = tuple(models)

    def ListModels(self, request, context):
        self.rec.record("ListModels", request, context)
        return models_pb2.ListModelsResponse(
            models=[m for m in self.models if request.task in (common_pb2.TASK_UNSPECIFIED, m.task)]
        )

    def GetModel(self, request, context):
        self.rec.record("GetModel", request, context)
        for m in self.models:
            if m.name == request.name:
                return models_pb2.GetModelResponse(model=m)
        abort_rich(
            context,
            grpc.StatusCode.NOT_FOUND,
            f"no model named {request.name!r}",
            "MODEL_NOT_FOUND",
            metadata={"model": request.name},
        )


#: Health: the server and these services SERVING, ``hubless.v1.SentimentService`` NOT_SERVING.
SERVING_SERVICES = (
    "",
    "hubless.v1.EmbeddingsService",
    "hubless.v1.ConversationService",
    "hubless.v1.ModelsService",
)
NOT_SERVING_SERVICE = "hubless.v1.SentimentService"


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


def start_fake_server(models: Sequence[models_pb2.ModelInfo] = MODELS) -> FakeServer:
    """Start the fake on a free loopback port (health: :data:`SERVING_SERVICES` SERVING,
    :data:`NOT_SERVING_SERVICE` NOT_SERVING); ListModels and GetModel answer ``models``."""
    rec = Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    embeddings_pb2_grpc.add_EmbeddingsServiceServicer_to_server(Embeddings(rec), server)
    emotion_pb2_grpc.add_EmotionServiceServicer_to_server(Emotion(rec), server)
    sentiment_pb2_grpc.add_SentimentServiceServicer_to_server(Sentiment(rec), server)
    zero_shot_pb2_grpc.add_ZeroShotServiceServicer_to_server(ZeroShot(rec), server)
    summarization_pb2_grpc.add_SummarizationServiceServicer_to_server(Summarization(rec), server)
    conversation_pb2_grpc.add_ConversationServiceServicer_to_server(Conversation(rec), server)
    models_pb2_grpc.add_ModelsServiceServicer_to_server(Models(rec, models), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in SERVING_SERVICES:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set(NOT_SERVING_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return FakeServer(server=server, port=port, recorder=rec, health=health_servicer)
