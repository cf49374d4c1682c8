"""A server limiting calls per caller (``--max-caller-concurrency``): a split call refused with
``CALLER_LIMIT`` sends fewer requests at once and resends the refused ones after the server's
RetryInfo delay, within bounds (retries per chunk, the call's deadline). End to end against
the fake (its ``caller-limit-N`` embedding model) with both clients, and the schedule alone."""

from __future__ import annotations

import grpc
import pytest

from hubless_client import Client, ErrorReason, ResourceExhausted, _chunks
from hubless_client._chunks import BatchCall, Limits, Schedule
from tests.client.conftest import Invoke
from tests.client.fake_errors import rich_error
from tests.client.fake_server import CALLER_LIMITED, FakeServer, Recorder
from tests.client.test_chunking import words


@pytest.mark.parametrize("limit", [1, 2])
def test_300_texts_with_4_chunks_in_flight_fit_a_smaller_caller_limit(
    invoke: Invoke, recorder: Recorder, limit: int
) -> None:
    texts = words(300)
    result, client = invoke("embed", texts, model=f"{CALLER_LIMITED}{limit}")
    assert client.max_in_flight == 4 and client.max_batch == 64  # the defaults
    assert len(result) == 300 and result.tokens == list(range(1, 301))  # in order
    assert recorder.attempts["refused"] >= 1  # the first burst of 4 was too many


def test_the_caller_limit_is_remembered(fake: FakeServer, recorder: Recorder) -> None:
    with Client(fake.target, timeout=10) as client:
        client.embed(words(300), model=f"{CALLER_LIMITED}1")
        assert recorder.attempts["refused"] >= 1
        recorder.reset()
        assert len(client.embed(words(300), model=f"{CALLER_LIMITED}1")) == 300
    assert recorder.attempts["refused"] == 0  # one at a time from the start
    assert len(recorder.requests["Embed"]) == 5


def test_a_limit_that_never_clears_ends_at_the_deadline(invoke: Invoke, recorder: Recorder):
    with pytest.raises(ResourceExhausted) as info:
        invoke("embed", words(100), model=f"{CALLER_LIMITED}0", options={"timeout": 0.5})
    assert info.value.reason is ErrorReason.CALLER_LIMIT
    assert info.value.metadata["limit"] == "--max-caller-concurrency"
    # 2 chunks; waits doubling from the fake's 0.02 s: after about 5 refusals of a chunk the
    # next wait would pass the deadline
    assert 3 <= recorder.attempts["refused"] <= 2 * 6


def test_a_limit_that_never_clears_ends_after_bounded_retries(
    invoke: Invoke, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_chunks, "CALLER_LIMIT_RETRIES", 2)
    with pytest.raises(ResourceExhausted) as info:
        invoke(
            "embed",
            ["a", "b"],
            model=f"{CALLER_LIMITED}0",
            options={"timeout": None, "max_batch": 1},
        )
    assert info.value.reason is ErrorReason.CALLER_LIMIT
    # a chunk's first request and its 2 resends; the other chunk's at most as many
    assert 3 <= recorder.attempts["refused"] <= 6


def test_a_call_of_one_request_is_not_resent(invoke: Invoke, recorder: Recorder) -> None:
    with pytest.raises(ResourceExhausted) as info:
        invoke("embed", words(64), model=f"{CALLER_LIMITED}0")
    assert info.value.reason is ErrorReason.CALLER_LIMIT and info.value.retry_delay
    assert recorder.attempts["refused"] == 1


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def caller_limit_error(limit: int | None = None, delay: float | None = 0.25) -> grpc.RpcError:
    metadata = {"limit": "--max-caller-concurrency"}
    if limit is not None:
        metadata["limit_value"] = str(limit)
    return rich_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "too many calls in flight",
        "CALLER_LIMIT",
        metadata=metadata,
        retry_delay=delay,
    )


def schedule(texts: int, max_in_flight: int, timeout: float | None, clock: Clock) -> Schedule:
    call = BatchCall([str(i) for i in range(texts)], lambda t: t, lambda r: r, list)
    return Schedule(call, Limits(max_batch=1), max_in_flight, timeout, clock)


def test_the_cap_is_halved_once_per_burst_and_refused_chunks_wait() -> None:
    clock = Clock()
    plan = schedule(12, 8, None, clock)
    burst = plan.due(0)
    assert len(burst) == 8
    for chunk in burst[4:]:  # four of one burst refused: one cut, not four
        plan.failed(chunk, caller_limit_error())
    assert plan.cap == 4
    assert plan.due(4) == []  # the cap is full
    assert plan.due(0) == []  # and the refused wait 0.25 s
    assert plan.wait() == pytest.approx(0.25)
    clock.now += 0.25
    resent = plan.due(1)
    assert len(resent) == 3 and {c.offset for c in resent} <= {4, 5, 6, 7}
    plan.failed(resent[0], caller_limit_error())  # refused again after the cut: cut again
    assert plan.cap == 2
    assert plan.wait() == pytest.approx(0.5)  # its second refusal waits twice as long


def test_the_cap_follows_the_servers_limit_and_never_drops_below_one() -> None:
    clock = Clock()
    limits = Limits(max_batch=1)
    plan = Schedule(
        BatchCall(["a", "b", "c", "d"], lambda t: t, lambda r: r, list), limits, 4, None, clock
    )
    first, *_ = plan.due(0)
    plan.failed(first, caller_limit_error(limit=1))
    assert plan.cap == 1 and limits.caller_limit == 1 and limits.in_flight(4) == 1
    clock.now += 1
    again = plan.due(0)
    plan.failed(again[0], caller_limit_error(limit=1))
    assert plan.cap == 1


def test_no_retry_past_the_calls_deadline() -> None:
    clock = Clock()
    plan = schedule(2, 1, 1.0, clock)
    (chunk,) = plan.due(0)
    clock.now += 0.5
    plan.failed(chunk, caller_limit_error(delay=0.4))  # 0.9 s: within the deadline
    clock.now += 0.4
    (again,) = plan.due(0)
    assert again == chunk
    with pytest.raises(ResourceExhausted) as info:
        plan.failed(again, caller_limit_error(delay=0.4))  # 0.9 + 0.8 > 1.0
    assert info.value.reason is ErrorReason.CALLER_LIMIT
