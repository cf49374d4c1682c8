"""A fake step engine: the generation scheduler over fake runtimes, without torch models.

:func:`step_factory` is :func:`tests.server.fakes.fake_factory` whose conversation runtime
offers :class:`FakeStepEngine`: token ``i`` of a reply is ``i`` and reads ``w<i>``; every
prefill and decode sleeps :attr:`FakeStepEngine.step_delay` (under the inference gate) and
records how many rows it ran; with :attr:`FakeStepEngine.hold` set, the next step waits until
the test sets it again (:meth:`FakeStepEngine.hold_next`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any, ClassVar

from hubless_server.runtimes.base import GenerationOutput, ModelRuntime, Prepared
from hubless_server.runtimes.generation.engine import StepEngine
from hubless_server.runtimes.generation.sequence import SamplingParams, Sequence
from tests.server.fakes import fake_factory


class FakeStepEngine(StepEngine):
    step_delay: ClassVar[float] = 0.0
    steps: ClassVar[list[int]] = []  # rows per decode
    prefills: ClassVar[list[int]] = []  # rows per prefill
    threads: ClassVar[set[str]] = set()  # threads that ran a step
    fail_decodes: ClassVar[int] = 0  # the next decodes that raise
    events: ClassVar[list[tuple[str, int]]] = []  # ("prefill" | "decode", rows), in order
    hold: ClassVar[threading.Event | None] = None  # the next step waits for it
    holding: ClassVar[threading.Event] = threading.Event()  # a step waits for hold

    @classmethod
    def reset(cls) -> None:
        cls.step_delay = 0.0
        cls.steps = []
        cls.prefills = []
        cls.threads = set()
        cls.fail_decodes = 0
        cls.events = []
        cls.hold = None
        cls.holding = threading.Event()

    @classmethod
    def hold_next(cls) -> threading.Event:
        """Make the next step wait (in the inference pool) until the event returned is set;
        :attr:`holding` tells when it waits."""
        cls.holding = threading.Event()
        cls.hold = threading.Event()
        return cls.hold

    def __init__(self) -> None:
        super().__init__({-1})

    def sequence(self, prepared: Prepared[Any]) -> Sequence:
        item = prepared.item
        params = SamplingParams(item.max_new_tokens, item.temperature, item.top_p, item.seed)
        return Sequence(None, prepared.num_tokens, params)

    def output(self, prepared: Prepared[Any], seq: Sequence) -> GenerationOutput:
        return GenerationOutput(self.text(seq), len(seq.tokens), seq.finished, prepared.truncated)

    def text(self, seq: Sequence) -> str:
        return " ".join(f"w{token}" for token in seq.tokens)

    def _step(self, rows: list[Sequence]) -> None:
        cls = type(self)
        cls.threads.add(threading.current_thread().name)
        hold = cls.hold
        if hold is not None:
            cls.hold = None
            cls.holding.set()
            hold.wait(30)
        if self.step_delay:
            time.sleep(self.step_delay)
        for seq in rows:
            seq.tokens.append(len(seq.tokens))

    def prefill(self, seqs: list[Sequence], width: int | None = None) -> None:
        type(self).prefills.append(len(seqs))
        type(self).events.append(("prefill", len(seqs)))
        self._step(seqs)
        self.rows.extend(seqs)

    def decode(self) -> None:
        if self.fail_decodes:
            type(self).fail_decodes -= 1
            raise RuntimeError("the fake step engine failed")
        type(self).steps.append(len(self.rows))
        type(self).events.append(("decode", len(self.rows)))
        self._step(self.rows)

    def release(self, seqs: Iterable[Sequence]) -> None:
        gone = {id(s) for s in seqs}
        self.rows = [s for s in self.rows if id(s) not in gone]


def step_factory(task: str) -> type[ModelRuntime[Any, Any]]:
    """``fake_factory``, with a step engine for the conversation models."""
    base = fake_factory(task)
    if task != "conversation":
        return base

    class StepChat(base):  # type: ignore[misc, valid-type]
        def step_engine(self) -> StepEngine:
            return FakeStepEngine()

    return StepChat
