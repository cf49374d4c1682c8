"""Does the server's memory grow with traffic? RssAnon of a real ``hubless-serve`` after every
round of calls, for one or more server variants (environment settings), on the fake hub's
tiny models (what ``make soak`` serves).

    python -m bench.memory_growth                         # the default variant, 8 x 1,000 calls
    python -m bench.memory_growth --rounds 6 --calls 1000 --clients 50 \\
        --variant default --variant arenas-64:MALLOC_ARENA_MAX=64 --json /tmp/mem.json

A variant is ``NAME`` or ``NAME:VAR=VALUE,VAR=VALUE`` (added to the server's environment, so
glibc's ``MALLOC_*`` variables apply from the process start). Each variant gets a fresh server
on the same volume (fetched once), a warm-up round that is not counted, then ``--rounds``
rounds of ``--calls`` calls from ``--clients`` closed-loop clients; every call is a random task
of ``--tasks`` with 1 to 8 texts of 1 to 6 sentences each (seeded), so batches of many
shapes reach the models. After each round: the server's RssAnon, RSS and threads
(``/proc/PID/status``). Not a test and not in CI; on a shared 2-core machine a variant takes
about a minute per 5,000 calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from hubless_client import AsyncClient
from hubless_fakehub import procfs
from hubless_fakehub.stack import free_port, start_server

from .soak.env import TINY_CACHE, hub_mirror, parse_metric, run_fetcher
from .workload import make_sentences

TASKS = ("embed", "emotion", "sentiment")
SERVED = {"embed": "embedding", "emotion": "emotion", "sentiment": "sentiment"}
SENTIMENT_MODELS = ("bert-multilingual-sentiment", "twitter-roberta-sentiment", "distilbert-sst2")
SENTENCES = make_sentences(512, seed=7)


def status(pid: int) -> dict[str, float]:
    """RssAnon, VmRSS (MiB) and Threads of ``pid``."""
    return {**procfs.memory_mib(pid, ("RssAnon", "VmRSS")), "Threads": procfs.threads(pid)}


def texts(rng: random.Random) -> list[str]:
    return [
        " ".join(rng.choice(SENTENCES) for _ in range(rng.randint(1, 6)))
        for _ in range(rng.randint(1, 8))
    ]


async def one_call(client: AsyncClient, task: str, rng: random.Random) -> None:
    batch = texts(rng)
    if task == "embed":
        await client.embed(batch)
    elif task == "emotion":
        await client.detect_emotion(batch)
    else:
        await client.analyze_sentiment(batch, model=rng.choice(SENTIMENT_MODELS))


async def round_of_calls(
    target: str, calls: int, clients: int, tasks: tuple[str, ...], seed: int
) -> tuple[int, float]:
    """``calls`` calls from ``clients`` closed-loop workers; (failed calls, seconds)."""
    remaining = [calls]
    failed = [0]
    async with AsyncClient(target, timeout=60, retries=False) as client:

        async def worker(i: int) -> None:
            rng = random.Random(seed * 1_000_003 + i)
            while remaining[0] > 0:
                remaining[0] -= 1
                try:
                    await one_call(client, rng.choice(tasks), rng)
                except Exception:
                    failed[0] += 1

        started = time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(clients)))
    return failed[0], time.monotonic() - started


def run_variant(
    name: str, env: dict[str, str], volume: Path, work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    tasks = tuple(args.tasks.split(","))
    served = ",".join(SERVED[t] for t in tasks)
    metrics_port = free_port()
    server = start_server(
        volume,
        work,
        *("--metrics-port", str(metrics_port), "--tasks", served, "--drain-delay", "0"),
        env=env,
    )
    pid = server.proc.pid
    rows: list[dict[str, Any]] = []
    try:
        warm_failed, _ = asyncio.run(round_of_calls(server.target, 200, 8, tasks, seed=0))
        rows.append({"round": 0, "calls": 0, **status(pid), "failed": warm_failed, "s": 0.0})
        print(f"[{name}] after warm-up: {rows[-1]}", flush=True)
        for k in range(1, args.rounds + 1):
            cpu0 = procfs.cpu_seconds(pid)
            failed, seconds = asyncio.run(
                round_of_calls(server.target, args.calls, args.clients, tasks, seed=k)
            )
            row = {"round": k, "calls": k * args.calls, **status(pid), "failed": failed}
            row["s"] = round(seconds, 1)
            row["cpu_ms_per_call"] = round((procfs.cpu_seconds(pid) - cpu0) * 1e3 / args.calls, 1)
            row.update(trims(metrics_port))
            rows.append(row)
            print(f"[{name}] {row}", flush=True)
        if args.trim:
            trimmed = malloc_trim(pid)
            rows.append({"round": "trim", "calls": rows[-1]["calls"], **status(pid), **trimmed})
            print(f"[{name}] after malloc_trim(0): {rows[-1]}", flush=True)
    finally:
        server.stop()
    counted = [row for row in rows if row["round"] != "trim"]
    first, last = counted[1]["RssAnon"], counted[-1]["RssAnon"]
    cpu = [row["cpu_ms_per_call"] for row in counted[1:]]
    return {
        "variant": name,
        "env": env,
        "rows": rows,
        "server_cpu_ms_per_call": round(sum(cpu) / len(cpu), 1),
        "growth_after_round_1_mib": round(last - first, 1),
        "kib_per_call_after_round_1": round(
            (last - first) * 1024 / max(1, rows[-1]["calls"] - args.calls), 2
        ),
    }


def trims(metrics_port: int) -> dict[str, Any]:
    """The server's own malloc_trim figures so far (``hubless_malloc_trim_*``)."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:  # loopback only
        text = resp.read().decode()

    def value(name: str) -> float:
        return sum(v for _, v in parse_metric(text, name))

    count = value("hubless_malloc_trim_seconds_count")
    return {
        "trims": int(count),
        "trim_ms_mean": round(value("hubless_malloc_trim_seconds_sum") / count * 1e3, 1)
        if count
        else None,
        "released_mib": round(value("hubless_malloc_trim_released_bytes_total") / 2**20),
    }


def malloc_trim(pid: int) -> dict[str, Any]:
    """Call glibc's ``malloc_trim(0)`` inside ``pid`` (gdb): what the allocator holds free
    goes back to the system, what is still in use stays."""
    import subprocess

    done = subprocess.run(
        ["gdb", "-p", str(pid), "-batch", "-ex", "call (int) malloc_trim(0)"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return {"trim_rc": done.returncode}


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, spec = text.partition(":")
    env = dict(pair.split("=", 1) for pair in spec.split(",") if pair)
    return name, env


def markdown(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    counted = [row for row in results[0]["rows"] if row["round"] != "trim"]
    trim = any(row["round"] == "trim" for r in results for row in r["rows"])
    head = ["variant", "env", *(f"{row['calls']:,}" for row in counted)]
    head += ["growth after round 1", *(["after malloc_trim(0)"] if trim else [])]
    head += ["server CPU ms per call"]
    lines = [
        f"RssAnon (MiB) of hubless-serve after warm-up and after every {args.calls:,} calls "
        f"({args.clients} clients, tasks {args.tasks}):",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in results:
        env = ", ".join(f"{k}={v}" for k, v in r["env"].items()) or "—"
        cells = [f"{row['RssAnon']:,.0f}" for row in r["rows"] if row["round"] != "trim"]
        cells.append(f"{r['growth_after_round_1_mib']:+,.0f} MiB")
        if trim:
            after = [row["RssAnon"] for row in r["rows"] if row["round"] == "trim"]
            cells.append(f"{after[0]:,.0f}" if after else "")
        cells.append(f"{r['server_cpu_ms_per_call']:.1f}")
        lines.append(f"| {r['variant']} | {env} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.memory_growth", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--calls", type=int, default=1000, help="calls per round")
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma list of {', '.join(TASKS)}")
    p.add_argument("--variant", action="append", help="NAME[:VAR=VALUE,...] (repeatable)")
    p.add_argument("--json", type=Path)
    p.add_argument(
        "--trim", action="store_true", help="at the end, malloc_trim(0) in the server (gdb)"
    )
    args = p.parse_args(argv)
    variants = [parse_variant(v) for v in (args.variant or ["default"])]
    results = []
    with tempfile.TemporaryDirectory(prefix="hubless-mem-", dir=TINY_CACHE.parent) as tmp:
        work = Path(tmp)
        volume = work / "models"
        with hub_mirror() as mirror:
            fetched = run_fetcher("fetch", volume, work / "fetch-hf-home", endpoint=mirror.endpoint)
        if fetched.returncode != 0:
            print(fetched.stderr, file=sys.stderr)
            return 1
        for name, env in variants:
            results.append(run_variant(name, env, volume, work, args))
    print()
    print(markdown(results, args))
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {"args": vars(args) | {"json": str(args.json)}, "results": results}, indent=2
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
