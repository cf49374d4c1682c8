"""The generation step loop on the tiny models: every request gets, token for token, what
single-request ``generate`` gives it, whatever runs beside it (mixed lengths, requests joining
and leaving mid-flight); seeded sampling is reproducible whatever the companions; beam search
stays on ``generate``."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch

from hubless_server.inference.batching import Batcher, BatchPolicy
from hubless_server.inference.gate import InferenceGate
from hubless_server.runtimes import ChatItem, ChatRuntime, Seq2SeqRuntime, SummarizeItem
from hubless_server.runtimes.base import GenerationOutput
from hubless_server.runtimes.seq2seq import _stepwise_blocker
from tests.runtimes.conftest import LoadRuntime, load_runtime

SMALL = "dialogpt-small"
PROMPTS = [
    ("hi",),
    ("Hello, how are you?",),
    ("What is your favourite book? I really love reading science fiction novels.",),
    ("ok", "and then?"),
    ("Why?",),
    ("Tell me", "a long story about the sea, the ships and the people who sail them", "go"),
]
TEXTS = [
    "hi there",
    "Hello, how are you? I am fine thank you very much.",
    "What is your favourite book? I really love reading science fiction novels.",
    "ok and then?",
    "Why? Because the sky is blue and the grass is green and the sun is hot.",
]


@pytest.fixture(scope="module")
def lively_chat(tiny_models) -> ChatRuntime:
    """dialogpt-small whose greedy replies vary from token to token (MLP outputs x30)."""
    runtime = load_runtime(tiny_models[SMALL])
    with torch.no_grad():
        for block in runtime._model.transformer.h:
            block.mlp.c_proj.weight.mul_(30)
    return runtime


@pytest.fixture(scope="module")
def lively_bart(tiny_models) -> Seq2SeqRuntime:
    """The tiny bart-large with its cross-attention and decoder MLPs scaled up, so that the
    summary depends on the text."""
    runtime = load_runtime(tiny_models["bart-large"])
    with torch.no_grad():
        for layer in runtime._model.model.decoder.layers:
            attention = layer.encoder_attn
            for proj in (attention.k_proj, attention.v_proj, attention.out_proj):
                proj.weight.mul_(30)
            layer.fc2.weight.mul_(10)
    return runtime


def run_on_loop(
    runtime: Any,
    body: Callable[[Batcher[Any, Any]], Awaitable[Any]],
    max_batch_tokens: int = 8192,
    **policy: Any,
) -> Any:
    """Run ``body(batcher)`` with a started batcher (and its step loop) for ``runtime``
    (``max_batch_tokens`` is the step loop's prefill budget)."""

    async def main() -> Any:
        pool = ThreadPoolExecutor(4)
        policy_ = BatchPolicy(64, max_batch_tokens, 0.0, 100, **policy)
        batcher = Batcher("m", runtime, policy_, pool, pool, InferenceGate(1))
        batcher.start()
        try:
            assert batcher.generation is not None
            return await body(batcher)
        finally:
            await batcher.close()
            pool.shutdown()

    return asyncio.run(main())


async def staggered(batcher: Batcher[Any, Any], items: list[Any], gap: float) -> list[Any]:
    """Each item as its own request, the i-th after ``i * gap`` seconds (they join a batch
    that is already decoding)."""

    async def one(i: int, item: Any) -> GenerationOutput:
        await asyncio.sleep(i * gap)
        (output,) = await batcher.run([item])
        return output

    return list(await asyncio.gather(*(one(i, item) for i, item in enumerate(items))))


def generate_alone(runtime: ChatRuntime, item: ChatItem) -> tuple[list[int], bool]:
    """Greedy ``generate`` of one request: (reply ids without EOS, ended at EOS)."""
    prepared = runtime.prepare(item)
    ids = torch.tensor([prepared.features])
    with torch.inference_mode():
        out = runtime._model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=item.max_new_tokens,
            do_sample=False,
            pad_token_id=runtime._eos_id,
            eos_token_id=runtime._eos_id,
        )[0, ids.shape[1] :].tolist()
    finished = runtime._eos_id in out
    return (out[: out.index(runtime._eos_id)] if finished else out), finished


@pytest.mark.parametrize("which", ["lively", "plain"])
def test_chat_greedy_equals_generate_whatever_the_companions(
    which: str, lively_chat: ChatRuntime, loaded: LoadRuntime
) -> None:
    runtime = lively_chat if which == "lively" else loaded(SMALL)
    items = [ChatItem(turns, 4 + 5 * (i % 4)) for i, turns in enumerate(PROMPTS * 2)]
    expected = [generate_alone(runtime, item) for item in items]

    async def body(batcher: Batcher[Any, Any]) -> tuple[list[Any], list[str]]:
        async def stream(item: ChatItem) -> str:
            (prepared,) = await batcher.prepare([item])
            return "".join([piece.text async for piece in batcher.stream(prepared)])

        unary = staggered(batcher, items, 0.004)
        streams = asyncio.gather(*(stream(item) for item in items[::-1]))
        replies, texts = await asyncio.gather(unary, streams)
        assert batcher.generation is not None and not batcher.generation.engine.rows
        return replies, list(texts)[::-1]

    replies, streamed = run_on_loop(runtime, body)
    for item, reply, text, (ids, finished) in zip(items, replies, streamed, expected, strict=True):
        assert reply.text == runtime._tok.decode(ids).strip()
        assert reply.tokens == len(ids) + finished and reply.finished == finished
        assert text == reply.text
        assert reply.tokens <= item.max_new_tokens
    if which == "lively":
        assert len({r.text for r in replies}) > len(PROMPTS) // 2


def test_seeded_sampling_is_the_same_whatever_the_companions(lively_chat: ChatRuntime) -> None:
    seeded = ChatItem(PROMPTS[2], 16, temperature=0.9, top_p=0.9, seed=1234)
    companions = [ChatItem(PROMPTS[i], 6 + i, temperature=0.7 * (i % 2), seed=i) for i in range(5)]

    async def alone(batcher: Batcher[Any, Any]) -> GenerationOutput:
        (output,) = await batcher.run([seeded])
        return output

    async def crowded(batcher: Batcher[Any, Any]) -> GenerationOutput:
        outputs = await staggered(batcher, [*companions[:3], seeded, *companions[3:]], 0.003)
        return outputs[3]

    first = run_on_loop(lively_chat, alone)
    assert run_on_loop(lively_chat, crowded) == first
    assert lively_chat.predict([lively_chat.prepare(seeded)])[0] == first  # the old path too
    other = run_on_loop(lively_chat, lambda b: b.run([ChatItem(PROMPTS[2], 16, 0.9, 0.9, 99)]))
    assert other[0].text != first.text


def test_summaries_equal_generate_whatever_the_companions(lively_bart: Seq2SeqRuntime) -> None:
    items = [SummarizeItem(t, i % 3, 6 + 3 * i) for i, t in enumerate(TEXTS)]
    items += [SummarizeItem(t, 0, 12) for t in TEXTS]
    expected = [lively_bart.predict([lively_bart.prepare(item)])[0] for item in items]
    outputs = run_on_loop(lively_bart, lambda b: staggered(b, items, 0.004))
    assert outputs == expected
    assert len({o.text for o in outputs}) > 3


def test_batched_summary_request_equals_one_by_one(lively_bart: Seq2SeqRuntime) -> None:
    items = [SummarizeItem(t, 2, 10) for t in TEXTS]
    expected = [lively_bart.predict([lively_bart.prepare(item)])[0] for item in items]
    assert run_on_loop(lively_bart, lambda b: b.run(items)) == expected


def test_beam_search_stays_on_generate(lively_bart: Seq2SeqRuntime) -> None:
    item = SummarizeItem(TEXTS[1], 0, 10, num_beams=2)
    engine = lively_bart.step_engine()
    assert engine is not None and not engine.accepts(lively_bart.prepare(item))
    expected = lively_bart.predict([lively_bart.prepare(item)])
    assert run_on_loop(lively_bart, lambda b: b.run([item])) == expected


def test_summaries_stay_on_generate_with_rules_the_loop_lacks(
    loaded: LoadRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = loaded("bart-large")
    config = copy.deepcopy(runtime._model.generation_config)
    assert _stepwise_blocker(runtime._model, config) == ""
    config.repetition_penalty = 1.2
    reason = _stepwise_blocker(runtime._model, config)
    assert reason == "generation config sets repetition_penalty"
    monkeypatch.setattr(runtime, "_stepwise", reason)
    assert runtime.step_engine() is None
    assert runtime.info().extra["step_loop"] == f"off: {reason}"


def test_kv_budget_and_running_limit_on_a_real_model(lively_chat: ChatRuntime) -> None:
    """With room for two rows at a time the answers are the same, only later."""
    items = [ChatItem(turns, 8) for turns in PROMPTS]
    expected = [lively_chat.predict([lively_chat.prepare(item)])[0] for item in items]
    outputs = run_on_loop(lively_chat, lambda b: staggered(b, items, 0.0), max_running_sequences=2)
    assert outputs == expected


# ---- batched and chunked prefill ----------------------------------------------------------


class Forwards:
    """Records every forward pass of ``module`` as (rows, input width, with a past cache);
    with ``hold`` the first pass waits (in the worker thread) until :meth:`go`."""

    def __init__(self, module: Any, ids: str = "input_ids", hold: bool = False) -> None:
        self.calls: list[tuple[int, int, bool]] = []
        self.entered = threading.Event()
        self._go = threading.Event()
        if not hold:
            self._go.set()
        self._ids = ids
        self._handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, _module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs[self._ids]
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self.calls.append((ids.shape[0], ids.shape[1], cache is not None))
        self.entered.set()
        assert self._go.wait(30), "the test never let the held forward pass go"

    def go(self) -> None:
        self._go.set()

    def close(self) -> None:
        self._go.set()
        self._handle.remove()


async def until(predicate: Callable[[], bool]) -> None:
    for _ in range(3000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def during_a_step(
    batcher: Batcher[Any, Any], forwards: Forwards, first: Any, others: list[Any]
) -> list[GenerationOutput]:
    """Submit ``first``; while its prefill is held, submit ``others`` (each its own request),
    then let the step go: the answers of ``first`` and ``others``, in order."""
    loop = batcher.generation
    assert loop is not None
    prepared = await batcher.prepare([first, *others])
    head = asyncio.ensure_future(loop.submit(prepared[:1]))
    await until(forwards.entered.is_set)
    tails = [asyncio.ensure_future(loop.submit([p])) for p in prepared[1:]]
    await until(lambda: loop.waiting == len(others))
    forwards.go()
    return [out for outs in await asyncio.gather(head, *tails) for out in outs]


def test_prompts_arriving_during_a_step_are_prefilled_in_one_forward(
    lively_chat: ChatRuntime,
) -> None:
    """8 prompts that arrive while a step runs: one padded forward of 8 rows at the next step
    boundary (no decode of the running request before it), the same replies as alone."""
    first = ChatItem(PROMPTS[1], 12)
    items = [ChatItem(PROMPTS[i % len(PROMPTS)], 5 + i) for i in range(8)]
    expected = [generate_alone(lively_chat, item) for item in [first, *items]]
    forwards = Forwards(lively_chat._model, hold=True)
    try:
        outputs = run_on_loop(lively_chat, lambda b: during_a_step(b, forwards, first, items))
    finally:
        forwards.close()
    widths = [lively_chat.prepare(item).num_tokens for item in [first, *items]]
    assert forwards.calls[:2] == [(1, widths[0], False), (8, max(widths[1:]), False)]
    assert all(width == 1 and cache for _, width, cache in forwards.calls[2:])  # decodes
    for output, (ids, finished) in zip(outputs, expected, strict=True):
        assert output.text == lively_chat._tok.decode(ids).strip()
        assert output.tokens == len(ids) + finished


def test_a_long_prompt_is_prefilled_in_chunks_between_decode_steps(
    lively_chat: ChatRuntime,
) -> None:
    """A prompt over the prefill budget (16 tokens) runs in chunks of 16, each followed by a
    decode step of the stream already running; both replies are what they are alone."""
    running = ChatItem(PROMPTS[0], 30)
    long = ChatItem(("word " * 30,), 8)
    expected = [generate_alone(lively_chat, item) for item in (running, long)]
    length = lively_chat.prepare(long).num_tokens
    assert length > 3 * 16
    forwards = Forwards(lively_chat._model, hold=True)
    try:
        outputs = run_on_loop(
            lively_chat, lambda b: during_a_step(b, forwards, running, [long]), max_batch_tokens=16
        )
    finally:
        forwards.close()
    chunks = [i for i, (_, width, _) in enumerate(forwards.calls) if width > 1][1:]
    whole = (length - 1) // 16  # chunks of 16 before the last
    assert [forwards.calls[i][1] for i in chunks] == [16] * whole + [length - 16 * whole]
    for a, b in itertools.pairwise(chunks):
        assert forwards.calls[a + 1 : b] == [(1, 1, True)]  # the running stream's decode
    assert all(rows == 1 for rows, _, _ in forwards.calls[: chunks[-1] + 1])
    for output, (ids, finished) in zip(outputs, expected, strict=True):
        assert output.text == lively_chat._tok.decode(ids).strip()
        assert output.tokens == len(ids) + finished


def test_rows_join_the_last_chunk_of_a_pending_prompt(lively_chat: ChatRuntime) -> None:
    """The engine alone: a prompt prefilled in chunks beside a running row, a new row joining
    its last chunk, a pending row released mid-prompt: every reply is what it is alone."""
    items = [ChatItem(PROMPTS[3], 12), ChatItem(("word " * 30,), 10), ChatItem(PROMPTS[4], 9)]
    expected = [generate_alone(lively_chat, item)[0] for item in items]
    engine = lively_chat.step_engine()
    running, long, short = (engine.sequence(lively_chat.prepare(item)) for item in items)
    engine.prefill([running])
    engine.prefill([long], 24)
    assert engine.pending == [long] and not long.tokens and long.prefilled == 24
    with pytest.raises(ValueError, match="pending row first"):
        engine.prefill([short])
    with pytest.raises(ValueError, match="every row or none"):
        engine.prefill([long, short], 24)
    engine.decode()
    engine.prefill([long], 24)
    engine.prefill([long, short])
    assert not engine.pending and engine.rows == [running, long, short]
    while engine.rows:
        engine.decode()
        engine.release([s for s in engine.rows if s.done])
    eos = lively_chat._eos_id
    assert [[t for t in s.tokens if t != eos] for s in (running, long, short)] == expected
    cancelled = engine.sequence(lively_chat.prepare(items[1]))
    engine.prefill([cancelled], 24)
    engine.release([cancelled])
    assert not engine.pending
    again = engine.sequence(lively_chat.prepare(items[2]))
    engine.prefill([again])
    while not again.done:
        engine.decode()
    assert [t for t in again.tokens if t != eos] == expected[2]


def test_summaries_arriving_during_a_step_share_one_encoder_pass(
    lively_bart: Seq2SeqRuntime,
) -> None:
    """BART's prefill is the encoder pass and the first decoder step: 8 texts that arrive
    while a step runs are encoded in one pass; the summaries are those of ``generate``."""
    first = SummarizeItem(TEXTS[0], 0, 10)
    items = [SummarizeItem(TEXTS[i % len(TEXTS)], i % 3, 6 + i) for i in range(8)]
    expected = [lively_bart.predict([lively_bart.prepare(item)])[0] for item in [first, *items]]
    encoder = Forwards(lively_bart._model.get_encoder(), hold=True)
    decoder = Forwards(lively_bart._model, ids="decoder_input_ids")
    try:
        outputs = run_on_loop(lively_bart, lambda b: during_a_step(b, encoder, first, items))
    finally:
        encoder.close()
        decoder.close()
    widths = [lively_bart.prepare(item).num_tokens for item in [first, *items]]
    assert encoder.calls == [(1, widths[0], False), (8, max(widths[1:]), False)]
    assert decoder.calls[:2] == [(1, 1, False), (8, 1, False)]  # no decode between them
    assert outputs == expected


def test_a_stream_closed_mid_prefill_leaves_before_its_next_chunk(
    lively_chat: ChatRuntime,
) -> None:
    """A stream whose prompt is half prefilled leaves at the next step boundary: no more
    chunks run, its partial cache is freed, the next request is answered as alone."""
    long, after = ChatItem(("word " * 30,), 8), ChatItem(PROMPTS[1], 6)
    ids, finished = generate_alone(lively_chat, after)
    forwards = Forwards(lively_chat._model, hold=True)

    async def body(batcher: Batcher[Any, Any]) -> GenerationOutput:
        loop = batcher.generation
        assert loop is not None
        prepared = await batcher.prepare([long, after])
        reader = asyncio.ensure_future(anext(aiter(loop.stream(prepared[0]))))
        await until(forwards.entered.is_set)  # the first chunk runs (held)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        forwards.go()
        await until(lambda: loop.running == 0 and not loop.engine.pending)
        (output,) = await loop.submit(prepared[1:])
        return output

    try:
        output = run_on_loop(lively_chat, body, max_batch_tokens=16)
    finally:
        forwards.close()
    assert forwards.calls[0] == (1, 16, False)  # the first chunk
    assert all(cache is False for _, width, cache in forwards.calls if width > 1)  # no chunk 2
    assert output.text == lively_chat._tok.decode(ids).strip()
    assert output.tokens == len(ids) + finished
