"""The asyncio client against the in-process fake server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from hubless_client import (
    AsyncClient,
    DeadlineExceeded,
    FinishReason,
    HealthStatus,
    InvalidArgument,
    ModelState,
    NotFound,
    Polarity,
    RetryPolicy,
    Unavailable,
)
from tests.client.fake_server import (
    ENDLESS,
    FLAKY,
    REPLY_TEXT,
    SLOW,
    STREAM_PIECES,
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
        emotion = await client.emotion(["x"])
        assert emotion[0].label == "joy"
        sentiment = await client.sentiment(["good"])
        assert sentiment[0].polarity is Polarity.POSITIVE
        zero = await client.zero_shot(["t"], ["a", "b"])
        assert zero[0].label == "b"
        summary = await client.summarize(["text"], max_length=5)
        assert summary[0].text == "text"
        reply = await client.reply(["hi"], seed=3, temperature=0.7)
        assert reply.text == REPLY_TEXT and reply.finish_reason is FinishReason.STOP
        models = await client.models()
        assert models[0].state is ModelState.READY
        assert await client.health() is HealthStatus.SERVING
        assert await client.health("hubless.v1.Sentiment") is HealthStatus.NOT_SERVING
        assert await client.health("nope") is HealthStatus.SERVICE_UNKNOWN
        await client.wait_until_serving(timeout=5)

    run(fake.target, body)
    assert recorder.requests["Reply"][0].seed == 3


def test_stream_and_result(fake: FakeServer) -> None:
    async def body(client: AsyncClient) -> tuple[list[str], object]:
        stream = client.reply_stream(["a", "b", "c", "d"])
        pieces = [piece async for piece in stream]
        return pieces, await stream.result()

    pieces, result = run(fake.target, body)
    assert pieces == list(STREAM_PIECES)
    assert result.text == REPLY_TEXT
    assert result.finish_reason is FinishReason.LENGTH
    assert result.history_truncated and result.model.name == "dialo"


def test_stream_cancel(fake: FakeServer, recorder: Recorder) -> None:
    async def body(client: AsyncClient) -> list[str]:
        received: list[str] = []
        async with client.reply_stream([ENDLESS]) as stream:
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
            await client.emotion([])
        with pytest.raises(NotFound):
            await client.sentiment(["t"], model="missing")
        with pytest.raises(InvalidArgument):
            [piece async for piece in client.reply_stream([])]
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
            await client.models()

    run(f"127.0.0.1:{closed_port}", body, retries=False, timeout=5)
