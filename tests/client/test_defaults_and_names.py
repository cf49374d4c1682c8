"""The friendlier defaults: a 30 s deadline per unary request (none for streams unless asked),
numpy output through the client, and the verb method names with their deprecated aliases."""

from __future__ import annotations

import asyncio
import math
import warnings

import numpy as np
import pytest

from hubless_client import DEFAULT_TIMEOUT, AsyncClient, Client, DeadlineExceeded
from tests.client.conftest import Invoke
from tests.client.fake_server import REPLY_TEXT, SLOW, FakeServer, Recorder

#: The server sees a little more time left than the client gave (clock granularity).
SLACK = 0.1


def seconds_left(recorder: Recorder, method: str) -> list[float | None]:
    """Per request, the seconds its deadline had left on arrival; ``None``: no deadline
    (which grpcio's server reports as about 2**63 ns)."""
    return [None if left is None or left > 1e9 else left for left in recorder.deadlines[method]]


def within(left: float | None, low: float, high: float) -> bool:
    return left is not None and low < left <= high + SLACK


def test_default_deadline_is_sent(fake: FakeServer, recorder: Recorder) -> None:
    with Client(fake.target) as client:
        assert client.timeout == DEFAULT_TIMEOUT == 30 and client.stream_timeout is None
        client.embed(["a"])
        client.list_models()
        list(client.stream_reply(["hi"]))

    async def aio() -> None:
        async with AsyncClient(fake.target) as client:
            assert client.timeout == DEFAULT_TIMEOUT
            await client.detect_emotion(["a"])
            [piece async for piece in client.stream_reply(["hi"])]

    asyncio.run(aio())
    for method in ("Embed", "ListModels", "DetectEmotion"):
        (left,) = seconds_left(recorder, method)
        assert within(left, DEFAULT_TIMEOUT - 5, DEFAULT_TIMEOUT)
    assert seconds_left(recorder, "StreamReply") == [None, None]  # streams: no default


def test_tiny_default_deadline_expires(invoke: Invoke, recorder: Recorder) -> None:
    with pytest.raises(DeadlineExceeded):
        invoke("summarize", [SLOW], options={"timeout": 0.2})
    (left,) = seconds_left(recorder, "Summarize")
    assert within(left, 0, 0.2)


def test_per_call_timeout_and_no_deadline(invoke: Invoke, recorder: Recorder) -> None:
    invoke("embed", ["a"], timeout=5, options={"timeout": 0.2})
    invoke("embed", ["a"], timeout=math.inf)
    invoke("embed", ["a"], options={"timeout": None})
    five, unlimited, client_none = seconds_left(recorder, "Embed")
    assert within(five, 3, 5)
    assert unlimited is None and client_none is None


def test_each_chunk_gets_the_deadline(invoke: Invoke, recorder: Recorder) -> None:
    invoke("embed", ["a"] * 5, timeout=7, options={"max_batch": 2})
    lefts = seconds_left(recorder, "Embed")
    assert len(lefts) == 3 and all(within(left, 5, 7) for left in lefts)


def test_stream_deadlines(fake: FakeServer, recorder: Recorder) -> None:
    with Client(fake.target, timeout=0.2, stream_timeout=7) as client:
        assert "".join(client.stream_reply(["hi"])) == REPLY_TEXT
        list(client.stream_reply(["hi"], timeout=3))
        list(client.stream_reply(["hi"], timeout=math.inf))
    whole, given, unlimited = seconds_left(recorder, "StreamReply")
    assert within(whole, 5, 7) and within(given, 1, 3)
    assert unlimited is None


def test_embed_as_numpy_through_the_client(invoke: Invoke, recorder: Recorder) -> None:
    texts = ["a", "b c", "d", "e f g", "h"]
    arrays, _ = invoke("embed", texts, as_numpy=True, options={"max_batch": 2})
    lists, _ = invoke("embed", texts, options={"max_batch": 2})
    assert isinstance(arrays.vectors, np.ndarray)
    assert arrays.vectors.shape == (5, 3) and arrays.vectors.dtype == np.float32
    assert np.array_equal(arrays.vectors, lists.to_numpy())
    assert arrays.vectors.tolist() == lists.vectors
    assert arrays.tokens == lists.tokens == [1, 2, 1, 3, 1]


OLD_TO_NEW = [
    ("emotion", "detect_emotion", (["x"],)),
    ("sentiment", "analyze_sentiment", (["good"],)),
    ("zero_shot", "classify_zero_shot", (["t"], ["a", "b"])),
    ("models", "list_models", ()),
    ("model", "get_model", ("mini",)),
]


@pytest.mark.usefixtures("fresh_warnings")
def test_deprecated_aliases_warn_once_and_work(fake: FakeServer) -> None:
    with Client(fake.target, timeout=10) as client:
        for old, new, args in OLD_TO_NEW:
            with pytest.warns(DeprecationWarning, match=rf"Client\.{old}\(\) .*\.{new}\(\)"):
                assert getattr(client, old)(*args) == getattr(client, new)(*args)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                getattr(client, old)(*args)  # once per process
        with pytest.warns(DeprecationWarning, match="stream_reply"):
            assert "".join(client.reply_stream(["hi"])) == REPLY_TEXT


@pytest.mark.usefixtures("fresh_warnings")
def test_async_deprecated_aliases_warn_once_and_work(fake: FakeServer) -> None:
    async def body() -> None:
        async with AsyncClient(fake.target, timeout=10) as client:
            for old, new, args in OLD_TO_NEW:
                match = rf"AsyncClient\.{old}\(\) .*\.{new}\(\)"
                with pytest.warns(DeprecationWarning, match=match):
                    old_result = await getattr(client, old)(*args)
                assert old_result == await getattr(client, new)(*args)
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    await getattr(client, old)(*args)
            with pytest.warns(DeprecationWarning, match="stream_reply"):
                stream = client.reply_stream(["hi"])
            assert "".join([piece async for piece in stream]) == REPLY_TEXT

    asyncio.run(body())


def test_alias_metadata() -> None:
    assert Client.emotion.__name__ == "emotion"
    assert "detect_emotion" in (Client.emotion.__doc__ or "")
    assert AsyncClient.model.__qualname__ == "AsyncClient.model"
    for cls in (Client, AsyncClient):
        for name in ("embed", "detect_emotion", "analyze_sentiment", "classify_zero_shot"):
            assert callable(getattr(cls, name))
        for name in ("summarize", "reply", "stream_reply", "list_models", "get_model"):
            assert callable(getattr(cls, name))
