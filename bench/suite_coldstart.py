"""Cold start and memory: ``hubless-serve`` process start -> overall health SERVING, with all
full-size catalog models on the volume, and the process's peak resident memory (VmHWM).

The volume's files are usually in the page cache (the suite built or read them shortly
before); the first run is reported separately from the repeats for that reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc

from hubless.v1 import (
    conversation_pb2,
    conversation_pb2_grpc,
    embeddings_pb2,
    embeddings_pb2_grpc,
    emotion_pb2,
    emotion_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    sentiment_pb2,
    sentiment_pb2_grpc,
    summarization_pb2,
    summarization_pb2_grpc,
    zero_shot_pb2,
    zero_shot_pb2_grpc,
)
from hubless_fakehub import procfs

from .common import hubless
from .fullsize_models import SPECS, ensure_fullsize_volume
from .report import (
    fmt,
    machine_info,
    md_table,
    now_utc,
    target,
    targets_table,
    write_json,
    write_markdown,
)
from .settings import Settings

N = len(SPECS)  # the catalog's models, all on the full-size volume
log = logging.getLogger("bench")

TARGET_S = 20.0


async def touch_every_model(target_addr: str, models: list[dict[str, Any]]) -> float:
    """One small request to every READY model, so its weights are really paged in (the
    server may map safetensors lazily); returns the seconds it took."""
    text = "The support agent patiently explained the delayed shipment."
    t0 = time.perf_counter()
    async with grpc.aio.insecure_channel(target_addr) as ch:
        for m in models:
            if m["state"] != "MODEL_STATE_READY":
                continue
            name, task = m["name"], m["task"]
            if task == "emotion":
                req: Any = emotion_pb2.DetectEmotionRequest(texts=[text], model=name)
                await emotion_pb2_grpc.EmotionServiceStub(ch).DetectEmotion(req, timeout=120)
            elif task == "sentiment":
                req = sentiment_pb2.AnalyzeSentimentRequest(texts=[text], model=name)
                await sentiment_pb2_grpc.SentimentServiceStub(ch).AnalyzeSentiment(req, timeout=120)
            elif task == "zero-shot":
                req = zero_shot_pb2.ClassifyZeroShotRequest(
                    texts=[text], candidate_labels=["food", "travel"], model=name
                )
                await zero_shot_pb2_grpc.ZeroShotServiceStub(ch).ClassifyZeroShot(req, timeout=120)
            elif task == "summarization":
                req = summarization_pb2.SummarizeRequest(texts=[text], max_length=4, model=name)
                await summarization_pb2_grpc.SummarizationServiceStub(ch).Summarize(
                    req, timeout=120
                )
            elif task == "conversation":
                req = conversation_pb2.ReplyRequest(turns=[text], max_new_tokens=4, model=name)
                await conversation_pb2_grpc.ConversationServiceStub(ch).Reply(req, timeout=120)
            elif task == "embedding":
                req = embeddings_pb2.EmbedRequest(texts=[text], model=name)
                await embeddings_pb2_grpc.EmbeddingsServiceStub(ch).Embed(req, timeout=120)
    return time.perf_counter() - t0


async def list_models(target_addr: str) -> list[dict[str, Any]]:
    async with grpc.aio.insecure_channel(target_addr) as channel:
        resp = await models_pb2_grpc.ModelsServiceStub(channel).ListModels(
            models_pb2.ListModelsRequest(), timeout=10
        )
    return [
        {
            "name": m.name,
            "task": m.task,
            "state": models_pb2.ModelState.Name(m.state),
            "dtype": m.dtype,
            "device": m.device,
            "load_seconds": round(m.load_seconds, 2),
            "size_mb": round(m.size_bytes / 2**20, 1),
            "error": m.error,
        }
        for m in resp.models
    ]


def one_start(st: Settings, dtype: str, label: str) -> dict[str, Any]:
    volume = st.work_dir / "fullsize-volume"
    with hubless(volume, dtype, st, name=label) as server:
        models = asyncio.run(list_models(server.target))
        at_ready = procfs.memory_mib(server.pid)
        touch_s = asyncio.run(touch_every_model(server.target, models))
        after = procfs.memory_mib(server.pid)
        rec = {
            "dtype_flag": dtype,
            "ready_s": round(server.ready_after_s, 2),
            "memory_at_ready_mb": at_ready,
            "first_request_every_model_s": round(touch_s, 2),
            "memory_after_one_request_per_model_mb": after,
            "peak_rss_mb": after.get("VmHWM", float("nan")),
            "ready_models": sum(m["state"] == "MODEL_STATE_READY" for m in models),
            "models": models,
            "argv": [str(a) for a in server.extra["argv"]],
        }
    log.info(
        "%s: SERVING after %.2f s, %d models ready, RSS %.0f MiB at ready, peak %.0f MiB "
        "after one request per model",
        label,
        rec["ready_s"],
        rec["ready_models"],
        at_ready.get("VmRSS", float("nan")),
        rec["peak_rss_mb"],
    )
    return rec


def run(st: Settings) -> dict[str, Any]:
    started = now_utc()
    machine = machine_info()
    ensure_fullsize_volume(st.work_dir / "fullsize-volume")
    plan = [("auto", "start-1-auto"), ("auto", "start-2-auto")]
    if not st.quick:
        plan += [("auto", "start-3-auto"), ("bfloat16", "start-bf16")]
    runs: dict[str, Any] = {}
    for dtype, label in plan:
        try:
            runs[label] = one_start(st, dtype, label)
        except RuntimeError as exc:
            log.error("%s failed: %s", label, exc)
            runs[label] = {"error": str(exc)[-1500:]}
    auto = [r for k, r in runs.items() if "auto" in k and "ready_s" in r]
    worst = max((r["ready_s"] for r in auto), default=None)
    peak = max((r["peak_rss_mb"] for r in auto), default=None)
    ready_models = float(min((r["ready_models"] for r in auto), default=0))
    results = {
        "suite": "coldstart",
        "started": started,
        "finished": now_utc(),
        "machine": machine,
        "ready_s_worst": worst,
        "ready_s_each": [r["ready_s"] for r in auto],
        "peak_rss_mb": peak,
        "targets": [
            target(f"start to SERVING, all {N} full-size models (s, worst)", worst, TARGET_S, "<="),
            target(f"all {N} models READY", ready_models, float(N)),
        ],
        "runs": runs,
    }
    write_json(st.json_dir / "coldstart.json", results)
    write_markdown(st.json_dir / "coldstart.md", markdown(results))
    return results


def markdown(r: dict[str, Any]) -> str:
    rows = []
    for label, run in r["runs"].items():
        if "error" in run:
            rows.append([label, "—", "could not start: " + run["error"][-160:], "", "", "", "", ""])
            continue
        dtypes = sorted({m["dtype"] for m in run["models"] if m["dtype"]})
        mem0 = run["memory_at_ready_mb"]
        rows.append([label, "/".join(dtypes) or run["dtype_flag"], run["ready_s"],
                     f"{run['ready_models']}/{N}", mem0.get("VmRSS"), run["peak_rss_mb"],
                     run["memory_after_one_request_per_model_mb"].get("RssAnon"),
                     run["first_request_every_model_s"]])  # fmt: skip
    table = md_table(
        ["run", "dtype", "start to SERVING (s)", "models READY", "RSS at SERVING MiB",
         "peak RSS after 1 request/model MiB", "of which anonymous MiB",
         f"first request to all {N} (s)"],
        rows,
    )  # fmt: skip
    loads: list[list[Any]] = []
    first = next((run for run in r["runs"].values() if "models" in run), None)
    if first:
        loads = [[m["name"], m["task"], fmt(m["size_mb"], 0), m["load_seconds"]]
                 for m in first["models"]]  # fmt: skip
    per_model = md_table(["model", "task", "MiB on disk", "load s (first run)"], loads)
    return (
        f"\n### Cold start, all {N} full-size models, {r['started']}, {r['machine']['cpu']}\n\n"
        f"{table}\n\n{per_model}\n\n{targets_table(r['targets'])}\n"
    )
