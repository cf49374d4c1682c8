"""Soak scenario 3: a storm of reply streams, each cancelled by its client after the first
chunk; generation must stop and the server must stay healthy."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from hubless_client import AsyncClient

from ..workload import percentile
from .calls import TURNS, UNEXPECTED, describe
from .checks import (
    NORMAL_TIMEOUT_S,
    check_normal_calls,
    check_threads,
    close_all,
    drain,
    health_status,
    in_thread,
    normal_calls,
    open_channels,
)
from .env import ServerProc, diff_counts
from .scenario import Scenario

# ---- 3. cancel storm ------------------------------------------------------------------------


async def cancel_storm(
    server: ServerProc, *, streams: int, in_flight: int, new_tokens: int
) -> Scenario:
    sc = Scenario(
        "cancel-storm",
        f"3. Cancel storm: {streams} reply streams cancelled after the first chunk",
        setup=(
            f"{streams} `StreamReply` calls (max_new_tokens {new_tokens}), at most {in_flight} "
            "in flight, each cancelled by the client as soon as its first chunk arrives; then "
            "the server's CPU over 2 s (generation must have stopped), one full stream and one "
            "call of every task."
        ),
    )
    codes0 = await in_thread(server.requests_by_code, "StreamReply")
    channels = open_channels(server.target, in_flight, NORMAL_TIMEOUT_S)
    sem = asyncio.Semaphore(in_flight)
    outcomes: Counter[str] = Counter()
    examples: dict[str, str] = {}
    first_chunk_s: list[float] = []

    async def one(i: int) -> None:
        async with sem:
            client = channels[i % len(channels)]
            t0 = time.monotonic()
            stream = client.stream_reply(
                TURNS, max_new_tokens=new_tokens, temperature=1.0, seed=i, timeout=NORMAL_TIMEOUT_S
            )
            outcome = "ended without a chunk"
            try:
                async for chunk in stream.chunks():
                    first_chunk_s.append(time.monotonic() - t0)
                    if chunk.finish_reason is not None:
                        outcome = "finished with its first chunk (nothing to cancel)"
                    else:
                        stream.cancel()
                        outcome = "cancelled by the client after the first chunk"
                    break
            except Exception as exc:
                status, reason, details = describe(exc)
                outcome = f"{status}/{reason}" if reason else status
                examples.setdefault(outcome, details)
            outcomes[outcome] += 1

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(streams)))
    elapsed = time.monotonic() - t0
    await close_all(channels)
    await drain(sc, server)
    cpu0 = server.cpu_s()
    await asyncio.sleep(2.0)
    cores_after = (server.cpu_s() - cpu0) / 2.0
    full = await _full_stream(server.target, 16)
    normal = await normal_calls(server.target)
    health = await health_status(server.target)
    threads = server.threads()
    await asyncio.sleep(0.5)  # the server counts a cancelled RPC when its handler ends
    codes1 = await in_thread(server.requests_by_code, "StreamReply")

    sc.table(
        "Streams by outcome (client side):",
        ["outcome", "streams", "first message"],
        [[o, n, examples.get(o, "")] for o, n in outcomes.most_common()],
    )
    server_delta = diff_counts(codes1, codes0)
    sc.table(
        "Server side (`hubless_requests_total` increase for StreamReply, by code; includes the "
        "follow-up calls):",
        ["code", "RPCs"],
        [[code, n] for code, n in server_delta.items()] or [["—", 0]],
    )
    sc.figures.update(
        {
            "storm took (s)": round(elapsed, 2),
            "time to first chunk p50 / p99 (ms)": (
                f"{percentile(first_chunk_s, 50) * 1e3:.0f} / "
                f"{percentile(first_chunk_s, 99) * 1e3:.0f}"
            ),
            "server CPU over the 2 s after the queues emptied (cores)": round(cores_after, 3),
            "full stream afterwards": full,
            "normal calls afterwards": ", ".join(f"{t} {r}" for t, r in normal.items()),
            "health afterwards": health,
            "server RSS / threads afterwards (MiB / count)": f"{server.rss_mib():.0f} / {threads}",
        }
    )
    sc.data = {"outcomes": dict(outcomes), "server_codes_stream_reply": server_delta}
    cancelled = outcomes.get("cancelled by the client after the first chunk", 0)
    finished = outcomes.get("finished with its first chunk (nothing to cancel)", 0)
    errors = {o: n for o, n in outcomes.items() if not o.startswith(("cancelled", "finished"))}
    sc.check(
        "every stream delivered a first chunk (no error before it)",
        not errors,
        f"{cancelled} cancelled, {finished} finished at once"
        + (f", errors {errors}" if errors else ""),
    )
    bad = sorted(s for s in server_delta if s in UNEXPECTED)
    sc.check("no UNKNOWN or INTERNAL status in the server metrics", not bad, bad or "none")
    sc.check(
        "generation stopped: server CPU over 2 s after the storm < 0.5 cores",
        cores_after < 0.5,
        f"{cores_after:.2f} cores",
    )
    sc.check("a full stream afterwards succeeds", full.startswith("OK"), full)
    check_normal_calls(sc, normal)
    sc.check("server SERVING afterwards", health == "SERVING", health)
    check_threads(sc, server, threads)
    return sc


async def _full_stream(target: str, new_tokens: int) -> str:
    async with AsyncClient(target, timeout=NORMAL_TIMEOUT_S, retries=False) as client:
        stream = client.stream_reply(
            TURNS, max_new_tokens=new_tokens, temperature=1.0, seed=7, timeout=NORMAL_TIMEOUT_S
        )
        try:
            result = await stream.result()
        except Exception as exc:
            return ": ".join(describe(exc)[::2])
    return f"OK ({result.tokens} tokens, {result.finish_reason.value})"
