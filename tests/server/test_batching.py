"""The batching core with a fake runtime: budget, grouping, ordering, drops, admission."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from hubless_server.core.config import Settings
from hubless_server.inference.batching import (
    INLINE_PREPARE_CHARS,
    Batcher,
    BatchPolicy,
    ExpiredError,
    PrepareError,
    QueueFullError,
    plan_batch,
)
from hubless_server.inference.gate import InferenceGate
from hubless_server.runtimes.base import (
    ModelRuntime,
    Prepared,
    RuntimeInfo,
    RuntimeOptions,
    StreamPiece,
    TextItem,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Item:
    text: str
    tokens: int
    key: Any = None
    rows: int = 1


class Recorder(ModelRuntime[Item, str]):
    """Echoes item texts; records batches; ``hold`` blocks predict until released."""

    kind = "test"

    def __init__(self) -> None:
        super().__init__("fake", Path("."), RuntimeOptions())
        self.batches: list[list[str]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.started = threading.Event()
        self.steps: list[int] = []

    def load(self) -> None:
        return None

    def info(self) -> RuntimeInfo:
        return RuntimeInfo("cpu", "float32", 512)

    def prepare(self, item: Item) -> Prepared[Item]:
        if item.text == "bad-input":
            raise ValueError("no")
        return Prepared(item, item.tokens, rows=item.rows, batch_key=item.key)

    def predict(self, batch: list[Prepared[Item]]) -> list[str]:
        self.started.set()
        self.batches.append([p.item.text for p in batch])
        assert self.hold.wait(10)
        if any(p.item.text == "poison" for p in batch):
            raise RuntimeError("poisoned batch")
        return [p.item.text.upper() for p in batch]

    def stream(self, prepared: Prepared[Item], cancelled: threading.Event) -> Iterator[StreamPiece]:
        for step in range(1000):
            if cancelled.is_set():
                return
            self.steps.append(step)
            time.sleep(0.005)
            yield StreamPiece(f"{step} ")


def policy(**overrides: Any) -> BatchPolicy:
    """The server's policy (from the default settings) with ``overrides``."""
    return dataclasses.replace(BatchPolicy.from_settings(Settings()), **overrides)


def test_policy_comes_from_the_settings() -> None:
    settings = Settings(max_batch_size=7, max_batch_tokens=300, batch_wait_ms=5, max_queue=70)
    assert BatchPolicy.from_settings(settings) == BatchPolicy(7, 300, 0.005, 70)
    default = BatchPolicy.from_settings(Settings())
    assert default.max_batch_size == Settings().max_batch_size == 64


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 20))


def make_batcher(
    runtime: Recorder, **overrides: Any
) -> tuple[Batcher[Item, str], ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(4)
    batcher = Batcher("fake", runtime, policy(**overrides), pool, pool, InferenceGate(1))
    batcher.start()
    return batcher, pool


def prep(*specs: tuple[str, int] | Item) -> list[Prepared[Item]]:
    items = [s if isinstance(s, Item) else Item(*s) for s in specs]
    return [Prepared(i, i.tokens, rows=i.rows, batch_key=i.key) for i in items]


@dataclass
class Entry:
    prepared: Prepared[Item]
    seq: int


def entries(*items: Item) -> list[Entry]:
    return [Entry(p, n) for n, p in enumerate(prep(*items))]


def texts(plan: Any) -> list[str]:
    return [e.prepared.item.text for e in plan.entries]


# ---- plan_batch (pure) -----------------------------------------------------------------


def test_plan_respects_padded_token_budget() -> None:
    queue = entries(*(Item(f"t{i}", 100) for i in range(10)))
    plan = plan_batch(queue, policy(max_batch_size=32, max_batch_tokens=450))
    assert len(plan.entries) == 4  # 100 tokens x 4 rows <= 450 < 100 x 5
    assert plan.padded_tokens == 400


def test_plan_counts_rows_and_longest_item() -> None:
    queue = entries(Item("a", 10, rows=3), Item("b", 50), Item("c", 10, rows=3))
    plan = plan_batch(queue, policy(max_batch_tokens=100))
    # a+c: 10 x 6 = 60 fits; adding b would cost 50 x 7 = 350.
    assert texts(plan) == ["a", "c"]


def test_plan_respects_max_batch_size() -> None:
    queue = entries(*(Item(f"t{i}", 1) for i in range(10)))
    assert len(plan_batch(queue, policy(max_batch_size=3)).entries) == 3


def test_plan_groups_by_batch_key_of_oldest() -> None:
    queue = entries(Item("a", 5, "x"), Item("b", 5, "y"), Item("c", 5, "x"), Item("d", 5, "y"))
    assert texts(plan_batch(queue, policy())) == ["a", "c"]


def test_plan_prefers_similar_lengths_and_sorts_by_length() -> None:
    queue = entries(Item("head", 20), Item("huge", 400), Item("short", 18), Item("mid", 25))
    plan = plan_batch(queue, policy(max_batch_tokens=120))
    # Nearest lengths first: short (18), mid (25) fit (25 x 3 = 75); huge would cost 1600.
    assert texts(plan) == ["short", "head", "mid"]


def test_plan_oversized_head_runs_alone() -> None:
    queue = entries(Item("giant", 5000), Item("small", 5))
    plan = plan_batch(queue, policy(max_batch_tokens=100))
    assert texts(plan) == ["giant"]


# ---- the worker ------------------------------------------------------------------------


def test_results_come_back_in_request_order() -> None:
    runtime = Recorder()

    async def main() -> list[str]:
        batcher, _ = make_batcher(runtime)
        try:
            return await batcher.submit(prep(("c", 30), ("a", 10), ("b", 20)))
        finally:
            await batcher.close()

    assert run(main()) == ["C", "A", "B"]
    assert runtime.batches == [["a", "b", "c"]]  # handed to the runtime sorted by length


def test_concurrent_requests_share_a_batch() -> None:
    runtime = Recorder()

    async def main() -> None:
        batcher, _ = make_batcher(runtime, wait_s=0.0)
        runtime.hold.clear()
        first = asyncio.ensure_future(batcher.submit(prep(("first", 5))))
        await asyncio.to_thread(runtime.started.wait, 5)
        others = [asyncio.ensure_future(batcher.submit(prep((f"r{i}", 5)))) for i in range(5)]
        await asyncio.sleep(0.05)
        assert batcher.depth == 5
        runtime.hold.set()
        assert await first == ["FIRST"]
        assert [await o for o in others] == [[f"R{i}"] for i in range(5)]
        await batcher.close()

    run(main())
    assert runtime.batches == [["first"], [f"r{i}" for i in range(5)]]


def test_batch_wait_collects_items_submitted_shortly_after() -> None:
    runtime = Recorder()

    async def main() -> None:
        batcher, _ = make_batcher(runtime, wait_s=0.2)
        first = asyncio.ensure_future(batcher.submit(prep(("a", 5))))
        await asyncio.sleep(0.02)
        second = asyncio.ensure_future(batcher.submit(prep(("b", 5))))
        await asyncio.gather(first, second)
        await batcher.close()

    run(main())
    assert runtime.batches == [["a", "b"]]


def test_cancelled_request_is_never_computed() -> None:
    runtime = Recorder()

    async def main() -> None:
        batcher, _ = make_batcher(runtime)
        runtime.hold.clear()
        blocker = asyncio.ensure_future(batcher.submit(prep(("blocker", 5))))
        await asyncio.to_thread(runtime.started.wait, 5)
        doomed = asyncio.ensure_future(batcher.submit(prep(("doomed", 5), ("doomed2", 6))))
        kept = asyncio.ensure_future(batcher.submit(prep(("kept", 5))))
        await asyncio.sleep(0.02)
        doomed.cancel()
        runtime.hold.set()
        await blocker
        assert await kept == ["KEPT"]
        with pytest.raises(asyncio.CancelledError):
            await doomed
        await batcher.close()

    run(main())
    flat = [t for batch in runtime.batches for t in batch]
    assert "doomed" not in flat and "doomed2" not in flat
    assert "kept" in flat


def test_expired_request_is_dropped_before_compute() -> None:
    runtime = Recorder()

    async def main() -> None:
        batcher, _ = make_batcher(runtime)
        runtime.hold.clear()
        blocker = asyncio.ensure_future(batcher.submit(prep(("blocker", 5))))
        await asyncio.to_thread(runtime.started.wait, 5)
        loop = asyncio.get_running_loop()
        late = asyncio.ensure_future(batcher.submit(prep(("late", 5)), loop.time() + 0.05))
        await asyncio.sleep(0.15)
        runtime.hold.set()
        await blocker
        with pytest.raises(ExpiredError):
            await late
        await batcher.close()

    run(main())
    assert runtime.batches == [["blocker"]]


def test_queue_full_rejects_whole_request() -> None:
    runtime = Recorder()

    async def main() -> None:
        batcher, _ = make_batcher(runtime, max_queue=3)
        runtime.hold.clear()
        blocker = asyncio.ensure_future(batcher.submit(prep(("blocker", 5))))
        await asyncio.to_thread(runtime.started.wait, 5)
        queued = asyncio.ensure_future(batcher.submit(prep(("q1", 5), ("q2", 5))))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError, match="overloaded"):
            await batcher.submit(prep(("x", 5), ("y", 5)))
        assert batcher.depth == 2  # nothing of the rejected request was queued
        ok = asyncio.ensure_future(batcher.submit(prep(("fits", 5))))
        runtime.hold.set()
        await asyncio.gather(blocker, queued, ok)
        await batcher.close()

    run(main())
    assert "x" not in [t for b in runtime.batches for t in b]


def test_failing_batch_is_retried_item_by_item() -> None:
    runtime = Recorder()

    async def main() -> None:
        batcher, _ = make_batcher(runtime, wait_s=0.05)
        good = asyncio.ensure_future(batcher.submit(prep(("good", 5))))
        bad = asyncio.ensure_future(batcher.submit(prep(("poison", 5))))
        assert await good == ["GOOD"]
        with pytest.raises(RuntimeError, match="poisoned"):
            await bad
        await batcher.close()

    run(main())
    assert runtime.batches[0] == ["good", "poison"]
    assert sorted(map(tuple, runtime.batches[1:])) == [("good",), ("poison",)]


def test_prepare_runs_off_loop_and_names_the_bad_item() -> None:
    runtime = Recorder()

    async def main() -> None:
        batcher, _ = make_batcher(runtime)
        with pytest.raises(PrepareError) as info:
            await batcher.run([Item("fine", 3), Item("bad-input", 3)])
        assert info.value.index == 1
        await batcher.close()

    run(main())
    assert runtime.batches == []


class ThreadRecorder(Recorder):
    """Records the thread each TextItem was tokenised on."""

    def __init__(self) -> None:
        super().__init__()
        self.prepare_threads: list[int] = []

    def prepare(self, item: Any) -> Prepared[Any]:
        self.prepare_threads.append(threading.get_ident())
        return Prepared(item, len(item.text.split()))


def test_small_text_requests_tokenise_inline_large_ones_in_the_pool() -> None:
    runtime = ThreadRecorder()
    loop_threads: list[int] = []

    async def main() -> None:
        loop_threads.append(threading.get_ident())
        batcher, _ = make_batcher(runtime)
        await batcher.prepare([TextItem("a short sentence"), TextItem("and another")])
        await batcher.prepare([TextItem("word " * (INLINE_PREPARE_CHARS // 5 + 1))])
        await batcher.prepare([Item("not plain text", 3)])  # other item kinds: always the pool
        await batcher.close()

    run(main())
    first, second, large, other = runtime.prepare_threads
    assert first == second == loop_threads[0]
    assert large != loop_threads[0]
    assert other != loop_threads[0]


def test_stream_close_stops_generation() -> None:
    runtime = Recorder()

    async def main() -> None:
        batcher, _ = make_batcher(runtime)
        (prepared,) = prep(("chat", 3))
        pieces = batcher.stream(prepared)
        got = [await anext(pieces) for _ in range(3)]
        assert [p.text for p in got] == ["0 ", "1 ", "2 "]
        await pieces.aclose()
        assert batcher.active_streams == 0
        await asyncio.sleep(0.1)
        await batcher.close()

    run(main())
    steps = len(runtime.steps)
    time.sleep(0.1)
    assert len(runtime.steps) == steps < 20  # stopped, not running on in the background


def test_stream_counts_against_max_queue() -> None:
    runtime = Recorder()

    async def main() -> None:
        batcher, _ = make_batcher(runtime, max_queue=1)
        (prepared,) = prep(("chat", 3))
        first = batcher.stream(prepared)
        await anext(first)
        with pytest.raises(QueueFullError):
            await anext(batcher.stream(prepared))
        await first.aclose()
        await batcher.close()

    run(main())
