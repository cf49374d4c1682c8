"""The inference gate: first come, first served, and a long pass can let others through."""

from __future__ import annotations

import threading
import time

from hubless_server.inference.gate import InferenceGate
from hubless_server.runtimes.generation.engine import transformer_blocks, yield_between_blocks


def _wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.001)


def test_permits_go_in_arrival_order() -> None:
    gate = InferenceGate(1)
    inside, release = threading.Event(), threading.Event()
    order: list[str] = []

    def hold() -> None:
        inside.set()
        release.wait(5)

    holder = threading.Thread(target=gate.run, args=(hold,))
    holder.start()
    assert inside.wait(5)
    threads = []
    for count, name in enumerate("abcd", start=1):
        t = threading.Thread(target=gate.run, args=(order.append, name))
        t.start()
        _wait_for(lambda n=count: gate.waiting == n)
        threads.append(t)
    release.set()
    for t in [holder, *threads]:
        t.join(5)
    assert order == list("abcd")


def test_yield_point_lets_a_waiting_call_through_mid_pass() -> None:
    gate = InferenceGate(1)
    events: list[str] = []

    def long_pass() -> None:
        events.append("pass starts")
        _wait_for(lambda: gate.waiting == 1)
        gate.yield_point()  # between two blocks: the waiting call runs now
        events.append("pass ends")

    first = threading.Thread(target=gate.run, args=(long_pass,))
    first.start()
    _wait_for(lambda: events == ["pass starts"])
    second = threading.Thread(target=gate.run, args=(events.append, "other model"))
    second.start()
    first.join(5)
    second.join(5)
    assert events == ["pass starts", "other model", "pass ends"]


def test_yield_point_outside_a_pass_or_with_nobody_waiting_does_nothing() -> None:
    gate = InferenceGate(1)
    gate.yield_point()
    assert gate.run(lambda: (gate.yield_point(), "done")[1]) == "done"


def test_two_permits() -> None:
    gate = InferenceGate(2)
    inside = threading.Barrier(2, timeout=5)
    threads = [threading.Thread(target=gate.run, args=(inside.wait,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert not inside.broken


def test_generation_models_yield_before_every_block(tiny_models) -> None:
    from pathlib import Path

    from hubless_server.runtimes import ChatItem, RuntimeOptions
    from hubless_server.runtimes.chat import ChatRuntime

    model = tiny_models["dialogpt-small"]
    runtime = ChatRuntime(model.name, Path(model.path), RuntimeOptions())
    runtime.load()
    blocks = transformer_blocks(runtime._model)
    assert len(blocks) == len(runtime._model.transformer.h) == 2

    class Counting(InferenceGate):
        calls = 0

        def yield_point(self) -> None:
            type(self).calls += 1
            super().yield_point()

    gate = Counting(1)
    assert yield_between_blocks(runtime._model, gate) == 2
    assert yield_between_blocks(runtime._model, gate) == 0  # once per model and gate
    prepared = runtime.prepare(ChatItem(("hi",), 3))
    out = gate.run(runtime.predict, [prepared])
    assert out[0].tokens >= 1 and Counting.calls == 2 * out[0].tokens
