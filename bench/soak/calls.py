"""One call of each task through the typed asyncio client, and the record of how it ended."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hubless_client import AsyncClient, HublessError

from ..workload import ZERO_SHOT_LABELS, make_article, make_sentences, percentile

TASKS = (
    "embed",
    "emotion",
    "sentiment",
    "zero_shot",
    "summarize",
    "reply",
    "reply_stream",
    "models",
)
SENTENCES = make_sentences(256, seed=2024)
ARTICLES = [make_article(SENTENCES, 6, offset=k * 6) for k in range(16)]
TURNS = ["Hello, how are you?", "I am fine, thank you. And you?", "Any plans for the weekend?"]
SENTIMENT_MODELS = ("bert-multilingual-sentiment", "twitter-roberta-sentiment", "distilbert-sst2")
LABELS = ZERO_SHOT_LABELS[:3]
NEW_TOKENS = 8  # generated tokens per summary / reply in the load scenarios
UNEXPECTED = ("UNKNOWN", "INTERNAL")  # statuses the server must never answer


@dataclass
class Call:
    """How one call ended: ``status`` is the gRPC status name (``OK``...); ``reason`` the
    server's ErrorReason; ``start``/``end`` from ``time.monotonic``."""

    task: str
    status: str
    reason: str
    start: float
    end: float

    @property
    def latency_s(self) -> float:
        return self.end - self.start

    @property
    def label(self) -> str:
        return f"{self.status}/{self.reason}" if self.reason else self.status


def describe(exc: BaseException) -> tuple[str, str, str]:
    """(status, reason, details) of a failed call."""
    if isinstance(exc, HublessError):
        return exc.code.name, exc.reason or "", (exc.details or "")[:300]
    if isinstance(exc, TimeoutError):
        return "CLIENT_TIMEOUT", "", "asyncio timeout around the call"
    return f"EXCEPTION:{type(exc).__name__}", "", str(exc)[:300]


async def call_task(
    client: AsyncClient, task: str, k: int, timeout: float, new_tokens: int = NEW_TOKENS
) -> None:
    """One call of ``task`` (``k`` picks the input); raises on any failure."""
    text = SENTENCES[k % len(SENTENCES)]
    if task == "embed":
        await client.embed([text], timeout=timeout)
    elif task == "emotion":
        await client.detect_emotion([text], timeout=timeout)
    elif task == "sentiment":
        model = SENTIMENT_MODELS[k % len(SENTIMENT_MODELS)]
        await client.analyze_sentiment([text], model=model, timeout=timeout)
    elif task == "zero_shot":
        await client.classify_zero_shot([text], LABELS, timeout=timeout)
    elif task == "summarize":
        article = ARTICLES[k % len(ARTICLES)]
        await client.summarize([article], max_length=new_tokens, num_beams=1, timeout=timeout)
    elif task == "reply":
        # Greedy: requests with the same settings share batches (sampled ones never do).
        await client.reply(TURNS, max_new_tokens=new_tokens, timeout=timeout)
    elif task == "reply_stream":
        # Sampled (seeded): the tiny stand-in answers greedy requests with EOS at once.
        stream = client.stream_reply(
            TURNS, max_new_tokens=new_tokens, temperature=1.0, seed=k, timeout=timeout
        )
        async for _ in stream.chunks():
            pass
    elif task == "models":
        await client.list_models(timeout=timeout)
    else:
        raise ValueError(f"unknown task {task}")


@dataclass
class Recorder:
    """Every call's outcome, plus the first message of each status/reason (evidence)."""

    calls: list[Call] = field(default_factory=list)
    examples: dict[str, str] = field(default_factory=dict)

    async def run(self, client: AsyncClient, task: str, k: int, timeout: float) -> Call:
        start = time.monotonic()
        try:
            # A bound beyond the deadline, in case a call ever hangs past it.
            await asyncio.wait_for(call_task(client, task, k, timeout), timeout + 30.0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every failure of the server under test is data
            status, reason, details = describe(exc)
        else:
            status, reason, details = "OK", "", ""
        call = Call(task, status, reason, start, time.monotonic())
        self.calls.append(call)
        if details and call.label not in self.examples:
            self.examples[call.label] = f"{task}: {details}"
        return call


def by_status(calls: Iterable[Call]) -> dict[str, int]:
    """Calls per ``STATUS/REASON``, most frequent first."""
    return dict(Counter(c.label for c in calls).most_common())


def statuses(calls: Iterable[Call]) -> set[str]:
    return {c.status for c in calls}


def task_table(calls: list[Call]) -> tuple[list[str], list[list[Any]], dict[str, Any]]:
    """Per task: calls, OK, each error status, p50/p99 of the OK calls (ms)."""
    error_labels = sorted({c.label for c in calls if c.status != "OK"})
    headers = ["task", "calls", "OK", *error_labels, "p50 ms (OK)", "p99 ms (OK)"]
    rows: list[list[Any]] = []
    js: dict[str, Any] = {}
    for task in [*TASKS, "all"]:
        mine = [c for c in calls if task == "all" or c.task == task]
        if not mine:
            continue
        ok = [c.latency_s for c in mine if c.status == "OK"]
        counts = Counter(c.label for c in mine)
        p50 = percentile(ok, 50) * 1e3
        p99 = percentile(ok, 99) * 1e3
        name = f"**{task}**" if task == "all" else task
        rows.append([name, len(mine), len(ok), *(counts.get(e, 0) for e in error_labels), p50, p99])
        js[task] = {
            "calls": len(mine),
            "by_status": dict(counts.most_common()),
            "p50_ms": round(p50, 1) if ok else None,
            "p99_ms": round(p99, 1) if ok else None,
        }
    return headers, rows, js


def status_table(counts: dict[str, int], examples: dict[str, str]) -> list[list[Any]]:
    """Rows ``status/reason | calls | first message``."""
    return [[label, n, _cell(examples.get(label, ""))] for label, n in counts.items()]


def _cell(text: str, width: int = 120) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 3] + "..."
