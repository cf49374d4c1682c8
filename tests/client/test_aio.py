"""The asyncio client against the in-process fake server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from hubless_client import (
    AsyncClient,
    ConnectionFailed,
    DeadlineExceeded,
    ErrorReason,
    FieldViolation,
    FinishReason,
    HealthStatus,
    Internal,
    InvalidArgument,
    ModelState,
    NotFound,
    Polarity,
    ResourceExhausted,
    RetryPolicy,
    Task,
    Unavailable,
)
from tests.client.fake_errors import GARBAGE_DETAILS
from tests.client.fake_server import (
    ALWAYS_DOWN,
    BUSY,
    BUSY_RETRY_S,
    DOWN_RETRY_S,
    ENDLESS,
    FLAKY,
    MISSING,
    NOT_SERVING_SERVICE,
    REPLY_TEXT,
    SLOW,
    STREAM_PIECES,
    TOO_LONG,
    FakeServer,
    Recorder,
)

T = TypeVar("T")
FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05)


def run(target: str, body: Callable[[AsyncClient], Awaitable[T]], **kwargs: object) -> T:
    """Run ``body(client)`` in a fresh event loop with a client made inside it."""

    async def main() -> T:
        async with AsyncClient(target, **{"timeout": 10, **kwargs}) as client:
            return await body(client)

    return asyncio.run(main())


def test_every_unary_rpc(fake: FakeServer, recorder: Recorder) -> None:
    async def body(client: AsyncClient) -> None:
        embed = await client.embed(["a b"], normalize=False)
        assert embed.vectors == [[0.0, 1.0, 3.0]] and embed.dimension == 3
        emotion = await client.detect_emotion(["x"])
        assert emotion[0].label == "joy"
        sentiment = await client.analyze_sentiment(["good"])
        assert sentiment[0].polarity is Polarity.POSITIVE
        zero = await client.classify_zero_shot(["t"], ["a", "b"])
        assert zero[0].label == "b"
        summary = await client.summarize(["text"], max_length=5)
        assert summary[0].text == "text"
        reply = await client.reply(["hi"], seed=3, temperature=0.7)
        assert reply.text == REPLY_TEXT and reply.finish_reason is FinishReason.STOP
        models = await client.list_models()
        assert models[0].state is ModelState.READY and models[0].task is Task.EMBEDDING
        assert models[0].embedding_dimension == 3
        assert [m.name for m in await client.list_models(Task.ZERO_SHOT)] == ["bart-large-mnli"]
        skipped = await client.get_model("bart-large-mnli")
        assert skipped.state is ModelState.SKIPPED and skipped.task == "zero-shot"
        assert await client.health() is HealthStatus.SERVING
        assert await client.health(NOT_SERVING_SERVICE) is HealthStatus.NOT_SERVING
        assert await client.health("nope") is HealthStatus.SERVICE_UNKNOWN
        await client.wait_until_serving("hubless.v1.ConversationService", timeout=5)

    run(fake.target, body)
    assert recorder.requests["Reply"][0].seed == 3
    assert not recorder.requests["Reply"][0].HasField("max_new_tokens")
    summarize = recorder.requests["Summarize"][0]
    assert summarize.max_length == 5 and not summarize.HasField("min_length")
    assert [r.task for r in recorder.requests["ListModels"]] == [0, 3]


def test_stream_and_result(fake: FakeServer) -> None:
    async def body(client: AsyncClient) -> tuple[list[str], object]:
        stream = client.stream_reply(["a", "b", "c", "d"])
        pieces = [piece async for piece in stream]
        return pieces, await stream.result()

    pieces, result = run(fake.target, body)
    assert pieces == list(STREAM_PIECES)
    assert result.text == REPLY_TEXT and result.tokens == len(STREAM_PIECES)
    assert result.finish_reason is FinishReason.LENGTH
    assert result.history_truncated and result.model.name == "dialo"


def test_stream_cancel(fake: FakeServer, recorder: Recorder) -> None:
    async def body(client: AsyncClient) -> list[str]:
        received: list[str] = []
        async with client.stream_reply([ENDLESS]) as stream:
            async for piece in stream:
                received.append(piece)
                if len(received) == 3:
                    stream.cancel()
        assert stream.done
        assert (await client.reply(["again"])).text == REPLY_TEXT
        return received

    received = run(fake.target, body)
    assert received[:3] == ["and ", "on ", "on "]
    assert recorder.stream_cancelled.wait(5)


def test_errors_retry_metadata_deadline(fake: FakeServer, recorder: Recorder) -> None:
    async def body(client: AsyncClient) -> None:
        with pytest.raises(InvalidArgument, match="texts must not be empty"):
            await client.detect_emotion([])
        with pytest.raises(NotFound):
            await client.analyze_sentiment(["t"], model=MISSING)
        with pytest.raises(InvalidArgument):
            [piece async for piece in client.stream_reply([])]
        assert len((await client.embed([FLAKY])).vectors) == 1
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await client.summarize([SLOW], timeout=0.3)
        assert time.monotonic() - started < 2

    run(fake.target, body, retries=FAST_RETRY, metadata=[("authorization", "Bearer t")])
    assert recorder.attempts["Embed"] == 2
    assert all(m["authorization"] == "Bearer t" for m in recorder.metadata["Embed"])


def test_unreachable(closed_port: int) -> None:
    async def body(client: AsyncClient) -> None:
        with pytest.raises(Unavailable):
            await client.list_models()

    run(f"127.0.0.1:{closed_port}", body, retries=False, timeout=5)


def test_rich_error_details(fake: FakeServer, recorder: Recorder) -> None:
    async def body(client: AsyncClient) -> None:
        with pytest.raises(InvalidArgument) as invalid:
            await client.embed(["a", "b", "c", TOO_LONG], truncation="error")
        assert invalid.value.reason is ErrorReason.INPUT_TOO_LONG
        assert invalid.value.field_violations == [
            FieldViolation("texts[3]", "longer than 8 tokens")
        ]
        assert invalid.value.metadata["limit_value"] == "8"
        with pytest.raises(ResourceExhausted) as busy:
            await client.analyze_sentiment(["t"], model=BUSY)
        assert busy.value.reason == ErrorReason.QUEUE_FULL
        assert busy.value.retry_delay == pytest.approx(BUSY_RETRY_S)
        with pytest.raises(NotFound) as missing:
            await client.get_model("nope")
        assert missing.value.reason is ErrorReason.MODEL_NOT_FOUND
        with pytest.raises(InvalidArgument) as stream:
            [piece async for piece in client.stream_reply([])]
        assert stream.value.field_violations == [FieldViolation("turns", "must not be empty")]
        with pytest.raises(Unavailable) as down:
            await client.embed([ALWAYS_DOWN])
        assert down.value.reason is ErrorReason.MODEL_LOADING
        assert down.value.retry_delay == pytest.approx(DOWN_RETRY_S)
        with pytest.raises(Internal) as garbage:
            await client.analyze_sentiment(["t"], model=GARBAGE_DETAILS)
        assert (garbage.value.reason, garbage.value.retry_delay) == ("", None)
        with pytest.raises(ConnectionFailed, match="warming up") as plain:
            await client.embed([FLAKY])
        assert (plain.value.reason, plain.value.field_violations) == ("UNREACHABLE", [])

    run(fake.target, body, retries=False)
