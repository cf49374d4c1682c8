"""Transparent chunking: large inputs split to ``max_batch``, sent at most ``max_in_flight`` at
once, answers in input order, one error with call-wide indexes, LIMIT_EXCEEDED re-splits.
Each test runs with the blocking and the asyncio client (the ``invoke`` fixture)."""

from __future__ import annotations

import logging
import time

import pytest

from hubless_client import (
    DEFAULT_MAX_BATCH,
    AsyncClient,
    Client,
    ErrorReason,
    FieldViolation,
    InvalidArgument,
    ModelRef,
)
from tests.client.conftest import Invoke
from tests.client.fake_server import (
    BAD,
    LIMITED,
    LIMITED_MAX_TEXTS,
    MAX_PAIRS,
    NEW_COMMIT,
    NEW_VERSION,
    PAIRED,
    PAUSE,
    SHRINKING,
    SLOW,
    SLOW_SECONDS,
    TOO_LONG,
    FakeServer,
    Recorder,
)


def words(n: int) -> list[str]:
    """Texts whose token counts (the fake's ``tokens``) are 1..n: their order shows."""
    return [" ".join(["w"] * (i + 1)) for i in range(n)]


def test_defaults(fake: FakeServer) -> None:
    with Client(fake.target) as client:
        assert client.max_batch == DEFAULT_MAX_BATCH == 64 and client.max_in_flight == 4
    for cls in (Client, AsyncClient):
        with pytest.raises(ValueError, match="max_batch"):
            cls(fake.target, max_batch=0)
        with pytest.raises(ValueError, match="max_in_flight"):
            cls(fake.target, max_in_flight=0)


def test_default_batch_is_the_servers_default_max_texts(invoke: Invoke, recorder: Recorder):
    result, _ = invoke("embed", words(130))
    assert sorted(len(t) for t in recorder.texts("Embed")) == [2, 64, 64]
    assert result.tokens == list(range(1, 131))


def test_a_small_call_is_one_request(invoke: Invoke, recorder: Recorder) -> None:
    result, _ = invoke("embed", ["a", "b c"], options={"max_batch": 2})
    assert recorder.texts("Embed") == [["a", "b c"]]
    assert result.vectors == [[0.0, 0.5, 1.0], [1.0, 0.5, 3.0]]


def test_chunks_are_reassembled_in_order(invoke: Invoke, recorder: Recorder) -> None:
    texts = words(10)
    result, _ = invoke("embed", texts, options={"max_batch": 3})
    assert sorted(recorder.texts("Embed")) == sorted(
        [texts[0:3], texts[3:6], texts[6:9], texts[9:10]]
    )
    assert len(result) == 10 and result.tokens == list(range(1, 11))
    # the fake's first value is the index within its request: chunks of 3
    assert [v[0] for v in result.vectors] == [0.0, 1.0, 2.0] * 3 + [0.0]
    assert result.truncated == [False] * 10 and result.dimension == 3


@pytest.mark.parametrize(
    ("method", "args", "rpc"),
    [
        ("detect_emotion", (), "DetectEmotion"),
        ("analyze_sentiment", (), "AnalyzeSentiment"),
        ("summarize", (), "Summarize"),
        ("classify_zero_shot", (["x", "y", "z"],), "ClassifyZeroShot"),
    ],
)
def test_every_batch_method_is_chunked(
    invoke: Invoke, recorder: Recorder, method: str, args: tuple, rpc: str
) -> None:
    texts = [f"good {i}" if i % 2 else f"bad {i}" for i in range(7)]
    result, _ = invoke(method, texts, *args, options={"max_batch": 2})
    assert sorted(len(t) for t in recorder.texts(rpc)) == [1, 2, 2, 2]
    assert len(result) == 7 and len(list(result)) == 7
    if method == "summarize":
        assert [s.text for s in result] == texts  # the fake echoes the first 10 characters
    if method == "analyze_sentiment":
        assert [r.label for r in result] == ["1 star", "5 stars"] * 3 + ["1 star"]
    if method == "classify_zero_shot":  # labels stay whole in every request
        assert all(list(r.candidate_labels) == ["x", "y", "z"] for r in recorder.requests[rpc])
        assert all(r.label == "z" for r in result)


def test_at_most_max_in_flight_requests_at_once(invoke: Invoke, recorder: Recorder) -> None:
    started = time.monotonic()
    result, _ = invoke("embed", [PAUSE] * 12, options={"max_batch": 1, "max_in_flight": 3})
    elapsed = time.monotonic() - started
    assert len(result) == 12 and len(recorder.requests["Embed"]) == 12
    assert recorder.peak["Embed"] == 3
    assert elapsed < 12 * 0.2  # concurrent: about 4 rounds of 0.2 s, not 12


def test_one_in_flight_is_sequential(invoke: Invoke, recorder: Recorder) -> None:
    invoke("embed", [PAUSE] * 3, options={"max_batch": 1, "max_in_flight": 1})
    assert recorder.peak["Embed"] == 1


def test_error_indexes_count_from_the_start_of_the_call(invoke: Invoke, recorder: Recorder) -> None:
    texts = ["a"] * 9
    texts[6] = TOO_LONG  # chunk 2 (texts 4..7), its texts[2]
    with pytest.raises(InvalidArgument) as info:
        invoke("embed", texts, truncation="error", options={"max_batch": 4})
    error = info.value
    assert error.reason is ErrorReason.INPUT_TOO_LONG
    assert error.field_violations == [FieldViolation("texts[6]", "longer than 8 tokens")]
    assert error.details == "texts[6] is longer than 8 tokens"
    assert error.metadata["limit_value"] == "8"
    assert error.__cause__ is error.rpc_error
    assert str(error) == "INVALID_ARGUMENT: texts[6] is longer than 8 tokens [INPUT_TOO_LONG]"


def test_the_first_error_stops_the_rest(invoke: Invoke, recorder: Recorder) -> None:
    texts = [BAD, *["ok"] * 5]
    with pytest.raises(InvalidArgument) as info:
        invoke("summarize", texts, options={"max_batch": 1, "max_in_flight": 1})
    assert [v.field for v in info.value.field_violations] == ["texts[0]"]
    assert len(recorder.requests["Summarize"]) == 1  # nothing sent after the failure


def test_requests_in_flight_are_cancelled_on_an_error(invoke: Invoke, recorder: Recorder):
    started = time.monotonic()
    with pytest.raises(InvalidArgument) as info:
        invoke("summarize", [SLOW, "ok", BAD, "ok"], options={"max_batch": 1})
    assert [v.field for v in info.value.field_violations] == ["texts[2]"]
    assert time.monotonic() - started < SLOW_SECONDS - 2  # unless cancelled, SLOW takes long
    # The slow request was cancelled: the fake stopped it early, or (a loaded machine) the
    # cancellation overtook it and it never started.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not recorder.stopped_early["Summarize"]:
        if time.monotonic() - started > 1 and not any(
            SLOW in texts for texts in recorder.texts("Summarize")
        ):
            break
        time.sleep(0.02)
    seen = any(SLOW in texts for texts in recorder.texts("Summarize"))
    assert recorder.stopped_early["Summarize"] == int(seen)


def test_limit_exceeded_splits_again_and_is_remembered(invoke: Invoke, recorder: Recorder):
    texts = [f"t{i}" for i in range(12)]
    result, client = invoke("detect_emotion", texts, model=LIMITED, options={"max_batch": 8})
    assert len(result) == 12 and all(e.label == "joy" for e in result)
    sizes = [len(t) for t in recorder.texts("DetectEmotion")]
    assert sorted(sizes) == [3, 4, 5, 8]  # 8 refused, split into 5 + 3; 4 fits
    answered = [t for t in recorder.texts("DetectEmotion") if len(t) <= LIMITED_MAX_TEXTS]
    answered.sort(key=lambda chunk: texts.index(chunk[0]))
    assert [text for chunk in answered for text in chunk] == texts
    assert client.max_batch == LIMITED_MAX_TEXTS


def test_the_learned_limit_is_used_next_time(fake: FakeServer, recorder: Recorder) -> None:
    with Client(fake.target, timeout=10, max_batch=8) as client:
        client.detect_emotion(["t"] * 8, model=LIMITED)
        recorder.reset()
        client.detect_emotion(["t"] * 8, model=LIMITED)
    # the two chunks are in flight together: they may reach the server in either order
    assert sorted(len(t) for t in recorder.texts("DetectEmotion")) == [3, 5]


def test_limit_exceeded_is_split_only_once(invoke: Invoke, recorder: Recorder) -> None:
    with pytest.raises(InvalidArgument) as info:
        invoke("analyze_sentiment", ["t"] * 6, model=SHRINKING)
    assert info.value.reason is ErrorReason.LIMIT_EXCEEDED
    assert info.value.metadata == {"limit": "--max-texts", "limit_value": "4"}
    sizes = [len(t) for t in recorder.texts("AnalyzeSentiment")]
    assert sizes[0] == 6 and sorted(sizes[1:]) in ([1, 5], [5])


def test_zero_shot_learns_the_pairs_limit(invoke: Invoke, recorder: Recorder) -> None:
    labels = ["a", "b", "c"]
    result, client = invoke("classify_zero_shot", ["t"] * 5, labels, model=PAIRED)
    assert len(result) == 5 and all(z.label == "c" for z in result)
    sizes = [len(t) for t in recorder.texts("ClassifyZeroShot")]
    assert sizes[0] == 5 and sorted(sizes[1:]) == [1, 2, 2]  # MAX_PAIRS // 3 texts each
    assert all(len(r.candidate_labels) == 3 for r in recorder.requests["ClassifyZeroShot"])
    assert client.max_batch == DEFAULT_MAX_BATCH  # the pairs limit depends on the labels
    assert MAX_PAIRS // len(labels) == 2


def test_zero_shot_pairs_limit_that_no_split_cures(invoke: Invoke, recorder: Recorder) -> None:
    with pytest.raises(InvalidArgument) as info:
        invoke("classify_zero_shot", ["t"], [f"l{i}" for i in range(MAX_PAIRS + 1)], model=PAIRED)
    assert info.value.reason is ErrorReason.LIMIT_EXCEEDED
    assert len(recorder.requests["ClassifyZeroShot"]) == 1


def test_chunks_answered_by_two_versions(
    invoke: Invoke, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="hubless_client")
    texts = ["a", "b", NEW_VERSION, "c", "d"]
    result, _ = invoke("embed", texts, options={"max_batch": 2})
    old = ModelRef("mini", "org/mini", "c" * 40)
    new = ModelRef("mini", "org/mini", NEW_COMMIT)
    assert result.model == old and result.models == (old, new)
    assert "(+1 other version)" in repr(result)
    assert "answered by 2 model versions" in caplog.text


def test_one_version_means_one_model(invoke: Invoke, recorder: Recorder) -> None:
    result, _ = invoke("embed", ["a", "b", "c"], options={"max_batch": 1})
    assert result.models == (result.model,)


def test_empty_and_single_string_inputs(invoke: Invoke, recorder: Recorder) -> None:
    with pytest.raises(InvalidArgument, match="texts must not be empty"):
        invoke("embed", [])
    with pytest.raises(TypeError, match="not a single string"):
        invoke("embed", "one text")
