"""The generation step loop behind gRPC, over a fake step engine: no request holds a thread,
limits and their statuses, cancellation and deadlines free the slot, streams and unary
replies share the batch, and summarization falls back from bart-large-cnn to bart-large."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from hubless.v1 import (
    conversation_pb2,
    conversation_pb2_grpc,
    embeddings_pb2,
    embeddings_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    summarization_pb2,
    summarization_pb2_grpc,
)
from hubless_server.inference.scheduler import GenerationScheduler
from hubless_volume import Manifest
from tests.server.fake_generation import FakeStepEngine, step_factory
from tests.server.fakes import FakeRuntime, fake_factory, make_fake_volume
from tests.server.harness import RunningServer, settings_for

Start = Callable[..., RunningServer]
CHAT = "dialogpt-small"


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """``start(*flags)``: a server over fake runtimes (a step engine for chat) serving
    all-minilm-l6-v2 and dialogpt-small."""
    FakeRuntime.reset()
    FakeStepEngine.reset()
    servers: list[RunningServer] = []

    def run(*flags: str) -> RunningServer:
        volume = make_fake_volume(tmp_path / f"v{len(servers)}", ["all-minilm-l6-v2", CHAT])
        # replies that outlast the test, and a KV budget that does not limit them (but where a
        # test sets its own: the last flag wins)
        flags = ("--max-new-tokens", "100000", "--max-kv-tokens", "10000000", *flags)
        server = RunningServer(settings_for(volume, *flags), step_factory)
        servers.append(server)
        return server

    yield run
    FakeStepEngine.reset()
    for server in servers:
        server.stop()


def scheduler(server: RunningServer, name: str = CHAT) -> GenerationScheduler:
    assert server.server.registry is not None
    batcher = server.server.registry.records[name].batcher
    assert batcher is not None and batcher.generation is not None
    return batcher.generation


def wait_for(predicate: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def chat(server: RunningServer) -> conversation_pb2_grpc.ConversationServiceStub:
    return conversation_pb2_grpc.ConversationServiceStub(server.channel)


def open_stream(server: RunningServer, tokens: int, timeout: float = 60) -> grpc.Future:
    call = chat(server).StreamReply(
        conversation_pb2.StreamReplyRequest(turns=["hi"], max_new_tokens=tokens), timeout=timeout
    )
    return call


def test_embed_completes_while_100_streams_are_open(start: Start) -> None:
    """100 open streams hold no thread each: an Embed (another model, same inference gate)
    is answered between their steps, and the inference pool stays small."""
    server = start()
    FakeStepEngine.step_delay = 0.005
    streams = [open_stream(server, 10_000) for _ in range(100)]
    loop = scheduler(server)
    wait_for(lambda: loop.running == 32 and loop.waiting == 68)
    stub = embeddings_pb2_grpc.EmbeddingsServiceStub(server.channel)
    for _ in range(3):
        reply = stub.Embed(embeddings_pb2.EmbedRequest(texts=["meanwhile"]), timeout=10)
        assert reply.model.name == "all-minilm-l6-v2"
    assert max(FakeStepEngine.steps) == 32  # the running streams decode together
    infer = [t for t in threading.enumerate() if t.name.startswith("hubless-infer")]
    assert len(infer) <= 4, [t.name for t in infer]
    for stream in streams:
        stream.cancel()
    wait_for(lambda: loop.running == 0 and loop.waiting == 0)


def test_streams_and_unary_replies_share_the_batch(start: Start) -> None:
    server = start()
    FakeStepEngine.step_delay = 0.01
    stub = chat(server)
    replies = [
        stub.Reply.future(
            conversation_pb2.ReplyRequest(turns=["hi"], max_new_tokens=5 + i), timeout=30
        )
        for i in range(4)
    ]
    streams = [open_stream(server, 3 + i) for i in range(4)]
    for i, stream in enumerate(streams):
        chunks = list(stream)
        assert "".join(c.text for c in chunks) == " ".join(f"w{k}" for k in range(3 + i))
        assert chunks[0].model.name == CHAT
        assert chunks[-1].tokens == 3 + i
        assert chunks[-1].finish_reason == conversation_pb2.FINISH_REASON_LENGTH
    for i, future in enumerate(replies):
        reply = future.result()
        assert reply.text == " ".join(f"w{k}" for k in range(5 + i)) and reply.tokens == 5 + i
    assert max(FakeStepEngine.steps) > 4  # unary and streamed requests decoded together


def test_streams_opened_during_a_step_are_prefilled_together(start: Start) -> None:
    """8 streams that arrive while a step runs join in one prefill at the next step boundary,
    before the stream that was running gets its next token."""
    server = start()
    loop = scheduler(server)
    hold = FakeStepEngine.hold_next()
    first = open_stream(server, 6)
    assert FakeStepEngine.holding.wait(10)  # the first stream's prefill runs (held)
    others = [open_stream(server, 4) for _ in range(8)]
    wait_for(lambda: loop.waiting == 8)
    hold.set()
    assert [len(list(s)) for s in others] == [4] * 8
    assert "".join(c.text for c in first) == " ".join(f"w{k}" for k in range(6))
    assert FakeStepEngine.events[:3] == [("prefill", 1), ("prefill", 8), ("decode", 9)]


def test_running_limit_then_queue_limit(start: Start) -> None:
    """Beyond --max-running-sequences requests wait; beyond --max-queue waiting they get
    RESOURCE_EXHAUSTED (QUEUE_FULL), streams and unary alike."""
    server = start("--max-running-sequences", "2", "--max-queue", "2", "--max-texts", "2")
    FakeStepEngine.step_delay = 0.005
    loop = scheduler(server)
    streams = [open_stream(server, 10_000) for _ in range(2)]
    wait_for(lambda: loop.running == 2)
    streams += [open_stream(server, 10_000) for _ in range(2)]
    wait_for(lambda: loop.running == 2 and loop.waiting == 2)
    with pytest.raises(grpc.RpcError) as refused:
        list(open_stream(server, 5, timeout=10))
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "overloaded" in refused.value.details()
    with pytest.raises(grpc.RpcError) as unary:
        chat(server).Reply(conversation_pb2.ReplyRequest(turns=["hi"]), timeout=10)
    assert unary.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert loop.running == 2
    for stream in streams:
        stream.cancel()
    wait_for(lambda: loop.running == 0 and loop.waiting == 0)


def test_kv_budget_limits_the_running_batch(start: Start) -> None:
    """--max-kv-tokens: rows x (prompt + max_new_tokens); 3 rows of 1 + 99 fit in 300."""
    server = start("--max-kv-tokens", "300")
    FakeStepEngine.step_delay = 0.005
    loop = scheduler(server)
    streams = [open_stream(server, 99) for _ in range(5)]
    wait_for(lambda: loop.running == 3 and loop.waiting == 2)
    for stream in streams:
        assert sum(1 for _ in stream) >= 2  # all five finish
    wait_for(lambda: loop.running == 0)
    assert max(FakeStepEngine.steps) <= 3  # (prefills may run before the first decode)


def test_cancel_frees_the_slot_at_the_next_step(start: Start) -> None:
    server = start("--max-running-sequences", "1")
    FakeStepEngine.step_delay = 0.01
    loop = scheduler(server)
    first = open_stream(server, 10_000)
    next(first)
    second = open_stream(server, 3)
    wait_for(lambda: loop.running == 1 and loop.waiting == 1)
    first.cancel()
    chunks = list(second)  # joined once the cancelled stream left
    assert "".join(c.text for c in chunks) == "w0 w1 w2"
    wait_for(lambda: loop.running == 0)


def test_deadline_frees_the_slot(start: Start) -> None:
    server = start("--max-running-sequences", "1")
    FakeStepEngine.step_delay = 0.01
    loop = scheduler(server)
    with pytest.raises(grpc.RpcError) as expired:
        chat(server).Reply(
            conversation_pb2.ReplyRequest(turns=["hi"], max_new_tokens=500), timeout=0.3
        )
    assert expired.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(lambda: loop.running == 0, timeout=2)
    steps = len(FakeStepEngine.steps)
    time.sleep(0.1)
    assert len(FakeStepEngine.steps) == steps  # nothing generates for the expired request
    reply = chat(server).Reply(
        conversation_pb2.ReplyRequest(turns=["hi"], max_new_tokens=2), timeout=10
    )
    assert reply.text == "w0 w1"


def test_a_failing_step_fails_its_requests_and_the_loop_goes_on(start: Start) -> None:
    server = start()
    loop = scheduler(server)
    FakeStepEngine.fail_decodes = 1
    with pytest.raises(grpc.RpcError) as failed:
        chat(server).Reply(
            conversation_pb2.ReplyRequest(turns=["hi"], max_new_tokens=5), timeout=10
        )
    assert failed.value.code() is grpc.StatusCode.INTERNAL
    wait_for(lambda: loop.running == 0 and not loop.engine.rows)
    reply = chat(server).Reply(
        conversation_pb2.ReplyRequest(turns=["hi"], max_new_tokens=3), timeout=10
    )
    assert reply.text == "w0 w1 w2"


def test_no_continuous_batching_keeps_the_old_paths(start: Start) -> None:
    server = start("--no-continuous-batching")
    assert server.server.registry is not None
    assert server.server.registry.records[CHAT].batcher.generation is None  # type: ignore[union-attr]
    reply = chat(server).Reply(
        conversation_pb2.ReplyRequest(turns=["hi"], max_new_tokens=4), timeout=10
    )
    assert reply.text == f"{CHAT} says hi"


def test_generation_metrics(start: Start) -> None:
    from hubless_server.observability import metrics

    server = start()
    list(open_stream(server, 3))
    chat(server).Reply(conversation_pb2.ReplyRequest(turns=["hi"], max_new_tokens=2), timeout=10)
    value = metrics.REGISTRY.get_sample_value
    assert (value("hubless_generated_tokens_total", {"model": CHAT}) or 0) >= 5
    assert (value("hubless_time_to_first_token_seconds_count", {"model": CHAT}) or 0) >= 2
    assert value("hubless_running_sequences", {"model": CHAT}) == 0


# ---- bart-large-cnn, then bart-large ----------------------------------------------------


def _summarizers_volume(root: Path, installed: list[str]) -> Path:
    """A fake volume whose summarization order is the catalog's: bart-large-cnn first."""
    volume = make_fake_volume(root, installed)
    manifest = Manifest.load(volume)
    manifest.tasks["summarization"] = ["bart-large-cnn", "bart-large"]
    manifest.save(volume)
    return volume


def test_summarizer_falls_back_from_bart_large_cnn_to_bart_large(tmp_path: Path) -> None:
    FakeRuntime.reset()
    volume = _summarizers_volume(tmp_path / "v", ["bart-large"])
    server = RunningServer(settings_for(volume, "--tasks", "summarization"), fake_factory)
    try:
        stub = summarization_pb2_grpc.SummarizationServiceStub(server.channel)
        reply = stub.Summarize(summarization_pb2.SummarizeRequest(texts=["a text"]), timeout=10)
        assert reply.model.name == "bart-large"
        listed = models_pb2_grpc.ModelsServiceStub(server.channel).ListModels(
            models_pb2.ListModelsRequest(), timeout=5
        )
        states = {m.name: m for m in listed.models}
        assert states["bart-large-cnn"].state == models_pb2.MODEL_STATE_MISSING
        assert "hubless-fetch fetch bart-large-cnn" in states["bart-large-cnn"].error
        assert states["bart-large"].is_default
    finally:
        server.stop()
