"""The soak's load scenarios against a running ``hubless-serve``: mixed load and deadline
storm. Each returns a :class:`.scenario.Scenario`; every loop is bounded (by time, by a call
count and by each call's deadline)."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

from .calls import TASKS, Recorder, by_status, status_table, statuses, task_table
from .checks import (
    CLIENTS_PER_CHANNEL,
    MAX_CALLS,
    NORMAL_TIMEOUT_S,
    check_no_unexpected,
    check_normal_calls,
    check_threads,
    close_all,
    drain,
    health_status,
    in_thread,
    normal_calls,
    open_channels,
    server_codes,
)
from .env import ServerProc, diff_counts
from .scenario import Scenario

# ---- 1. mixed load --------------------------------------------------------------------------


async def mixed_load(
    server: ServerProc, *, clients: int, duration_s: float, timeout_s: float, seed: int
) -> Scenario:
    sc = Scenario(
        "mixed-load",
        f"1. Mixed load: {clients} clients, {duration_s:g} s, every task",
        setup=(
            f"{clients} closed-loop clients (typed `AsyncClient`, {CLIENTS_PER_CHANNEL} per "
            f"channel, no retries, deadline {timeout_s:g} s), each picking a task at random "
            f"(seeded) for every call: {', '.join(TASKS)}; one text per call, "
            "at most 8 new tokens for summaries and replies (`Reply` greedy, so requests share "
            "batches; `StreamReply` sampled, temperature 1, seeded). Latency percentiles are "
            "over the OK calls."
        ),
    )
    warm = await normal_calls(server.target)  # lazily created pools exist before 'before'
    if any(r != "OK" for r in warm.values()):
        sc.error = f"warm-up calls failed: {warm}"
        return sc
    rss0, threads0, names0 = server.rss_mib(), server.threads(), server.thread_names()
    codes0 = await in_thread(server.requests_by_code)
    rec = Recorder()
    channels = open_channels(server.target, clients, timeout_s)
    t0 = time.monotonic()
    t_end = t0 + duration_s
    peak = {"rss": rss0, "queue": 0.0, "threads": threads0}
    rss_samples: list[tuple[float, float, float]] = []  # (s into the load, RSS, RssAnon MiB)

    async def worker(i: int) -> None:
        rng = random.Random(seed * 100_003 + i)
        k = i
        while time.monotonic() < t_end and len(rec.calls) < MAX_CALLS:
            await rec.run(channels[i % len(channels)], rng.choice(TASKS), k, timeout_s)
            k += 1

    async def sampler() -> None:
        while time.monotonic() < t_end:
            await asyncio.sleep(1.0)
            rss = server.rss_mib()
            anon = server.anon_mib()
            rss_samples.append((time.monotonic() - t0, rss, anon))
            peak["rss"] = max(peak["rss"], rss)
            peak["threads"] = max(peak["threads"], server.threads())
            try:
                depth = await in_thread(server.queue_depth)
                peak["queue"] = max(peak["queue"], sum(depth.values()))
            except OSError:
                pass

    sampling = asyncio.create_task(sampler())
    await asyncio.gather(*(worker(i) for i in range(clients)))
    elapsed = time.monotonic() - t0
    await sampling
    await close_all(channels)
    await drain(sc, server)
    rss1, threads1, names1 = server.rss_mib(), server.threads(), server.thread_names()
    codes1 = await in_thread(server.requests_by_code)
    health = await health_status(server.target)

    headers, rows, per_task = task_table(rec.calls)
    sc.table("Calls by task and final status (client side):", headers, rows)
    counts = by_status(rec.calls)
    sc.table(
        "Final statuses (client side), with the first message of each error:",
        ["status/reason", "calls", "first message"],
        status_table(counts, rec.examples),
    )
    server_delta = server_codes(sc, codes0, codes1)
    ok = sum(1 for c in rec.calls if c.status == "OK")
    sc.figures.update(
        {
            "calls": len(rec.calls),
            "calls OK": ok,
            "calls/s": round(len(rec.calls) / elapsed, 1),
            "load ran (s, until the last call ended)": round(elapsed, 1),
            "server RSS before / peak / after (MiB)": (
                f"{rss0:.0f} / {peak['rss']:.0f} / {rss1:.0f}"
            ),
            "server RSS (RssAnon) at each quarter of the load (MiB)": _quarters(
                rss_samples, duration_s
            ),
            "server threads before / peak / after": f"{threads0} / {peak['threads']} / {threads1}",
            "peak queue depth during the load (1 s samples)": int(peak["queue"]),
            "server threads by name before": names0,
            "server threads by name after": names1,
        }
    )
    sc.data = {"per_task": per_task, "by_status": counts, "server_codes": server_delta}
    check_no_unexpected(sc, statuses(rec.calls), server_delta)
    allowed = {"OK", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}
    other = {s: n for s, n in Counter(c.status for c in rec.calls).items() if s not in allowed}
    sc.check(
        "every call ends OK or with an overload status (DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED)",
        not other,
        f"other statuses: {other}" if other else f"{ok} OK of {len(rec.calls)}",
    )
    no_ok = [t for t in TASKS if per_task.get(t, {}).get("by_status", {}).get("OK", 0) == 0]
    sc.check("every task has OK calls", not no_ok, f"tasks without OK: {no_ok or 'none'}")
    sc.check("server SERVING after the load", health == "SERVING", health)
    check_threads(sc, server, threads1)
    return sc


def _quarters(samples: list[tuple[float, float, float]], duration_s: float) -> str:
    """The last sample at or before 25, 50, 75 and 100 % of the load."""
    out = []
    for q in (0.25, 0.5, 0.75, 1.0):
        before = [(rss, anon) for t, rss, anon in samples if t <= q * duration_s + 0.5]
        out.append(f"{before[-1][0]:.0f} ({before[-1][1]:.0f})" if before else "—")
    return " / ".join(out)


# ---- 2. deadline storm ----------------------------------------------------------------------


async def deadline_storm(server: ServerProc, *, calls: int, in_flight: int, seed: int) -> Scenario:
    sc = Scenario(
        "deadline-storm",
        f"2. Deadline storm: {calls:,} calls with 1-5 ms deadlines, {in_flight} in flight",
        setup=(
            f"{calls:,} calls, task and deadline (uniform 1-5 ms) drawn from a seeded RNG, at "
            f"most {in_flight} in flight; then one call of every task with a "
            f"{NORMAL_TIMEOUT_S:g} s deadline."
        ),
    )
    rng = random.Random(seed)
    plan = [(rng.choice(TASKS), rng.uniform(0.001, 0.005)) for _ in range(calls)]
    codes0 = await in_thread(server.requests_by_code)
    dropped0 = await in_thread(server.dropped)
    rec = Recorder()
    channels = open_channels(server.target, in_flight, 1.0)
    sem = asyncio.Semaphore(in_flight)

    async def one(i: int, task: str, deadline: float) -> None:
        async with sem:
            await rec.run(channels[i % len(channels)], task, i, deadline)

    t0 = time.monotonic()
    await asyncio.gather(*(one(i, t, d) for i, (t, d) in enumerate(plan)))
    elapsed = time.monotonic() - t0
    await close_all(channels)
    await drain(sc, server)
    normal = await normal_calls(server.target)
    codes1 = await in_thread(server.requests_by_code)
    dropped1 = await in_thread(server.dropped)

    headers, rows, per_task = task_table(rec.calls)
    sc.table("Calls by task and final status (client side):", headers, rows)
    counts = by_status(rec.calls)
    sc.table(
        "Final statuses (client side):",
        ["status/reason", "calls", "first message"],
        status_table(counts, rec.examples),
    )
    server_delta = server_codes(sc, codes0, codes1)
    dropped = diff_counts(dropped1, dropped0)
    n_dl = sum(1 for c in rec.calls if c.status == "DEADLINE_EXCEEDED")
    sc.figures.update(
        {
            "calls": len(rec.calls),
            "DEADLINE_EXCEEDED share": f"{n_dl / max(len(rec.calls), 1):.1%}",
            "calls that reached a server handler (hubless_requests_total increase)": sum(
                server_delta.values()
            ),
            "storm took (s)": round(elapsed, 2),
            "server: items dropped (hubless_dropped_items_total increase)": dropped or "none",
            "normal calls afterwards": ", ".join(f"{t} {r}" for t, r in normal.items()),
            "server RSS / threads afterwards (MiB / count)": (
                f"{server.rss_mib():.0f} / {server.threads()}"
            ),
        }
    )
    sc.data = {"per_task": per_task, "by_status": counts, "server_codes": server_delta}
    check_no_unexpected(sc, statuses(rec.calls), server_delta)
    other = {s: n for s, n in Counter(c.status for c in rec.calls).items()}
    other = {s: n for s, n in other.items() if s not in ("OK", "DEADLINE_EXCEEDED")}
    sc.check(
        "every call ends DEADLINE_EXCEEDED (or OK when it was that fast)",
        not other,
        f"other statuses: {other}" if other else f"{n_dl} DEADLINE_EXCEEDED of {len(rec.calls)}",
    )
    check_normal_calls(sc, normal)
    return sc
