"""Closed-loop load generator: N concurrent clients, warm-up, fixed measuring window, bounded.

Each client sends one request, waits for the answer, and sends the next. Requests completing
during the warm-up are discarded; the figures are the requests that *complete* inside the
measuring window (so slow requests started in the warm-up still count once the window opens),
and the throughput is ``items / window`` (items: sentences, or generated tokens). When the
window closes, requests still in flight are cancelled and not counted.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from .workload import latency_summary

log = logging.getLogger("bench")

# One call: client index and request number -> items it produced (sentences or tokens) and
# optionally the time to its first streamed piece (seconds).
CallFn = Callable[[int, int], Awaitable[tuple[int, float | None]]]

MAX_REQUESTS = 500_000  # hard bound on one load point, whatever the duration
CALL_TIMEOUT_S = 120.0


@dataclass
class LoadResult:
    """What one load point measured."""

    concurrency: int
    window_s: float
    requests: int
    items: int
    errors: int
    latencies_s: list[float] = field(repr=False, default_factory=list)
    ttft_s: list[float] = field(repr=False, default_factory=list)
    first_error: str = ""
    server_cpu_s: float = float("nan")
    client_cpu_s: float = float("nan")

    @property
    def items_per_s(self) -> float:
        return self.items / self.window_s if self.window_s > 0 else float("nan")

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.window_s if self.window_s > 0 else float("nan")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "concurrency": self.concurrency,
            "window_s": round(self.window_s, 3),
            "requests": self.requests,
            "items": self.items,
            "items_per_s": round(self.items_per_s, 2),
            "requests_per_s": round(self.requests_per_s, 2),
            "errors": self.errors,
            **{k: round(v, 2) for k, v in latency_summary(self.latencies_s).items()},
        }
        if self.items and not math.isnan(self.server_cpu_s):
            out["server_cpu_ms_per_item"] = round(self.server_cpu_s * 1e3 / self.items, 3)
            out["server_cores"] = round(self.server_cpu_s / self.window_s, 2)
        if self.items and not math.isnan(self.client_cpu_s):
            out["client_cpu_ms_per_item"] = round(self.client_cpu_s * 1e3 / self.items, 3)
        if self.ttft_s:
            ttft = latency_summary(self.ttft_s)
            out.update({f"ttft_{k}": round(v, 2) for k, v in ttft.items()})
        if self.first_error:
            out["first_error"] = self.first_error
        return out


async def drive(
    call: CallFn,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    server_cpu: Callable[[], float] | None = None,
) -> LoadResult:
    """Run ``concurrency`` closed-loop clients of ``call`` for ``warmup_s + duration_s``.

    ``server_cpu`` (CPU seconds used so far by the server under test) is read when the window
    opens and closes, so the result also says how much CPU each item cost the server, a
    figure that is much steadier than throughput on a shared machine.
    """
    t_start = time.perf_counter()
    t_open = t_start + warmup_s
    t_close = t_open + duration_s
    res = LoadResult(concurrency, duration_s, 0, 0, 0)
    sent = 0

    async def client(ci: int) -> None:
        nonlocal sent
        n = 0
        while sent < MAX_REQUESTS:
            sent += 1
            t0 = time.perf_counter()
            if t0 >= t_close:
                return
            try:
                items, ttft = await asyncio.wait_for(call(ci, n), CALL_TIMEOUT_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of the server under test is data
                t1 = time.perf_counter()
                if t_open <= t1 <= t_close:
                    res.errors += 1
                if not res.first_error:
                    res.first_error = f"{type(exc).__name__}: {exc}"[:500]
                    log.warning("client %d: %s", ci, res.first_error)
                await asyncio.sleep(0.05)
                continue
            t1 = time.perf_counter()
            n += 1
            if t_open <= t1 <= t_close:
                res.requests += 1
                res.items += items
                res.latencies_s.append(t1 - t0)
                if ttft is not None:
                    res.ttft_s.append(ttft)

    async def cpu_probe() -> None:
        await asyncio.sleep(max(0.0, t_open - time.perf_counter()))
        server0 = server_cpu() if server_cpu else float("nan")
        client0 = time.process_time()
        await asyncio.sleep(max(0.0, t_close - time.perf_counter()))
        res.client_cpu_s = time.process_time() - client0
        if server_cpu:
            res.server_cpu_s = server_cpu() - server0

    tasks = [asyncio.create_task(client(i)) for i in range(concurrency)]
    probe = asyncio.create_task(cpu_probe())
    remaining = t_close - time.perf_counter()
    _done, pending = await asyncio.wait(tasks, timeout=max(0.0, remaining) + 0.05)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    await probe
    return res


def process_tree_cpu(pid: int) -> Callable[[], float]:
    """CPU seconds (user + system) used so far by ``pid`` and its live children."""
    import psutil

    root = psutil.Process(pid)

    def read() -> float:
        total = 0.0
        for proc in [root, *root.children(recursive=True)]:
            try:
                t = proc.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                continue
        return total

    return read


# ---- transports ---------------------------------------------------------------------------


def grpc_unary(
    channel: grpc.aio.Channel, method: str, payloads: Sequence[bytes], items_per_call: int = 1
) -> CallFn:
    """Call unary ``method`` with pre-serialised requests; the answer is not parsed (the
    checks parse one answer beforehand), so the client spends as little CPU as possible."""
    rpc = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    n = len(payloads)

    async def call(ci: int, k: int) -> tuple[int, float | None]:
        await rpc(payloads[(ci * 7919 + k) % n])
        return items_per_call, None

    return call


def grpc_stream(
    channel: grpc.aio.Channel,
    method: str,
    payloads: Sequence[bytes],
    count_items: Callable[[list[bytes]], int],
) -> CallFn:
    """Call server-streaming ``method``; time to first chunk is recorded, and
    ``count_items`` turns the raw chunks into the number of items (tokens) produced."""
    rpc = channel.unary_stream(method, request_serializer=None, response_deserializer=None)
    n = len(payloads)

    async def call(ci: int, k: int) -> tuple[int, float | None]:
        t0 = time.perf_counter()
        ttft: float | None = None
        chunks: list[bytes] = []
        async for chunk in rpc(payloads[(ci * 7919 + k) % n]):
            if ttft is None:
                ttft = time.perf_counter() - t0
            chunks.append(chunk)
        return count_items(chunks), ttft

    return call


def http_json(
    session: Any, url: str, bodies: Sequence[dict[str, Any]], items_per_call: int = 1
) -> CallFn:
    """POST JSON bodies to ``url`` with an aiohttp session; any non-2xx is an error."""
    n = len(bodies)

    async def call(ci: int, k: int) -> tuple[int, float | None]:
        async with session.post(url, json=bodies[(ci * 7919 + k) % n]) as resp:
            await resp.read()
            if resp.status >= 300:
                raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
        return items_per_call, None

    return call


async def sweep(
    make_call: Callable[[], Awaitable[tuple[CallFn, Callable[[], Awaitable[None]]]]],
    concurrencies: Sequence[int],
    duration_s: float,
    warmup_s: float,
    label: str,
    server_cpu: Callable[[], float] | None = None,
) -> dict[int, LoadResult]:
    """One load point per concurrency, each with a fresh transport from ``make_call``
    (returns the call and an async closer)."""
    out: dict[int, LoadResult] = {}
    for c in concurrencies:
        out[c] = await load_point(make_call, c, duration_s, warmup_s, label, server_cpu)
    return out


async def load_point(
    make_call: Callable[[], Awaitable[tuple[CallFn, Callable[[], Awaitable[None]]]]],
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    label: str,
    server_cpu: Callable[[], float] | None = None,
) -> LoadResult:
    """One load point with a fresh transport from ``make_call``, logged as it ends."""
    call, close = await make_call()
    try:
        res = await drive(call, concurrency, duration_s, warmup_s, server_cpu)
    finally:
        await close()
    j = res.to_json()
    log.info(
        "%-22s c=%-3d %8.1f items/s  p50 %7.1f ms  p99 %7.1f ms  server %s CPU-ms/item "
        "on %s cores  (%d req, %d err)",
        label,
        concurrency,
        res.items_per_s,
        j["p50_ms"],
        j["p99_ms"],
        j.get("server_cpu_ms_per_item", "—"),
        j.get("server_cores", "—"),
        res.requests,
        res.errors,
    )
    return res


async def grpc_channel_factory(
    target: str,
) -> tuple[grpc.aio.Channel, Callable[[], Awaitable[None]]]:
    """A fresh grpc.aio channel (large messages allowed) and its closer."""
    channel = grpc.aio.insecure_channel(
        target,
        options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
        ],
    )
    await channel.channel_ready()

    async def close() -> None:
        await channel.close()

    return channel, close
