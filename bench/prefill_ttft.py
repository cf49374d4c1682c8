"""Time to first token of 8 simultaneous streams, against one stream's and against the
in-process prefill of the same 8 prompts as one batch (issue 18, "Batched, chunked prefill").

Two chat models: the tiny stand-in (tools/fakehub; little compute, so the ratio shows
hubless's own path: gRPC, tokenising, the step loop's rounds) and the full-size random-weight
DialoGPT-medium stand-in (bench/fullsize_models.py; the real cost of a prefill). Every round
runs, one after the other so that each meets the same load on a shared machine: the in-process
reference (one forward over the 8 prompts left-padded in one batch, tokenised as the server
does, each turn followed by EOS, with the KV cache on and the last position's logits only, as
the step loop's prefill and ``generate`` do; then over one prompt), one ``StreamReply`` alone,
then 8 at once (each on its own channel, all started in the same event-loop tick). Every
request asks for ``max_new_tokens`` 1, so the one piece a stream gets is its first token,
whatever its text (a longer reply's first piece can wait for a token whose text is empty).
The first round warms up. The server's own share, admission to the step loop -> first token
(the mean of ``hubless_time_to_first_token_seconds``), is kept beside the client's figure: the
difference is the request path (gRPC, tokenising, the answer).

Targets (ratios of one run): 8 streams / 1 stream <= 3 on the tiny stand-in; 8 streams /
in-process batch of 8 <= 1.5 on the full-size one. "8 streams" is the median TTFT of the 8
streams over the rounds; the slowest of the 8 is reported beside it.

    python bench/prefill_ttft.py [--rounds 5] [--json bench/results/prefill.json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import logging
import re
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import torch
from common import hubless, ratio
from fullsize_models import ensure_fullsize_volume
from loadgen import grpc_channel_factory
from procs import BENCH_DIR, free_port
from report import fmt, machine_info, md_table, now_utc, write_json
from settings import Settings
from soak_env import TINY_CACHE
from workload import make_sentences

from hubless.v1 import conversation_pb2
from hubless_volume import Manifest
from volume import install_dir, installed

log = logging.getLogger("bench")

MODEL = "dialogpt-medium"
STREAMS = 8
TURNS = 3  # sentences per prompt, as the generation suite's conversation (~50 tokens)
STREAM = "/hubless.v1.ConversationService/StreamReply"
TARGET_VS_ONE = 3.0  # tiny stand-in: 8 streams / 1 stream
TARGET_VS_BATCH = 1.5  # full-size stand-in: 8 streams / in-process batch prefill of 8


def prompts(sentences: list[str], n: int = STREAMS) -> list[list[str]]:
    """The turns of stream ``i``: ``TURNS`` consecutive sentences."""
    return [[sentences[(i * TURNS + k) % len(sentences)] for k in range(TURNS)] for i in range(n)]


def tiny_volume(volume: Path) -> Path:
    """A volume holding the tiny stand-in of ``MODEL`` (built into the tests' cache first)."""
    from hubless_fakehub.tiny import cached_tiny_models

    if volume.is_dir() and MODEL in installed(volume):
        return volume
    model = cached_tiny_models(TINY_CACHE)[MODEL]
    install_dir(volume, Path(model.path), name=MODEL, repo_id=model.repo_id, task=model.task)
    return volume


# ---- in-process reference -----------------------------------------------------------------


def history(tok: Any, turns: list[str], eos: int, limit: int) -> list[int]:
    """The prompt the server builds: each turn + EOS, the oldest turns dropped past ``limit``
    tokens (the tiny stand-in's context is 128)."""
    kept: list[int] = []
    for turn in reversed(turns):
        ids = [*tok.encode(turn, add_special_tokens=False), eos]
        if kept and len(kept) + len(ids) > limit:
            break
        kept = ids + kept
    return kept


class Reference:
    """The in-process prefill: one forward over the 8 prompts as one left-padded batch, or
    over one prompt (float32, ``threads`` torch threads as the server's ``--threads``)."""

    def __init__(self, snapshot: Path, turns: list[list[str]], threads: int) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads)
        tok = AutoTokenizer.from_pretrained(snapshot, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(snapshot, local_files_only=True).eval()
        eos = tok.eos_token_id
        limit = min(self.model.config.n_positions, tok.model_max_length) - 1  # 1 new token
        rows = [history(tok, stream, eos, limit) for stream in turns]
        self.prompt_tokens = [len(r) for r in rows]
        self.eight, self.one = _left_padded(rows, eos), _left_padded(rows[:1], eos)
        params = inspect.signature(self.model.forward).parameters
        self.last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    def prefill(self, inputs: dict[str, torch.Tensor]) -> float:
        """Seconds of one forward pass."""
        with torch.inference_mode():
            t0 = time.perf_counter()
            self.model(**inputs, use_cache=True, **self.last)
            return time.perf_counter() - t0


def _left_padded(rows: list[list[int]], pad: int) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions}


# ---- served -------------------------------------------------------------------------------


async def _first_token(rpc: Any, payload: bytes) -> float:
    t0 = time.perf_counter()
    ttft = None
    async for _ in rpc(payload):
        if ttft is None:
            ttft = time.perf_counter() - t0
    if ttft is None:
        raise RuntimeError("a StreamReply call ended without a message")
    return ttft


def server_ttft(metrics_port: int) -> tuple[float, float]:
    """(sum of seconds, count) of the server's admission -> first token histogram."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    found = {
        kind: float(m.group(1))
        for kind in ("sum", "count")
        if (m := re.search(rf"hubless_time_to_first_token_seconds_{kind}{{[^}}]*}} (\S+)", text))
    }
    return found.get("sum", 0.0), found.get("count", 0.0)


async def rounds_of(
    ref: Reference, target: str, metrics_port: int, turns: list[list[str]], rounds: int
) -> dict[str, Any]:
    """Each round, one after the other (the machine's load drifts: every figure of a round
    meets the same): the in-process batch of 8 and prompt alone, one stream alone, ``STREAMS``
    streams at once. The first round warms up and is not counted."""
    channels = [await grpc_channel_factory(target) for _ in range(STREAMS)]
    rpcs = [
        ch.unary_stream(STREAM, request_serializer=None, response_deserializer=None)
        for ch, _ in channels
    ]
    payloads = [
        conversation_pb2.StreamReplyRequest(turns=t, max_new_tokens=1).SerializeToString()
        for t in turns
    ]
    figures: dict[str, list[float]] = {}
    loop_s = {1: [0.0, 0.0], STREAMS: [0.0, 0.0]}  # step loop: seconds, first tokens
    try:
        for r in range(rounds + 1):
            got: dict[str, list[float]] = {
                "batch_8_prefill": [ref.prefill(ref.eight)],
                "one_prefill": [ref.prefill(ref.one)],
            }
            for streams, key in ((1, "one_ttft"), (STREAMS, "streams_8_ttft")):
                before = server_ttft(metrics_port)
                calls = [_first_token(rpcs[i], payloads[(i + r) % STREAMS]) for i in range(streams)]
                got[key] = list(await asyncio.gather(*calls))
                after = server_ttft(metrics_port)
                if r:
                    loop_s[streams][0] += after[0] - before[0]
                    loop_s[streams][1] += after[1] - before[1]
                await asyncio.sleep(0.05)
            got["streams_8_slowest_ttft"] = [max(got["streams_8_ttft"])]
            if r:
                for key, values in got.items():
                    figures.setdefault(key, []).extend(values)
    finally:
        for _, close in channels:
            await close()
    out: dict[str, Any] = {"rounds": rounds, "prompt_tokens": ref.prompt_tokens}
    out |= {f"{key}_ms": statistics.median(values) * 1e3 for key, values in figures.items()}
    for streams, key in ((1, "one"), (STREAMS, "streams_8")):
        seconds, count = loop_s[streams]
        out[f"{key}_step_loop_ttft_ms"] = seconds / count * 1e3 if count else None
    return out


# ---- one model, both models ---------------------------------------------------------------


def measure(label: str, volume: Path, turns: list[list[str]], st: Settings, rounds: int) -> Any:
    snapshot = Manifest.load(volume).models[MODEL].snapshot_dir(volume)
    ref = Reference(snapshot, turns, st.threads)
    port = free_port()
    name = f"hubless-{label.split()[0]}"
    args = ["--metrics-port", str(port), "--metrics-host", "127.0.0.1"]
    with hubless(volume, "float32", st, ["conversation"], name=name, args=args) as server:
        out = {"model": label} | asyncio.run(rounds_of(ref, server.target, port, turns, rounds))
    del ref
    gc.collect()
    out["streams_8_vs_one"] = ratio(out["streams_8_ttft_ms"], out["one_ttft_ms"])
    out["streams_8_vs_batch_prefill"] = ratio(out["streams_8_ttft_ms"], out["batch_8_prefill_ms"])
    log.info(
        "%s: TTFT 1 stream %.1f ms, 8 streams %.1f ms (slowest %.1f); in-process prefill "
        "1 prompt %.1f ms, 8 as one batch %.1f ms",
        label,
        out["one_ttft_ms"],
        out["streams_8_ttft_ms"],
        out["streams_8_slowest_ttft_ms"],
        out["one_prefill_ms"],
        out["batch_8_prefill_ms"],
    )
    return out


def run(st: Settings, rounds: int | None = None) -> dict[str, Any]:
    """Both stand-ins; returns the record the generation suite keeps under ``prefill_ttft``."""
    rounds = rounds or (3 if st.quick else 5)
    turns = prompts(make_sentences(1024))
    tiny = tiny_volume(st.work_dir / "tiny-chat-volume")
    full = ensure_fullsize_volume(st.work_dir / "fullsize-volume", [MODEL])
    models = [measure("tiny stand-in", tiny, turns, st, rounds * 4)]
    models.append(measure("full-size stand-in", full, turns, st, rounds))
    return {
        "started": now_utc(),
        "machine": machine_info(),
        "streams": STREAMS,
        "server_args": st.server_args,
        "threads": st.threads,
        "models": models,
        "targets": targets(models),
    }


def targets(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    tiny, full = models
    rows = [
        ("tiny stand-in: 8 streams / 1 stream (TTFT)", tiny["streams_8_vs_one"], TARGET_VS_ONE),
        (
            "full-size stand-in: 8 streams TTFT / in-process prefill of the 8 as one batch",
            full["streams_8_vs_batch_prefill"],
            TARGET_VS_BATCH,
        ),
    ]
    return [
        {"target": what, "measured": got, "needed": need, "op": "<=",
         "met": None if got is None else got <= need}
        for what, got, need in rows
    ]  # fmt: skip


def markdown(r: dict[str, Any]) -> str:
    rows = []
    for m in r["models"]:
        loop = f"{fmt(m['one_step_loop_ttft_ms'])} / {fmt(m['streams_8_step_loop_ttft_ms'])}"
        rows.append([m["model"], m["one_ttft_ms"], m["streams_8_ttft_ms"],
                     m["streams_8_slowest_ttft_ms"], loop, m["one_prefill_ms"],
                     m["batch_8_prefill_ms"], m["streams_8_vs_one"],
                     m["streams_8_vs_batch_prefill"]])  # fmt: skip
    table = md_table(
        ["DialoGPT-medium", "TTFT 1 stream ms", "TTFT 8 streams ms", "slowest of 8 ms",
         "of which step loop, 1 / 8 streams ms", "in-process prefill 1 ms",
         "in-process prefill 8 as one batch ms", "8 / 1 stream", "8 / in-process batch"],
        rows,
    )  # fmt: skip
    goals = md_table(
        ["target", "measured", "needed", ""],
        [[t["target"], t["measured"], f"<= {t['needed']}",
          {True: "met", False: "**missed**", None: "not measured"}[t["met"]]]
         for t in r["targets"]],
    )  # fmt: skip
    return (
        f"\n### Prefill: time to first token of {r['streams']} simultaneous streams, "
        f"{r['started']}, {r['machine']['cpu']}, {r['threads']} torch thread(s)\n\n{table}\n\n"
        f"{goals}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the full-size model")
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "results" / "prefill.json")
    parser.add_argument("--server-arg", action="append", default=[], help="to hubless-serve")
    parser.add_argument(
        "--threads",
        type=int,
        default=Settings().threads,
        help="torch threads, in-process and --threads of the server (1 on a crowded machine: "
        "several threads per forward stall on each other when the cores are oversubscribed)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = run(Settings(server_args=args.server_arg, threads=args.threads), args.rounds)
    write_json(args.json, result)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
