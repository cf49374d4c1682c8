"""The generation step loop on the tiny models: every request gets, token for token, what
single-request ``generate`` gives it, whatever runs beside it (mixed lengths, requests joining
and leaving mid-flight); seeded sampling is reproducible whatever the companions; beam search
stays on ``generate``."""

from __future__ import annotations

import asyncio
import copy
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
    runtime: Any, body: Callable[[Batcher[Any, Any]], Awaitable[Any]], **policy: Any
) -> Any:
    """Run ``body(batcher)`` with a started batcher (and its step loop) for ``runtime``."""

    async def main() -> Any:
        pool = ThreadPoolExecutor(4)
        batcher = Batcher(
            "m", runtime, BatchPolicy(64, 8192, 0.0, 100, **policy), pool, pool, InferenceGate(1)
        )
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
