"""What the soak's gRPC scenarios share: channels, the "a normal call still works" and
"the queues are empty again" checks, and the checks every scenario makes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from hubless_client import AsyncClient, HealthStatus

from .calls import TASKS, UNEXPECTED, call_task, describe
from .env import ServerProc, diff_counts
from .scenario import Scenario

MAX_CALLS = 2_000_000  # hard bound on one scenario, whatever the duration
CLIENTS_PER_CHANNEL = 25
DRAIN_TIMEOUT_S = 30.0  # queue depth must be back to 0 within this
NORMAL_TIMEOUT_S = 60.0  # deadline of the "a normal call must succeed" checks
OPTIONS = [("grpc.max_receive_message_length", 64 << 20)]
INFER_POOL = 64  # hubless_server/app.py: ThreadPoolExecutor(max_workers=64, "hubless-infer")


def open_channels(target: str, clients: int, timeout: float) -> list[AsyncClient]:
    n = max(1, -(-clients // CLIENTS_PER_CHANNEL))
    # retries=False: every status is the server's own answer, not a retried one.
    return [AsyncClient(target, timeout=timeout, retries=False, options=OPTIONS) for _ in range(n)]


async def close_all(channels: list[AsyncClient]) -> None:
    await asyncio.gather(*(c.close() for c in channels), return_exceptions=True)


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


async def normal_calls(target: str) -> dict[str, str]:
    """One call of every task with a normal deadline: task -> status (``OK`` expected)."""
    out: dict[str, str] = {}
    async with AsyncClient(target, timeout=NORMAL_TIMEOUT_S, retries=False) as client:
        for k, task in enumerate(TASKS):
            try:
                await call_task(client, task, k, NORMAL_TIMEOUT_S)
                out[task] = "OK"
            except Exception as exc:
                status, reason, details = describe(exc)
                out[task] = f"{status}/{reason}: {details}" if reason else f"{status}: {details}"
    return out


async def health_status(target: str) -> str:
    async with AsyncClient(target, timeout=10, retries=False) as client:
        try:
            status = await client.health()
        except Exception as exc:
            return describe(exc)[0]
    return status.value if isinstance(status, HealthStatus) else str(status)


async def drain(sc: Scenario, server: ServerProc) -> None:
    """Poll /metrics until the queues are empty; record it and check it."""
    depth, waited, per_model = await in_thread(server.wait_queue_empty, DRAIN_TIMEOUT_S)
    sc.figures["queue depth after (sum of hubless_queue_depth)"] = int(depth)
    sc.figures["seconds until the queues were empty"] = round(waited, 2)
    busy = {m: d for m, d in per_model.items() if d}
    sc.check(
        f"queue depth back to 0 within {DRAIN_TIMEOUT_S:g} s",
        depth == 0,
        f"{int(depth)} after {waited:.1f} s" + (f" ({busy})" if busy else ""),
    )


def server_codes(sc: Scenario, before: dict[str, float], after: dict[str, float]) -> dict:
    delta = diff_counts(after, before)
    sc.table(
        "Server side (`hubless_requests_total` increase, by code):",
        ["code", "RPCs"],
        [[code, n] for code, n in delta.items()] or [["—", 0]],
    )
    return delta


def check_no_unexpected(sc: Scenario, client_statuses: set[str], server: dict[str, int]) -> None:
    bad_client = sorted(s for s in client_statuses if s in UNEXPECTED)
    bad_server = sorted(s for s in server if s in UNEXPECTED)
    sc.check(
        "no UNKNOWN or INTERNAL status (client side and server metrics)",
        not bad_client and not bad_server,
        f"client {bad_client or 'none'}, server {bad_server or 'none'}",
    )


def check_normal_calls(sc: Scenario, results: dict[str, str]) -> None:
    failed = {t: r for t, r in results.items() if r != "OK"}
    sc.check(
        "afterwards a normal call of every task succeeds",
        not failed,
        "all OK" if not failed else f"{failed}",
    )


def check_threads(sc: Scenario, server: ServerProc, threads: int) -> None:
    """Thread count within the server's bound. Its two thread pools (``app.py``: 64
    ``hubless-infer`` threads, one per running batch or stream, and ``max(2, CPUs)``
    ``hubless-prepare``) keep the threads they started, and every thread that runs torch gets
    its own OpenMP team (libgomp: ``--threads`` - 1 more threads per host thread), so the count
    grows to 64 x torch threads + the prepare pool above the start and stays there; beyond
    that, threads leak."""
    cpus = len(os.sched_getaffinity(server.pid)) if server.proc.poll() is None else 1
    prepare = max(2, cpus)
    bound = server.threads_at_start + INFER_POOL * cpus + prepare
    sc.check(
        f"no thread leak: threads <= {server.threads_at_start} at start + {INFER_POOL} infer "
        f"threads x {cpus} (torch threads, OpenMP teams) + {prepare} prepare = {bound}",
        0 <= threads <= bound,
        threads,
    )
