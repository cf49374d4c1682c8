"""Probes of the generation suite beyond closed-loop load: a stream that arrives while others
are mid-reply, and another task's latency while 100 streams are open; and the step loop's
targets, as ratios of one run."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from hubless.v1 import conversation_pb2, embeddings_pb2

from .common import point, ratio
from .loadgen import grpc_channel_factory
from .workload import latency_summary

log = logging.getLogger("bench")

STREAM = "/hubless.v1.ConversationService/StreamReply"
EMBED = "/hubless.v1.EmbeddingsService/Embed"


def _stream_request(turns: list[str], new_tokens: int) -> bytes:
    return conversation_pb2.StreamReplyRequest(
        turns=turns, max_new_tokens=new_tokens
    ).SerializeToString()


async def _consume(rpc: Any, payload: bytes, started: asyncio.Event, chunks: int) -> None:
    """Read a stream; set ``started`` once ``chunks`` pieces arrived (mid-reply)."""
    seen = 0
    async for _ in rpc(payload):
        seen += 1
        if seen >= chunks:
            started.set()
    started.set()


async def late_joiner_ttft(
    target: str, turns: list[list[str]], new_tokens: int, rounds: int = 3, others: int = 7
) -> dict[str, Any]:
    """TTFT of a stream that arrives while ``others`` streams are mid-reply (each has sent
    two pieces and has ``4 x new_tokens`` to go), ``rounds`` times."""
    channel, close = await grpc_channel_factory(target)
    rpc = channel.unary_stream(STREAM, request_serializer=None, response_deserializer=None)
    ttfts = []
    try:
        for r in range(rounds):
            events = [asyncio.Event() for _ in range(others)]
            long = [_stream_request(turns[(r * others + i) % len(turns)], 4 * new_tokens)
                    for i in range(others)]  # fmt: skip
            background = [
                asyncio.create_task(_consume(rpc, payload, e, 2))
                for payload, e in zip(long, events, strict=True)
            ]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 600)
            t0 = time.perf_counter()
            async for _ in rpc(_stream_request(turns[-1 - r], new_tokens)):
                ttfts.append(time.perf_counter() - t0)
                break
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(BaseException):
                    await task
    finally:
        await close()
    out = {"rounds": rounds, "others": others} | latency_summary(ttfts)
    log.info("late joiner (%d mid-reply): TTFT p50 %.0f ms", others, out["p50_ms"])
    return out


async def _embed_latencies(rpc: Any, n: int) -> list[float]:
    payload = embeddings_pb2.EmbedRequest(texts=["how long does this take?"]).SerializeToString()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await rpc(payload)
        out.append(time.perf_counter() - t0)
        await asyncio.sleep(0.05)
    return out


async def embed_under_streams(
    target: str, turns: list[list[str]], streams: int = 100, calls: int = 20
) -> dict[str, Any]:
    """Embed latency idle, then with ``streams`` open StreamReply calls (long replies)."""
    channel, close = await grpc_channel_factory(target)
    embed = channel.unary_unary(EMBED, request_serializer=None, response_deserializer=None)
    rpc = channel.unary_stream(STREAM, request_serializer=None, response_deserializer=None)
    try:
        await _embed_latencies(embed, 3)
        idle = await _embed_latencies(embed, calls)
        events = [asyncio.Event() for _ in range(streams)]
        background = [
            asyncio.create_task(_consume(rpc, _stream_request(turns[i % len(turns)], 256), e, 1))
            for i, e in enumerate(events)
        ]
        with contextlib.suppress(TimeoutError):  # those beyond the running limit still wait
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events[:8])), 600)
        loaded = await _embed_latencies(embed, calls)
        started = sum(e.is_set() for e in events)
        for task in background:
            task.cancel()
        for task in background:
            with contextlib.suppress(BaseException):
                await task
    finally:
        await close()
    out = {
        "streams": streams,
        "streams_started": started,
        "idle": latency_summary(idle),
        "with_streams": latency_summary(loaded),
    }
    log.info(
        "Embed p50 idle %.0f ms, with %d open streams %.0f ms",
        out["idle"]["p50_ms"],
        streams,
        out["with_streams"]["p50_ms"],
    )
    return out


def targets(tasks_out: dict[str, Any], c_hi: int, c_lo: int) -> list[dict[str, Any]]:
    """The step loop's targets, each a ratio measured in this run."""
    rows: list[dict[str, Any]] = []

    def add(what: str, measured: float | None, needed: float, op: str) -> None:
        met = None
        if measured is not None:
            met = measured >= needed if op == ">=" else measured <= needed
        rows.append({"target": what, "measured": measured, "needed": needed, "op": op, "met": met})

    for name, rpc in (("conversation-stream", "StreamReply"), ("conversation", "Reply")):
        t = tasks_out[name]
        add(
            f"{rpc}: {c_hi} clients / in-process generate batch {c_hi} (tokens/s)",
            t["server_fp32_vs_in_process_batch"],
            0.9,
            ">=",
        )
        add(
            f"{rpc}: 1 client / --no-continuous-batching 1 client (tokens/s)",
            ratio(
                point(t["systems"], "hubless-fp32", c_lo),
                point(t["systems"], "hubless-fp32-no-cb", c_lo),
            ),
            0.95,
            ">=",
        )
        cpu = "server_cpu_ms_per_item"  # steadier than tokens/s on a shared CPU
        add(
            f"{rpc}: 1 client, server CPU per token, --no-continuous-batching / step loop",
            ratio(
                point(t["systems"], "hubless-fp32-no-cb", c_lo, cpu),
                point(t["systems"], "hubless-fp32", c_lo, cpu),
            ),
            0.95,
            ">=",
        )
    stream = tasks_out["conversation-stream"]["systems"].get("hubless-fp32", {})
    single = point({"s": stream}, "s", c_lo, "ttft_p50_ms")
    add(
        f"StreamReply TTFT p50: {c_hi} clients / 1 client",
        ratio(point({"s": stream}, "s", c_hi, "ttft_p50_ms"), single),
        2.0,
        "<=",
    )
    late = stream.get("late_joiner", {}).get("p50_ms")
    add(
        "StreamReply TTFT p50: arriving while 7 are mid-reply / 1 client",
        ratio(late, single),
        2.0,
        "<=",
    )
    probe = stream.get("embed_under_streams", {})
    add(
        "Embed p50 with 100 open streams / idle",
        ratio(probe.get("with_streams", {}).get("p50_ms"), probe.get("idle", {}).get("p50_ms")),
        2.0,
        "<=",
    )
    add(
        f"Summarize: {c_hi} clients / in-process generate batch {c_hi} (tokens/s)",
        tasks_out["summarization"]["server_fp32_vs_in_process_batch"],
        0.9,
        ">=",
    )
    return rows
