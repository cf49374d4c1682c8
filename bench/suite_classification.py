"""Classification suite: emotion, sentiment and zero-shot (5 labels) on full-size models.

The models are random-weight stand-ins with the real architectures and sizes
(bench/fullsize_models.py), so the cost per request is the real one. Each system gets one
sentence per request; zero-shot scores it against five labels (five encoder-decoder rows).
The in-process reference runs the same model with transformers, batched, in this process.
hubless runs on PyTorch (float32, bfloat16) and on ONNX Runtime (the artifacts
``hubless-optimize`` makes for the three task models; ``--backend onnx``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hubless.v1 import emotion_pb2, sentiment_pb2, zero_shot_pb2
from hubless_volume import Manifest

from . import common
from .common import bf16_native, hubless, point, profiled, ratio, system_record, window
from .fullsize_models import ensure_fullsize_volume
from .inprocess import ensure_onnx
from .loadgen import LoadResult, drive, grpc_channel_factory, grpc_unary, process_tree_cpu
from .report import (
    fmt,
    machine_info,
    md_table,
    now_utc,
    plot_throughput,
    target,
    targets_table,
    write_json,
    write_markdown,
)
from .settings import Settings
from .workload import ZERO_SHOT_LABELS, TransformerShape, flops_per_token, latency_summary
from .workload import make_sentences as _sentences

log = logging.getLogger("bench")

HYPOTHESIS = "This example is {}."


@dataclass(frozen=True)
class Task:
    """One classification task as the benchmark drives it."""

    name: str  # hubless task
    model: str  # catalog name of its default model
    method: str
    shape: TransformerShape
    encoder_decoder: bool = False  # BART: encoder and decoder both read every token
    labels: int = 1  # rows per text (zero-shot: one per candidate label)
    batch: int = 64  # in-process batch (texts)
    heavy: bool = False  # capped concurrency (see Settings.heavy_concurrency)

    def payload(self, text: str) -> bytes:
        if self.name == "emotion":
            return emotion_pb2.DetectEmotionRequest(texts=[text]).SerializeToString()
        if self.name == "sentiment":
            return sentiment_pb2.AnalyzeSentimentRequest(texts=[text]).SerializeToString()
        return zero_shot_pb2.ClassifyZeroShotRequest(
            texts=[text], candidate_labels=ZERO_SHOT_LABELS
        ).SerializeToString()


TASKS = [
    Task(
        "emotion",
        "emotion-english-distilroberta",
        "/hubless.v1.EmotionService/DetectEmotion",
        TransformerShape(768, 6, 3072, 50265),
    ),
    Task(
        "sentiment",
        "bert-multilingual-sentiment",
        "/hubless.v1.SentimentService/AnalyzeSentiment",
        TransformerShape(768, 12, 3072, 105879),
    ),
    Task(
        "zero-shot",
        "bart-large-mnli",
        "/hubless.v1.ZeroShotService/ClassifyZeroShot",
        TransformerShape(1024, 12, 4096, 50265),
        encoder_decoder=True,
        labels=len(ZERO_SHOT_LABELS),
        batch=8,
        heavy=True,
    ),
]


def gflop_per_text(task: Task, tokens: float) -> float:
    """Forward GFLOPs of one text (all its rows), ``tokens`` being tokens per row."""
    per_tok = flops_per_token(task.shape, tokens)
    if task.encoder_decoder:
        dec = TransformerShape(task.shape.hidden, task.shape.layers, task.shape.ffn, 0, True)
        per_tok += flops_per_token(dec, tokens)
    return per_tok * tokens * task.labels / 1e9


# ---- in-process reference ---------------------------------------------------------------


def in_process(
    task: Task, snapshot: Path, sentences: list[str], st: Settings, bf16: bool
) -> dict[str, Any]:
    """Tokens per row, single-text latency, batched throughput fp32 (and bf16 autocast)."""
    tok = AutoTokenizer.from_pretrained(snapshot, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(snapshot, local_files_only=True)
    model.eval()

    def rows(texts: list[str]) -> dict[str, torch.Tensor]:
        if task.labels > 1:
            premises = [t for t in texts for _ in ZERO_SHOT_LABELS]
            hyps = [HYPOTHESIS.format(lbl) for _ in texts for lbl in ZERO_SHOT_LABELS]
            return tok(premises, hyps, padding=True, return_tensors="pt")
        return tok(texts, padding=True, return_tensors="pt")

    lengths = [int(rows([s])["attention_mask"][0].sum()) for s in sentences[:64]]
    out: dict[str, Any] = {"tokens_per_row": float(np.mean(lengths)), "batch": task.batch}
    seconds = 1.0 if st.quick else max(3.0, st.duration_s / 2)

    with torch.inference_mode():
        model(**rows(sentences[:2]))
        lat: list[float] = []
        t_end = time.perf_counter() + seconds
        i = 0
        while time.perf_counter() < t_end:
            feats = rows([sentences[i % len(sentences)]])
            t0 = time.perf_counter()
            model(**feats)
            lat.append(time.perf_counter() - t0)
            i += 1
        out["single_call"] = {
            "texts_s": len(lat) / sum(lat),
            **{k: round(v, 2) for k, v in latency_summary(lat).items()},
        }

        cpu_ms: dict[bool, float] = {}

        def batched(autocast: bool) -> float:
            ctx = (
                torch.autocast("cpu", dtype=torch.bfloat16)
                if autocast
                else contextlib.nullcontext()
            )
            with ctx:
                n = 0
                t0, cpu0 = time.perf_counter(), time.process_time()
                while time.perf_counter() - t0 < seconds:
                    model(**rows([sentences[(n + j) % len(sentences)] for j in range(task.batch)]))
                    n += task.batch
                cpu_ms[autocast] = (time.process_time() - cpu0) * 1e3 / n
                return n / (time.perf_counter() - t0)

        model(**rows(sentences[: task.batch]))
        out["batched_fp32_texts_s"] = batched(False)
        out["batched_fp32_cpu_ms_per_text"] = cpu_ms[False]
        out["batched_bf16_texts_s"] = batched(True) if bf16 else None
    log.info(
        "%s in-process: single p50 %.1f ms, batched fp32 %.1f texts/s, bf16 %s; %.1f tok/row",
        task.name,
        out["single_call"]["p50_ms"],
        out["batched_fp32_texts_s"],
        fmt(out["batched_bf16_texts_s"]),
        out["tokens_per_row"],
    )
    return out


# ---- served ------------------------------------------------------------------------------


async def check_backends(target: str, models: list[str]) -> None:
    """Every model in ``models`` runs on ONNX Runtime (ModelInfo.backend)."""
    from hubless.v1 import models_pb2, models_pb2_grpc

    channel, close = await grpc_channel_factory(target)
    try:
        stub = models_pb2_grpc.ModelsServiceStub(channel)
        for name in models:
            info = (await stub.GetModel(models_pb2.GetModelRequest(name=name))).model
            if info.backend != "onnx":
                raise RuntimeError(f"{name} runs on {info.backend or '?'}: {info.error}")
    finally:
        await close()


async def check(target: str, task: Task, text: str) -> None:
    """One parsed answer, so a wrong service or model fails loudly before the load."""
    channel, close = await grpc_channel_factory(target)
    try:
        raw = await channel.unary_unary(task.method)(task.payload(text))
    finally:
        await close()
    resp_type = {
        "emotion": emotion_pb2.DetectEmotionResponse,
        "sentiment": sentiment_pb2.AnalyzeSentimentResponse,
        "zero-shot": zero_shot_pb2.ClassifyZeroShotResponse,
    }[task.name]
    resp = resp_type.FromString(raw)
    if len(resp.results) != 1 or resp.model.name != task.model:
        raise RuntimeError(f"{task.name}: unexpected answer {resp}")


def request_s(task: Task, ip: dict[str, Any], c: int) -> float:
    """Expected request time with ``c`` clients, from the in-process figures: the single-call
    latency alone, else ``c`` texts at the batched rate."""
    if c <= 1:
        return ip["single_call"]["p50_ms"] / 1e3
    return c / ip["batched_fp32_texts_s"]


async def load_task(
    server: Any,
    task: Task,
    sentences: list[str],
    concurrencies: list[int],
    st: Settings,
    ip: dict[str, Any],
) -> dict[int, LoadResult]:
    await check(server.target, task, sentences[0])
    payloads = [task.payload(s) for s in sentences]
    out: dict[int, LoadResult] = {}
    for c in concurrencies:
        channel, close = await grpc_channel_factory(server.target)
        try:
            if task.heavy:
                warm, duration = window(st, request_s(task, ip, c))
            else:
                warm, duration = st.warmup_s, st.duration_s
            res = await drive(
                grpc_unary(channel, task.method, payloads),
                c,
                duration,
                warm,
                process_tree_cpu(server.proc.pid),
            )
        finally:
            await close()
        out[c] = res
        j = res.to_json()
        log.info(
            "%-10s %-13s c=%-3d %7.2f texts/s  p50 %8.1f ms  p99 %8.1f ms  (%d req, %d err)",
            task.name,
            server.name,
            c,
            res.items_per_s,
            j["p50_ms"],
            j["p99_ms"],
            res.requests,
            res.errors,
        )
    return out


def concurrencies_for(task: Task, st: Settings, dtype: str, native: bool) -> list[int]:
    """Which load points to run: all, capped for heavy tasks; without native bf16 only the
    single-client point of the light tasks (a bf16 forward there is 10-100x slower)."""
    cs = st.heavy_concurrency() if task.heavy else list(st.concurrency)
    if dtype == "bfloat16" and not native:
        return [] if task.heavy else [min(cs)]
    return cs


async def run_server(
    volume: Path,
    dtype: str,
    sentences: list[str],
    st: Settings,
    native: bool,
    in_proc: dict[str, dict[str, Any]],
    label: str = "",
    args: tuple[str, ...] = (),
) -> dict[str, dict[str, Any]]:
    """One hubless-serve with the three tasks; every task's load points against it."""
    out: dict[str, dict[str, Any]] = {}
    plan = {t.name: concurrencies_for(t, st, dtype, native) for t in TASKS}
    if not any(plan.values()):
        return out
    tasks = [t.name for t in TASKS if plan[t.name]]
    with hubless(volume, dtype, st, tasks, label, args) as server:
        if "onnx" in args:  # a model left on PyTorch would be measured as ONNX otherwise
            await check_backends(server.target, [t.model for t in TASKS if plan[t.name]])
        for task in TASKS:
            cs = plan[task.name]
            if not cs:
                out[task.name] = {"skipped": "no native bf16 on this CPU (see the GEMM rates)"}
                continue
            ip = in_proc[task.name]
            seconds = sum(
                sum(window(st, request_s(task, ip, c))) + 1
                if task.heavy
                else st.duration_s + st.warmup_s + 1
                for c in cs
            )
            async with profiled(server, st, f"classification-{task.name}", seconds):
                points = await load_task(server, task, sentences, cs, st, ip)
            out[task.name] = system_record(server, points)
    return out


# ---- the suite --------------------------------------------------------------------------


def run(st: Settings) -> dict[str, Any]:
    started = now_utc()
    machine = machine_info()
    sentences = _sentences(1024)
    gemm = common.gemm(st.quick)
    native = bf16_native(gemm)
    volume = ensure_fullsize_volume(st.work_dir / "fullsize-volume")
    onnx_artifacts = ensure_onnx(volume, [t.model for t in TASKS], st.threads)
    manifest = Manifest.load(volume)

    in_proc: dict[str, dict[str, Any]] = {}
    for t in TASKS:
        snapshot = manifest.models[t.model].snapshot_dir(volume)
        in_proc[t.name] = in_process(t, snapshot, sentences, st, native)
        gc.collect()
    served: dict[str, dict[str, dict[str, Any]]] = {}
    torch_args, onnx_args = ("--backend", "torch"), ("--backend", "onnx")
    for dtype, label, args in (
        ("float32", "hubless-onnx", onnx_args),
        ("float32", "hubless-torch-fp32", torch_args),
        ("bfloat16", "hubless-torch-bf16", torch_args),
    ):
        try:
            served[label] = asyncio.run(
                run_server(volume, dtype, sentences, st, native, in_proc, label, args)
            )
        except RuntimeError as exc:
            log.error("%s failed: %s", label, exc)
            served[label] = {t.name: {"error": str(exc)[-1500:]} for t in TASKS}

    tasks_out: dict[str, Any] = {}
    for t in TASKS:
        ip = in_proc[t.name]
        g = gflop_per_text(t, ip["tokens_per_row"])
        systems = {label: served[label].get(t.name, {}) for label in served}
        c_hi = max(concurrencies_for(t, st, "float32", True))
        fp32 = point(systems, "hubless-torch-fp32", c_hi)
        onnx = point(systems, "hubless-onnx", c_hi)
        tasks_out[t.name] = {
            "model": t.model,
            "gflop_per_text": g,
            "in_process": ip,
            "onnx_artifact": onnx_artifacts.get(t.model),
            "systems": systems,
            "headline_concurrency": c_hi,
            "server_fp32_texts_s": fp32,
            "server_onnx_texts_s": onnx,
            "server_onnx_vs_torch_fp32": ratio(onnx, fp32),
            "server_bf16_texts_s": point(systems, "hubless-torch-bf16", c_hi),
            "in_process_texts_s": ip["batched_fp32_texts_s"],
            "server_fp32_vs_in_process": ratio(fp32, ip["batched_fp32_texts_s"]),
            "mfu_server_fp32": None if fp32 is None else fp32 * g / gemm["float32"],
            "mfu_in_process_fp32": ip["batched_fp32_texts_s"] * g / gemm["float32"],
        }
    results = {
        "suite": "classification",
        "started": started,
        "finished": now_utc(),
        "machine": machine,
        "settings": {
            "duration_s": st.duration_s,
            "warmup_s": st.warmup_s,
            "concurrency": st.concurrency,
            "heavy_concurrency": st.heavy_concurrency(),
            "zero_shot_labels": ZERO_SHOT_LABELS,
            "quick": st.quick,
            "server_args": st.server_args,
        },
        "gemm_gflops": {"float32": gemm["float32"], "bfloat16": gemm["bfloat16"]},
        "bf16_native": native,
        "tasks": tasks_out,
        "targets": [
            target(
                f"{name}: hubless-onnx / hubless-torch-fp32 (c={t['headline_concurrency']})",
                t["server_onnx_vs_torch_fp32"],
                1.25,
            )
            for name, t in tasks_out.items()
        ],
    }
    write_json(st.json_dir / "classification.json", results)
    plot_throughput(
        st.json_dir / "classification.png",
        f"full-size classification models, 1 text/request, {started[:10]}",
        {
            f"{t} {label}": {int(c): p["items_per_s"] for c, p in rec.get("points", {}).items()}
            for t, tr in tasks_out.items()
            for label, rec in tr["systems"].items()
        },
        {f"{t} in-process fp32": tr["in_process_texts_s"] for t, tr in tasks_out.items()},
        unit="texts/s",
    )
    write_markdown(st.json_dir / "classification.md", markdown(results))
    return results


def markdown(r: dict[str, Any]) -> str:
    gemm = r["gemm_gflops"]
    rows: list[list[Any]] = []
    for name, t in r["tasks"].items():
        ip, g = t["in_process"], t["gflop_per_text"]
        base = ip["batched_fp32_texts_s"]
        rows.append([name, f"in-process fp32, batch {ip['batch']}", "—", base, "—", "—", "—",
                     1.0, base * g / gemm["float32"],
                     ip.get("batched_fp32_cpu_ms_per_text", "—")])  # fmt: skip
        if ip["batched_bf16_texts_s"] is not None:
            b16 = ip["batched_bf16_texts_s"]
            rows.append([name, f"in-process bf16 autocast, batch {ip['batch']}", "—", b16, "—",
                         "—", "—", b16 / base, b16 * g / gemm["bfloat16"], "—"])  # fmt: skip
        sc = ip["single_call"]
        rows.append([name, "in-process, 1 text per call", 1, sc["texts_s"], sc["p50_ms"],
                     sc["p95_ms"], sc["p99_ms"], sc["texts_s"] / base,
                     sc["texts_s"] * g / gemm["float32"], "—"])  # fmt: skip
        for label, rec in t["systems"].items():
            if "points" not in rec:
                why = rec.get("skipped") or "could not run: " + rec.get("error", "?")[:160]
                rows.append([name, label, "—", why, "", "", "", "", "", ""])
                continue
            peak = gemm["bfloat16"] if "bf16" in label else gemm["float32"]
            for c, p in rec["points"].items():
                s = p["items_per_s"]
                rows.append([name, label, c, s, p["p50_ms"], p["p95_ms"], p["p99_ms"],
                             s / base, s * g / peak,
                             p.get("server_cpu_ms_per_item", "—")])  # fmt: skip
    table = md_table(
        ["task", "system", "clients", "texts/s", "p50 ms", "p95 ms", "p99 ms",
         "x in-process fp32", "MFU", "CPU-ms per text"],
        rows,
    )  # fmt: skip
    parity = md_table(
        ["model", "ONNX artifact (hubless-optimize): parity, or why none"],
        [[t["model"], str((t.get("onnx_artifact") or {}).get("parity")
                          or (t.get("onnx_artifact") or {}).get("error"))]
         for t in r["tasks"].values()],
    )  # fmt: skip
    return (
        f"\n### Classification (full-size random-weight models), {r['started']}, "
        f"{r['machine']['cpu']}, {r['machine']['cores']} cores; GEMM fp32 "
        f"{fmt(gemm['float32'], 0)} / bf16 {fmt(gemm['bfloat16'], 0)} GFLOP/s\n\n{table}\n\n"
        f"{parity}\n\nTargets:\n\n{targets_table(r.get('targets', []))}\n"
    )
