"""Fuzzing a real in-process server (fake runtimes) with a fixed budget and a committed corpus.

Raw bytes go to every unary method and StreamReply; then valid-but-nasty messages: invalid
UTF-8, special tokens, 10k emoji, zero-width and right-to-left runs, format strings, huge and
negative numbers, NaN and infinities. Whatever comes in, no status is UNKNOWN or INTERNAL,
no traceback is logged and the server stays healthy. The examples are derandomized (the same
on every run, so CI cannot flake) and the corpus in ``fuzz_corpus/`` is tried first.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hubless.v1 import embeddings_pb2, embeddings_pb2_grpc
from tests.server.fakes import FakeRuntime, fake_factory, make_fake_volume
from tests.server.harness import RunningServer, settings_for
from tests.server.raw_calls import METHODS, Method, Outcome, Records, call_raw
from tests.server.rich_errors import details_of

CORPUS = sorted((Path(__file__).parent / "fuzz_corpus").glob("*.bin"))
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
SEEN: Counter[tuple[str, str]] = Counter()
"""(method, code) of every generated message: the fuzzing must reach the models too."""
log = logging.getLogger(__name__)

# The budget: the whole file runs in well under a minute on two busy cores.
RAW_EXAMPLES = 200
MESSAGE_EXAMPLES = 1000
BUDGET = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SPECIAL_TOKENS = ["<s>", "</s>", "<|endoftext|>", "[CLS]", "[SEP]", "<pad>", "<unk>", "<mask>"]
NASTY_TEXTS = [
    " ".join(SPECIAL_TOKENS),
    "<|endoftext|>" * 200,
    "\U0001f600" * 10_000,  # 10k emoji
    "\U0001f468\u200d\U0001f469\u200d\U0001f467" * 500,  # ZWJ family sequences
    "\u200b\u200c\u200d\ufeff" * 500,  # zero-width run
    "\u202e" + "\u05e9\u05dc\u05d5\u05dd " * 300 + "\u202c",  # RTL override + Hebrew
    "\u0627\u0644\u0633\u0644\u0627\u0645 " * 300,  # Arabic
    "{0}",
    "{}{}",
    "%s%s%n",
    "{__class__}",
    "{0.__class__.__init__.__globals__}",
    "{:>999999999}",
    "a\u0301" * 2000,  # combining marks
    "\x00\x01\x7f",
    "x" * 20_001,  # one over --max-text-chars
    "   \t\n ",
    "crash-not" * 3,
]
TEMPLATES = ["{}", "{0}", "{}{}", "%s", "{__class__}", "{} {__class__}", "{}{0}", "{{}}", "{{}"]


def _nasty_string() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(NASTY_TEXTS),
        st.sampled_from(TEMPLATES),
        st.text(max_size=40),
        st.text(st.characters(categories=["Cf", "Mn", "Zs", "So"]), max_size=80),
    ).filter(lambda text: text.strip() != "crash")  # the fake runtime's INTERNAL trigger


_INT32 = st.one_of(
    st.sampled_from([0, -1, 1, 2**31 - 1, -(2**31), 512, 513]),
    st.integers(-(2**31), 2**31 - 1),
)
_INT64 = st.one_of(st.sampled_from([0, -1, 2**63 - 1, -(2**63)]), st.integers(-(2**63), 2**63 - 1))
_FLOAT = st.one_of(
    st.sampled_from([0.0, -0.0, 1e-40, 1e-45, 0.01, 100.0, 1e30, -1.0]),
    st.floats(width=32, allow_nan=True, allow_infinity=True),
)


def _value(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_STRING:
        return _nasty_string()
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type == FieldDescriptor.TYPE_FLOAT:
        return _FLOAT
    if field.type == FieldDescriptor.TYPE_INT64:
        return _INT64
    return _INT32  # int32 and the (open) enums: any value, known or not


_TEXT = _nasty_string().filter(lambda text: bool(text.strip()))
_TEXTS = st.lists(_TEXT, min_size=1, max_size=4)
SANE: dict[str, st.SearchStrategy[Any]] = {
    # values validation accepts, so that the nasty content reaches the runtimes
    "texts": _TEXTS,
    "turns": _TEXTS,
    "candidate_labels": st.lists(_TEXT, min_size=1, max_size=4, unique=True),
    "hypothesis_template": st.sampled_from(["This example is {}.", "{}", "<s>{}</s> %s"]),
    "model": st.just(""),
    "truncation": st.integers(0, 2),
    "min_length": st.integers(0, 8),
    "max_length": st.integers(8, 32),
    "num_beams": st.integers(1, 2),
    "max_new_tokens": st.integers(1, 16),
    "temperature": st.sampled_from([0.0, 0.01, 0.7, 100.0]),
    "top_p": st.sampled_from([1e-30, 0.01, 0.5, 0.9, 1.0]),
    "task": st.integers(0, 6),
    "name": st.sampled_from(["all-minilm-l6-v2", "bart-large", "distilbert-sst2"]),
}


def _nasty(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    if not field.is_repeated:
        return _value(field)
    sizes = st.one_of(st.integers(0, 4), st.sampled_from([33, 65]))
    return sizes.flatmap(lambda n: st.lists(_value(field), min_size=n, max_size=n))


@st.composite
def messages(draw: st.DrawFn) -> tuple[Method, bytes]:
    """A method and a request of its type: each field unset, sane (accepted by validation,
    with nasty text) or nasty (any value of its type); a string field sometimes holds raw
    bytes that are not UTF-8."""
    method = draw(st.sampled_from(METHODS))
    request = method.request()
    raw = b""
    for field in request.DESCRIPTOR.fields:
        choice = draw(st.sampled_from(["unset", "sane", "sane", "sane", "nasty"]))
        if choice == "unset":
            continue
        sane = SANE.get(field.name, _value(field))
        value = draw(sane if choice == "sane" else _nasty(field))
        if field.is_repeated:
            getattr(request, field.name).extend(value)
        else:
            setattr(request, field.name, value)
        if field.type == FieldDescriptor.TYPE_STRING and draw(st.integers(0, 19)) == 0:
            payload = draw(st.binary(min_size=1, max_size=8)) + b"\xff"
            raw += bytes([field.number << 3 | 2, len(payload)]) + payload
    return method, request.SerializeToString() + raw


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[tuple[RunningServer, Records]]:
    import tempfile

    FakeRuntime.reset()
    with tempfile.TemporaryDirectory(prefix="hubless-fuzz-") as tmp:
        volume = make_fake_volume(Path(tmp) / "volume")
        running = RunningServer(settings_for(volume), fake_factory)
        with Records() as logs:
            yield running, logs
        running.stop()


def check(outcome: Outcome, what: object, contract: bool = True) -> None:
    """Never UNKNOWN or INTERNAL; a hubless error carries the ErrorInfo contract."""
    assert outcome.code not in FORBIDDEN, (what, outcome.error)
    if contract and outcome.error is not None and outcome.code is not grpc.StatusCode.CANCELLED:
        details_of(outcome.error)


def assert_still_well(running: RunningServer, logs: Records) -> None:
    assert not logs.tracebacks(), [r.getMessage() for r in logs.tracebacks()][:3]
    health = health_pb2_grpc.HealthStub(running.channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1  # SERVING
    stub = embeddings_pb2_grpc.EmbeddingsServiceStub(running.channel)
    assert stub.Embed(embeddings_pb2.EmbedRequest(texts=["fine"]), timeout=5).embeddings


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_corpus(fuzzed: tuple[RunningServer, Records], path: Path) -> None:
    running, logs = fuzzed
    body = path.read_bytes()
    for method in METHODS:
        check(call_raw(running.channel, method, body), (method.name, path.name))
    assert_still_well(running, logs)


def _with_corpus(test: Any) -> Any:
    for path in reversed(CORPUS):
        test = example(body=path.read_bytes())(test)
    return test


@settings(BUDGET, max_examples=RAW_EXAMPLES)
@given(body=st.binary(max_size=300))
@_with_corpus
@example(body=embeddings_pb2.EmbedRequest(texts=["x"], model="m" * 1_000_000).SerializeToString())
def test_raw_bytes(fuzzed: tuple[RunningServer, Records], body: bytes) -> None:
    running, _ = fuzzed
    for method in METHODS:
        check(call_raw(running.channel, method, body), method.name)
    # grpc's health servicer answers an unknown service NOT_FOUND without details
    check(call_raw(running.channel, _HEALTH_CHECK, body), "Health.Check", contract=False)


_HEALTH_CHECK = Method("/grpc.health.v1.Health/Check", health_pb2.HealthCheckRequest, False)


@settings(BUDGET, max_examples=MESSAGE_EXAMPLES)
@given(case=messages())
def test_nasty_messages(fuzzed: tuple[RunningServer, Records], case: tuple[Method, bytes]) -> None:
    running, _ = fuzzed
    method, body = case
    outcome = call_raw(running.channel, method, body, timeout=30)
    SEEN[method.name, outcome.code.name] += 1
    check(outcome, method.name)


def test_the_server_is_still_well_after_fuzzing(fuzzed: tuple[RunningServer, Records]) -> None:
    running, logs = fuzzed
    assert_still_well(running, logs)
    log.info("fuzzed messages by method and code: %s", dict(SEEN))
    answered = {method for (method, code) in SEEN if code == "OK"}
    assert len(answered) >= len(METHODS) - 1, SEEN  # not everything was refused up front
