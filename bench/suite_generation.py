"""Generation suite: summarization (bart-large-cnn) and conversation (DialoGPT-medium)
tokens/s, and time to first token through ``ConversationService.StreamReply``.

Conversation is driven twice: through the unary ``Reply`` and through ``StreamReply`` (time to
first token); both, and greedy summaries, run on the server's generation step loop
(token-level continuous batching). ``prefill_ttft`` adds the time to first token of 8
simultaneous streams against one stream's and against the in-process prefill of the 8 prompts
as one batch (tiny and full-size DialoGPT). In the same run the server is also measured with
``--no-continuous-batching`` at one client (the whole-request batching of before: the
"today" baseline), a stream arriving while 7 others are mid-reply, and an Embed call's latency
while 100 streams are open (``generation_probes``). The targets of the step loop are checked
against these (``targets`` in the JSON, a table in the markdown).

Full-size random-weight models (bench/fullsize_models.py) never emit their end-of-sequence
token, so every request generates exactly the tokens asked for: the cost per request is fixed.
Throughput counts generated tokens per second over all clients.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import prefill_ttft
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from hubless.v1 import conversation_pb2, summarization_pb2
from hubless_volume import Manifest

from . import common
from .common import bf16_native, hubless, point, profiled, ratio, system_record, window
from .fullsize_models import ensure_fullsize_volume
from .generation_probes import embed_under_streams, late_joiner_ttft, targets
from .loadgen import (
    LoadResult,
    drive,
    grpc_channel_factory,
    grpc_stream,
    grpc_unary,
    process_tree_cpu,
)
from .report import (
    fmt,
    machine_info,
    md_table,
    now_utc,
    plot_throughput,
    write_json,
    write_markdown,
)
from .settings import Settings
from .workload import TransformerShape, flops_per_token, latency_summary, make_article
from .workload import make_sentences as _sentences

log = logging.getLogger("bench")

ARTICLE_SENTENCES = 6  # ~100 tokens of input per summary
CHAT_TURNS = 3


@dataclass(frozen=True)
class GenTask:
    name: str  # row label
    task: str  # hubless task
    model: str
    method: str
    decoder: TransformerShape
    stream: bool = False

    def inputs(self, sentences: list[str], i: int) -> list[str]:
        """The texts (summarization) or turns (conversation) of request ``i``."""
        if self.task == "summarization":
            return [make_article(sentences, ARTICLE_SENTENCES, offset=i * ARTICLE_SENTENCES)]
        return [sentences[(i * CHAT_TURNS + k) % len(sentences)] for k in range(CHAT_TURNS)]

    def payload(self, sentences: list[str], i: int, new_tokens: int) -> bytes:
        if self.task == "summarization":
            return summarization_pb2.SummarizeRequest(
                texts=self.inputs(sentences, i),
                min_length=new_tokens,
                max_length=new_tokens,
                num_beams=1,
            ).SerializeToString()
        request = (
            conversation_pb2.StreamReplyRequest if self.stream else conversation_pb2.ReplyRequest
        )
        return request(
            turns=self.inputs(sentences, i), max_new_tokens=new_tokens
        ).SerializeToString()


TASKS = [
    GenTask(
        "summarization",
        "summarization",
        "bart-large-cnn",
        "/hubless.v1.SummarizationService/Summarize",
        TransformerShape(1024, 12, 4096, 50265, cross_attention=True),
    ),
    GenTask(
        "conversation",
        "conversation",
        "dialogpt-medium",
        "/hubless.v1.ConversationService/Reply",
        TransformerShape(1024, 24, 4096, 50257),
    ),
    GenTask(
        "conversation-stream",
        "conversation",
        "dialogpt-medium",
        "/hubless.v1.ConversationService/StreamReply",
        TransformerShape(1024, 24, 4096, 50257),
        stream=True,
    ),
]


def gflop_per_new_token(task: GenTask, context: float) -> float:
    """Decoder FLOPs of one generated token (with the LM head), at ``context`` tokens."""
    return flops_per_token(task.decoder, context, with_lm_head=True) / 1e9


# ---- in-process reference ---------------------------------------------------------------


def in_process(
    task: GenTask, snapshot: Path, sentences: list[str], new_tokens: int, batches: list[int]
) -> dict[str, Any]:
    """Greedy ``generate`` in this process: tokens/s at each batch size, prompt length, TTFT."""
    tok = AutoTokenizer.from_pretrained(snapshot, local_files_only=True)
    if task.task == "summarization":
        model = AutoModelForSeq2SeqLM.from_pretrained(snapshot, local_files_only=True)

        def encode(idx: list[int]) -> dict[str, torch.Tensor]:
            texts = [task.inputs(sentences, i)[0] for i in idx]
            return tok(texts, padding=True, truncation=True, return_tensors="pt")

        def gen(feats: dict[str, torch.Tensor], n: int) -> Any:
            return model.generate(
                **feats, num_beams=1, do_sample=False, min_length=n + 1, max_length=n + 1
            )
    else:
        model = AutoModelForCausalLM.from_pretrained(snapshot, local_files_only=True)
        tok.padding_side = "left"
        tok.pad_token = tok.eos_token

        def encode(idx: list[int]) -> dict[str, torch.Tensor]:
            prompts = [tok.eos_token.join(task.inputs(sentences, i)) + tok.eos_token for i in idx]
            return tok(prompts, padding=True, return_tensors="pt")

        def gen(feats: dict[str, torch.Tensor], n: int) -> Any:
            return model.generate(
                **feats,
                do_sample=False,
                min_new_tokens=n,
                max_new_tokens=n,
                pad_token_id=tok.eos_token_id,
            )

    model.eval()
    prompt_tokens = float(np.mean([int(encode([i])["attention_mask"].sum()) for i in range(16)]))
    out: dict[str, Any] = {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens}
    with torch.inference_mode():
        gen(encode([0]), 2)
        ttft = []
        for i in range(3):
            feats = encode([i])
            t0 = time.perf_counter()
            gen(feats, 1)
            ttft.append(time.perf_counter() - t0)
        out["ttft_ms"] = latency_summary(ttft)["p50_ms"]
        for b in batches:
            feats = encode(list(range(b)))
            t0 = time.perf_counter()
            gen(feats, new_tokens)
            dt = time.perf_counter() - t0
            out[f"batch_{b}_tokens_s"] = b * new_tokens / dt
            out[f"batch_{b}_request_ms"] = dt * 1e3
    log.info(
        "%s in-process: prompt %.0f tokens, TTFT %.0f ms, %s",
        task.name,
        prompt_tokens,
        out["ttft_ms"],
        ", ".join(f"batch {b}: {out[f'batch_{b}_tokens_s']:.1f} tok/s" for b in batches),
    )
    return out


# ---- served ------------------------------------------------------------------------------


async def tokens_per_request(target: str, task: GenTask, payload: bytes) -> int:
    """Generated tokens of one request, from a parsed unary answer."""
    channel, close = await grpc_channel_factory(target)
    try:
        if task.task == "summarization":
            raw = await channel.unary_unary(task.method)(payload)
            resp = summarization_pb2.SummarizeResponse.FromString(raw)
            return resp.summaries[0].tokens
        raw = await channel.unary_unary("/hubless.v1.ConversationService/Reply")(payload)
        return conversation_pb2.ReplyResponse.FromString(raw).tokens
    finally:
        await close()


async def load_task(
    server: Any,
    task: GenTask,
    sentences: list[str],
    new_tokens: int,
    st: Settings,
    request_s: dict[int, float],
) -> tuple[dict[int, LoadResult], int]:
    payloads = [task.payload(sentences, i, new_tokens) for i in range(64)]
    n_tok = await tokens_per_request(server.target, task, payloads[0])
    out: dict[int, LoadResult] = {}
    for c, req_s in request_s.items():
        warmup, duration = window(st, req_s)
        channel, close = await grpc_channel_factory(server.target)
        try:
            if task.stream:
                call = grpc_stream(channel, task.method, payloads, lambda _chunks: n_tok)
            else:
                call = grpc_unary(channel, task.method, payloads, items_per_call=n_tok)
            res = await drive(call, c, duration, warmup, process_tree_cpu(server.proc.pid))
        finally:
            await close()
        out[c] = res
        j = res.to_json()
        log.info(
            "%-13s %-13s c=%-3d %7.1f tokens/s  p50 %8.0f ms  TTFT p50 %s ms  (%d req, %d err)",
            task.name,
            server.name,
            c,
            res.items_per_s,
            j["p50_ms"],
            fmt(j.get("ttft_p50_ms")),
            res.requests,
            res.errors,
        )
    return out, n_tok


async def run_server(
    volume: Path,
    dtype: str,
    sentences: list[str],
    new_tokens: int,
    st: Settings,
    in_proc: dict[str, dict[str, Any]],
    tasks: list[GenTask] = TASKS,
    cs: list[int] | None = None,
    probes: bool = True,
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    cs = cs or st.heavy_concurrency()
    served = sorted({t.task for t in tasks} | ({"embedding"} if probes else set()))
    with hubless(volume, dtype, st, served) as server:
        for task in tasks:
            # Expected request time at c clients: the in-process batch of c.
            req_s = {c: in_proc[task.name][f"batch_{c}_request_ms"] / 1e3 for c in cs}
            seconds = sum(sum(window(st, r)) + 1 for r in req_s.values())
            async with profiled(server, st, f"generation-{task.name}", seconds):
                points, n_tok = await load_task(server, task, sentences, new_tokens, st, req_s)
            out[task.name] = system_record(server, points) | {"tokens_per_request": n_tok}
        if probes:
            stream = next(t for t in tasks if t.stream)
            turns = [stream.inputs(sentences, i) for i in range(64)]
            out[stream.name]["late_joiner"] = await late_joiner_ttft(
                server.target, turns, new_tokens
            )
            out[stream.name]["embed_under_streams"] = await embed_under_streams(
                server.target, turns
            )
    return out


def baseline(
    volume: Path, dtype: str, sentences: list[str], new_tokens: int, st: Settings, in_proc: Any
) -> dict[str, dict[str, Any]]:
    """Conversation at one client with ``--no-continuous-batching``: the path of before."""
    old = dataclasses.replace(st, server_args=[*st.server_args, "--no-continuous-batching"])
    chats = [t for t in TASKS if t.task == "conversation"]
    return asyncio.run(
        run_server(volume, dtype, sentences, new_tokens, old, in_proc, chats, [1], probes=False)
    )


# ---- the suite --------------------------------------------------------------------------


def run(st: Settings) -> dict[str, Any]:
    started = now_utc()
    machine = machine_info()
    sentences = _sentences(1024)
    gemm = common.gemm(st.quick)
    native = bf16_native(gemm)
    new_tokens = 8 if st.quick else 16
    names = sorted({t.model for t in TASKS} | {"all-minilm-l6-v2"})
    volume = ensure_fullsize_volume(st.work_dir / "fullsize-volume", names)
    manifest = Manifest.load(volume)
    cs = st.heavy_concurrency()

    in_proc: dict[str, dict[str, Any]] = {}
    for t in TASKS:
        snapshot = manifest.models[t.model].snapshot_dir(volume)
        same = next((o.name for o in TASKS if o.model == t.model and o.name in in_proc), None)
        if same is not None:
            in_proc[t.name] = in_proc[same]
            continue
        in_proc[t.name] = in_process(t, snapshot, sentences, new_tokens, cs)
        gc.collect()

    served: dict[str, dict[str, dict[str, Any]]] = {}
    dtypes: list[tuple[str, str]] = [("float32", "hubless-fp32")]
    if native:
        dtypes.append(("bfloat16", "hubless-bf16"))
    else:
        served["hubless-bf16"] = {
            t.name: {"skipped": "no native bf16 on this CPU (see the GEMM rates)"} for t in TASKS
        }
    for dtype, label in dtypes:
        try:
            served[label] = asyncio.run(
                run_server(volume, dtype, sentences, new_tokens, st, in_proc)
            )
        except RuntimeError as exc:
            log.error("%s failed: %s", label, exc)
            served[label] = {t.name: {"error": str(exc)[-1500:]} for t in TASKS}
    try:
        served["hubless-fp32-no-cb"] = baseline(
            volume, "float32", sentences, new_tokens, st, in_proc
        )
    except RuntimeError as exc:
        log.error("the --no-continuous-batching baseline failed: %s", exc)

    try:
        prefill = prefill_ttft.run(st)
    except RuntimeError as exc:
        log.error("the prefill TTFT probe failed: %s", exc)
        prefill = {"error": str(exc)[-1500:]}

    tasks_out: dict[str, Any] = {}
    for t in TASKS:
        ip = in_proc[t.name]
        g = gflop_per_new_token(t, ip["prompt_tokens"] + new_tokens / 2)
        systems = {label: served[label][t.name] for label in served if t.name in served[label]}
        c_hi = max(cs)
        fp32 = point(systems, "hubless-fp32", c_hi)
        ceiling = ip[f"batch_{c_hi}_tokens_s"]
        tasks_out[t.name] = {
            "model": t.model,
            "gflop_per_new_token": g,
            "in_process": ip,
            "systems": systems,
            "headline_concurrency": c_hi,
            "server_fp32_tokens_s": fp32,
            "in_process_batch_tokens_s": ceiling,
            "server_fp32_vs_in_process_batch": ratio(fp32, ceiling),
            "server_fp32_ttft_p50_ms_c1": point(systems, "hubless-fp32", min(cs), "ttft_p50_ms"),
            "mfu_server_fp32": None if fp32 is None else fp32 * g / gemm["float32"],
        }
    results = {
        "targets": targets(tasks_out, max(cs), min(cs)),
        "suite": "generation",
        "started": started,
        "finished": now_utc(),
        "machine": machine,
        "settings": {
            "duration_s": st.duration_s,
            "warmup_s": "max(3 x warmup, 1.2 x in-process request time)",
            "concurrency": cs,
            "new_tokens": new_tokens,
            "article_sentences": ARTICLE_SENTENCES,
            "chat_turns": CHAT_TURNS,
            "quick": st.quick,
            "server_args": st.server_args,
        },
        "gemm_gflops": {"float32": gemm["float32"], "bfloat16": gemm["bfloat16"]},
        "bf16_native": native,
        "tasks": tasks_out,
        "prefill_ttft": prefill,
    }
    write_json(st.json_dir / "generation.json", results)
    series: dict[str, dict[int, float]] = {}
    ceilings: dict[str, float] = {}
    for name, tr in tasks_out.items():
        for label, rec in tr["systems"].items():
            series[f"{name} {label}"] = {
                int(c): p["items_per_s"] for c, p in rec.get("points", {}).items()
            }
        ceilings[f"{name} in-process batch {max(cs)}"] = tr["in_process_batch_tokens_s"]
    plot_throughput(
        st.json_dir / "generation.png",
        f"full-size generation models, {new_tokens} new tokens/request, {started[:10]}",
        series,
        ceilings,
        unit="generated tokens/s",
    )
    write_markdown(st.json_dir / "generation.md", markdown(results))
    return results


def markdown(r: dict[str, Any]) -> str:
    rows: list[list[Any]] = []
    cs = r["settings"]["concurrency"]
    for name, t in r["tasks"].items():
        ip = t["in_process"]
        base = t["in_process_batch_tokens_s"]
        for b in cs:
            rows.append([name, f"in-process generate, batch {b}", "—", ip[f"batch_{b}_tokens_s"],
                         ip[f"batch_{b}_request_ms"], "—", "—", ip["ttft_ms"] if b == 1 else "—",
                         ip[f"batch_{b}_tokens_s"] / base])  # fmt: skip
        for label, rec in t["systems"].items():
            if not rec:  # a system that did not serve this task (the no-CB baseline)
                continue
            if "points" not in rec:
                why = rec.get("skipped") or "could not run: " + rec.get("error", "?")[:160]
                rows.append([name, label, "—", why, "", "", "", "", ""])
                continue
            for c, p in rec["points"].items():
                rows.append([name, label, c, p["items_per_s"], p["p50_ms"], p["p95_ms"],
                             p["p99_ms"], p.get("ttft_p50_ms", "—"),
                             p["items_per_s"] / base])  # fmt: skip
    table = md_table(
        ["task", "system", "clients", "tokens/s", "p50 ms", "p95 ms", "p99 ms", "TTFT p50 ms",
         f"x in-process batch {max(cs)}"],
        rows,
    )  # fmt: skip
    probes = []
    stream = r["tasks"]["conversation-stream"]["systems"].get("hubless-fp32", {})
    if "late_joiner" in stream:
        probes.append(["StreamReply TTFT p50, arriving while 7 streams are mid-reply (ms)",
                       stream["late_joiner"]["p50_ms"]])  # fmt: skip
    if "embed_under_streams" in stream:
        e = stream["embed_under_streams"]
        probes.append(["Embed p50 idle (ms)", e["idle"]["p50_ms"]])
        probes.append([f"Embed p50 with {e['streams']} open StreamReply calls (ms)",
                       e["with_streams"]["p50_ms"]])  # fmt: skip
    goals = md_table(
        ["target", "measured", "needed", ""],
        [[t["target"], t["measured"], f"{t['op']} {t['needed']}",
          {True: "met", False: "**missed**", None: "not measured"}[t["met"]]]
         for t in r.get("targets", [])],
    )  # fmt: skip
    prefill = r.get("prefill_ttft", {})
    prefill_md = prefill_ttft.markdown(prefill) if "models" in prefill else ""
    return (
        f"\n### Generation (full-size random-weight models, {r['settings']['new_tokens']} new "
        f"tokens per request), {r['started']}, {r['machine']['cpu']}\n\n{table}\n\n"
        f"{md_table(['probe', 'value'], probes)}\n\nTargets (ratios of this run):\n\n{goals}\n"
        f"{prefill_md}"
    )
