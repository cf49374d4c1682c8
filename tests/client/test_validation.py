"""Arguments checked by the client before any RPC: every text, label and turn must be a
``str`` (``TypeError`` naming the argument and index), bytes are refused rather than decoded,
and the string arguments (``model``, ``name``...) are strings. Each test runs with the
blocking and the asyncio client (the ``invoke`` fixture) and checks nothing reached the
fake server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hubless_client import AsyncClient, Client
from tests.client.conftest import Invoke
from tests.client.fake_server import FakeServer, Recorder


def nothing_sent(recorder: Recorder) -> bool:
    return not any(recorder.requests.values())


@pytest.mark.parametrize(
    ("method", "args", "kwargs", "message"),
    [
        ("embed", ([1, 2],), {}, "texts must be str, got int at texts[0]"),
        ("embed", (["a", None],), {}, "texts must be str, got None at texts[1]"),
        ("detect_emotion", (["a", 2.5],), {}, "texts must be str, got float at texts[1]"),
        ("analyze_sentiment", ([["a"]],), {}, "texts must be str, got list at texts[0]"),
        ("summarize", (["a", "b", 3],), {}, "texts must be str, got int at texts[2]"),
        (
            "classify_zero_shot",
            ([1], ["x"]),
            {},
            "texts must be str, got int at texts[0]",
        ),
        (
            "classify_zero_shot",
            (["a"], ["x", 3]),
            {},
            "candidate_labels must be str, got int at candidate_labels[1]",
        ),
        ("reply", (["hi", 5],), {}, "turns must be str, got int at turns[1]"),
        ("embed", (5,), {}, "texts must be a sequence of str, got int"),
        ("embed", (b"abc",), {}, "texts must be a sequence of str, not a single bytes object"),
        ("embed", (["a"],), {"model": 3}, "model must be str, got int"),
        ("reply", (["a"],), {"model": None}, "model must be str, got None"),
        (
            "classify_zero_shot",
            (["a"], ["x"]),
            {"hypothesis_template": 7},
            "hypothesis_template must be str, got int",
        ),
        ("get_model", (7,), {}, "name must be str, got int"),
        ("health", (1,), {}, "service must be str, got int"),
    ],
)
def test_bad_arguments_are_refused_before_any_rpc(
    invoke: Invoke,
    recorder: Recorder,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    message: str,
) -> None:
    with pytest.raises(TypeError) as info:
        invoke(method, *args, **kwargs)
    assert str(info.value) == message
    assert nothing_sent(recorder)


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("embed", ([b"hello"],)),
        ("detect_emotion", (["ok", bytearray(b"x")],)),
        ("classify_zero_shot", (["a"], [b"sports"])),
        ("reply", ([b"hi"],)),
    ],
)
def test_bytes_are_refused_not_decoded(
    invoke: Invoke, recorder: Recorder, method: str, args: tuple[Any, ...]
) -> None:
    with pytest.raises(TypeError, match=r"must be str, got (bytes|bytearray) at \w+\[\d\]") as info:
        invoke(method, *args)
    assert "decode" in str(info.value)
    assert nothing_sent(recorder)


def test_a_bad_text_deep_in_a_split_call_sends_nothing(invoke: Invoke, recorder: Recorder):
    texts: list[Any] = ["a"] * 300
    texts[200] = 1
    with pytest.raises(TypeError, match=r"texts\[200\]"):
        invoke("embed", texts, options={"max_batch": 8})
    assert nothing_sent(recorder)


def test_str_subclasses_and_iterables_are_accepted(invoke: Invoke, recorder: Recorder) -> None:
    class Text(str):
        pass

    result, _ = invoke("embed", (t for t in [Text("a"), "b c"]))
    assert result.tokens == [1, 2]
    assert recorder.texts("Embed") == [["a", "b c"]]


def test_stream_reply_turns_are_checked(fake: FakeServer, recorder: Recorder) -> None:
    with (
        Client(fake.target, timeout=10) as client,
        pytest.raises(TypeError, match=r"turns must be str, got bytes at turns\[1\]"),
    ):
        client.stream_reply(["hi", b"there"])

    async def body() -> None:
        async with AsyncClient(fake.target, timeout=10) as client:
            with pytest.raises(TypeError, match=r"turns must be str, got int at turns\[0\]"):
                client.stream_reply([1])

    asyncio.run(body())
    assert nothing_sent(recorder)
