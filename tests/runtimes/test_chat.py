"""Chat runtime: history building, oldest-turn dropping, greedy/sampling, streaming, cancel."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from hubless_server.runtimes import ChatItem, ChatRuntime, InputTooLongError, StreamPiece
from hubless_server.runtimes.chat import TextDeltas, _pick
from tests.runtimes.conftest import LoadRuntime, load_runtime

SMALL = "dialogpt-small"
MEDIUM = "dialogpt-medium"
# With the tiny random dialogpt-medium, greedy decoding of this prompt never picks EOS.
GREEDY_PROMPT = ("hi",)


def _stream(runtime: ChatRuntime, item: ChatItem, cancel_after: int | None = None):
    cancelled = threading.Event()
    pieces: list[StreamPiece] = []
    for piece in runtime.stream(runtime.prepare(item), cancelled):
        pieces.append(piece)
        if cancel_after is not None and len(pieces) >= cancel_after:
            cancelled.set()
    return pieces


def test_history_is_turns_each_followed_by_eos(loaded: LoadRuntime) -> None:
    runtime = loaded(SMALL)
    tokenizer = runtime._tok.tokenizer
    turns = ("Hello, how are you?", "I am fine, thank you.", "And you?")
    prepared = runtime.prepare(ChatItem(turns, 10))
    expected = tokenizer("".join(t + tokenizer.eos_token for t in turns))["input_ids"]
    assert prepared.features == expected
    assert prepared.num_tokens == len(expected)
    assert not prepared.truncated


def test_oldest_turns_dropped(loaded: LoadRuntime) -> None:
    runtime = loaded(SMALL)
    context = runtime.info().max_input_tokens
    turns = tuple(f"turn number {i}: " + "the quick brown fox " * 3 for i in range(12))
    max_new = 40
    prepared = runtime.prepare(ChatItem(turns, max_new))
    assert prepared.truncated
    assert prepared.num_tokens <= context - max_new
    eos = runtime._eos_id
    kept = runtime._tok.decode(prepared.features, skip_special_tokens=False).split(
        runtime._tok.tokenizer.eos_token
    )[:-1]
    assert kept == list(turns[len(turns) - len(kept) :])
    assert 0 < len(kept) < len(turns)
    assert prepared.features[-1] == eos
    result = runtime.predict([prepared])[0]
    assert result.truncated and result.tokens <= max_new


def test_bad_requests(loaded: LoadRuntime) -> None:
    runtime = loaded(SMALL)
    context = runtime.info().max_input_tokens
    for item in (
        ChatItem((), 5),
        ChatItem(("hello", ""), 5),
        ChatItem(("   ",), 5),
        ChatItem(("hello",), 0),
        ChatItem(("hello",), context),
        ChatItem(("hello",), 5, temperature=-1),
        ChatItem(("hello",), 5, temperature=1, top_p=0),
    ):
        with pytest.raises(ValueError):
            runtime.prepare(item)
    with pytest.raises(InputTooLongError):
        runtime.prepare(ChatItem(("the quick brown fox " * 40,), 10))


def test_greedy_matches_generate(loaded: LoadRuntime) -> None:
    """Our KV-cache loop picks the same tokens as transformers' greedy generate()."""
    runtime = loaded(MEDIUM)
    prepared = runtime.prepare(ChatItem(GREEDY_PROMPT, 12))
    result = runtime.predict([prepared])[0]
    ids = torch.tensor([prepared.features])
    with torch.inference_mode():
        generated = runtime._model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=runtime._eos_id,
        )[0, ids.shape[1] :].tolist()
    assert runtime._eos_id not in generated
    assert result.tokens == 12 and not result.finished
    assert result.text == runtime._tok.decode(generated).strip()


def test_stops_at_eos(loaded: LoadRuntime) -> None:
    runtime = loaded(SMALL)
    result = runtime.predict([runtime.prepare(ChatItem(("Hello, how are you?",), 20))])[0]
    # the tiny dialogpt-small answers this prompt with EOS straight away
    assert result.finished and result.tokens == 1 and result.text == ""


@pytest.mark.parametrize(
    ("name", "item"),
    [
        (MEDIUM, ChatItem(GREEDY_PROMPT, 15)),
        (SMALL, ChatItem(("What is your favourite book?",), 30, temperature=1.0, seed=7)),
        (MEDIUM, ChatItem(("Tell me something",), 30, temperature=0.8, top_p=0.9, seed=11)),
    ],
)
def test_stream_yields_the_same_text_as_predict(loaded: LoadRuntime, name, item) -> None:
    runtime = loaded(name)
    expected = runtime.predict([runtime.prepare(item)])[0]
    pieces = _stream(runtime, item)
    assert pieces[-1].final and all(not p.final for p in pieces[:-1])
    assert all(p.text for p in pieces[:-1])
    assert "".join(p.text for p in pieces) == expected.text
    assert (pieces[-1].tokens, pieces[-1].finished) == (expected.tokens, expected.finished)
    counts = [p.tokens for p in pieces]
    assert counts == sorted(counts) and counts[0] >= 1  # tokens generated so far, per piece
    assert expected.text
    assert len(pieces) > 2


def test_cancel_stops_stream_early(loaded: LoadRuntime) -> None:
    runtime = loaded(MEDIUM)
    item = ChatItem(GREEDY_PROMPT, 60)
    pieces = _stream(runtime, item, cancel_after=2)
    final = pieces[-1]
    assert final.final and not final.finished
    assert final.tokens <= 3
    cancelled = threading.Event()
    cancelled.set()
    before = list(runtime.stream(runtime.prepare(item), cancelled))
    assert len(before) == 1 and before[0].final and before[0].tokens == 0


def test_cancel_from_another_thread(loaded: LoadRuntime) -> None:
    runtime = loaded(MEDIUM)
    prepared = runtime.prepare(ChatItem(GREEDY_PROMPT, 80))
    cancelled = threading.Event()
    started = threading.Event()
    pieces: list[StreamPiece] = []

    def consume() -> None:
        for piece in runtime.stream(prepared, cancelled):
            pieces.append(piece)
            started.set()

    worker = threading.Thread(target=consume)
    worker.start()
    assert started.wait(30)
    cancelled.set()
    worker.join(30)
    assert not worker.is_alive()
    assert pieces[-1].final and pieces[-1].tokens < 80


def test_seed_reproducible_and_thread_safe(loaded: LoadRuntime) -> None:
    runtime = loaded(SMALL)
    items = [ChatItem(("Do you want to grab a coffee?",), 25, 1.0, 0.95, seed) for seed in range(6)]
    sequential = [runtime.predict([runtime.prepare(item)])[0] for item in items]
    assert len({r.text for r in sequential}) > 1  # different seeds, different replies
    with ThreadPoolExecutor(3) as pool:
        concurrent = list(pool.map(lambda it: runtime.predict([runtime.prepare(it)])[0], items * 2))
    assert concurrent == sequential * 2


def test_unseeded_sampling_varies(loaded: LoadRuntime) -> None:
    runtime = loaded(SMALL)
    item = ChatItem(("Do you want to grab a coffee?",), 25, temperature=1.0)
    texts = {runtime.predict([runtime.prepare(item)])[0].text for _ in range(3)}
    assert len(texts) > 1


def test_batch_keys(loaded: LoadRuntime) -> None:
    runtime = loaded(SMALL)
    greedy = ChatItem(("hello",), 5)
    assert runtime.prepare(greedy).batch_key == runtime.prepare(ChatItem(("other",), 5)).batch_key
    assert runtime.prepare(greedy).batch_key != runtime.prepare(ChatItem(("hello",), 6)).batch_key
    sampled = ChatItem(("hello",), 5, temperature=0.7, seed=1)
    assert runtime.prepare(sampled).batch_key != runtime.prepare(sampled).batch_key


@pytest.fixture(scope="module")
def lively(tiny_models) -> ChatRuntime:
    """dialogpt-small with its MLP outputs scaled up, so that greedy replies of the random
    model vary from token to token instead of repeating the input's last token."""
    runtime = load_runtime(tiny_models[SMALL])
    with torch.no_grad():
        for block in runtime._model.transformer.h:
            block.mlp.c_proj.weight.mul_(30)
    return runtime


PROMPTS = [
    ("hi",),
    ("Hello, how are you?",),
    ("What is your favourite book? I really love reading science fiction novels.",),
    ("ok", "and then?"),
    ("Why?",),
]


@pytest.mark.parametrize("which", ["lively", "plain"])
def test_greedy_batch_equals_one_by_one(lively: ChatRuntime, loaded: LoadRuntime, which) -> None:
    """Left-padded batched greedy decoding gives each row what it gets alone, also when rows
    stop at EOS at different steps (the plain tiny model stops at once for most prompts)."""
    runtime = lively if which == "lively" else loaded(SMALL)
    items = [ChatItem(turns, 12) for turns in PROMPTS]
    batch = [runtime.prepare(item) for item in items]
    assert len({p.batch_key for p in batch}) == 1
    batched = runtime.predict(batch)
    alone = [runtime.predict([runtime.prepare(item)])[0] for item in items]
    assert batched == alone
    if which == "lively":
        assert len({r.text for r in batched}) == len(items)


def test_lively_greedy_matches_generate_and_stream(lively: ChatRuntime) -> None:
    prepared = lively.prepare(ChatItem(PROMPTS[2], 20))
    result = lively.predict([prepared])[0]
    ids = torch.tensor([prepared.features])
    with torch.inference_mode():
        generated = lively._model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=20,
            do_sample=False,
            pad_token_id=lively._eos_id,
        )[0, ids.shape[1] :].tolist()
    assert result.text == lively._tok.decode(generated).strip()
    assert result.tokens == len(generated) == 20
    pieces = _stream(lively, ChatItem(PROMPTS[2], 20))
    assert "".join(p.text for p in pieces) == result.text
    assert len(pieces) > 5


def test_text_deltas_never_split_characters(loaded: LoadRuntime) -> None:
    """Decoding byte-level prefixes of multi-byte text sends whole characters only."""
    runtime = loaded(SMALL)
    text = "Café 😀 costs 5 € — naïve 中文 ok."
    ids = runtime._tok.encode(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text) // 2
    deltas = TextDeltas()
    pieces = [deltas.push(runtime._tok.decode(ids[:n])) for n in range(1, len(ids) + 1)]
    pieces.append(deltas.finish(runtime._tok.decode(ids)))
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) == text
    assert sum(1 for piece in pieces if piece) > 5


def test_text_deltas_hold_back_mergeable_whitespace() -> None:
    deltas = TextDeltas()
    assert deltas.push(" hello ") == "hello"
    assert deltas.push(" hello world ") == " world"
    assert deltas.push(" hello world.") == "."
    assert deltas.finish(" hello world. ") == ""


def test_bf16_greedy_runs(loaded: LoadRuntime) -> None:
    runtime = loaded(MEDIUM, "bfloat16")
    assert runtime.info().extra["autocast"] == "bfloat16"
    result = runtime.predict([runtime.prepare(ChatItem(GREEDY_PROMPT, 5))])[0]
    assert result.tokens <= 5


def test_top_p_keeps_the_nucleus() -> None:
    logits = torch.tensor([0.5, 0.3, 0.2]).log()
    generator = torch.Generator().manual_seed(0)
    assert {_pick(logits, 1.0, 0.5, generator) for _ in range(50)} == {0}
    assert {_pick(logits, 1.0, 0.6, generator) for _ in range(200)} == {0, 1}
    assert {_pick(logits, 1.0, 1.0, generator) for _ in range(300)} == {0, 1, 2}
    assert _pick(logits, 0.0, 0.5, None) == 0
