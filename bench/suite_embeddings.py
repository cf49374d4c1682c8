"""Embeddings suite: hubless on ONNX Runtime and on PyTorch (fp32/bf16) vs in-process
sentence-transformers and in-process ONNX Runtime, one-request-at-a-time serving, a null gRPC
server (the serving floor) and peers.

All systems serve the real all-MiniLM-L6-v2 and get the same sentences (~12 words, ~18
tokens), one sentence per request, from N closed-loop clients; hubless-torch fp32/bf16 and
the null server also at the request shapes of ``--shapes`` (``shapes.py``: 64 clients x 1
sentence, 8 x 32; efficiency against in-process at the same precision). ``--smoke`` (CI)
measures hubless on both backends and the in-process references only, a second per point.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from hubless.v1 import embeddings_pb2, embeddings_pb2_grpc, models_pb2, models_pb2_grpc
from hubless_fakehub.real_models import real_minilm_dir

from . import common, peers, shapes
from .common import hubless, point, profiled, ratio, system_record
from .inprocess import InProcess, InProcessOrt, ensure_onnx, min_cosine
from .loadgen import (
    LoadResult,
    grpc_channel_factory,
    grpc_unary,
    http_json,
    process_tree_cpu,
    sweep,
)
from .procs import BENCH_DIR, ServerProcess, free_port, running
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
from .volume import ensure_minilm_volume
from .workload import (
    TransformerShape,
    flops_per_token,
    make_sentences,
)

log = logging.getLogger("bench")

MINILM = TransformerShape(hidden=384, layers=6, ffn=1536, vocab=30522)
EMBED_METHOD = "/hubless.v1.EmbeddingsService/Embed"
N_SENTENCES = 1024
N_CHECK = 64  # sentences embedded once per system for the accuracy check (bf16 can be slow)
MINILM_NAME = "all-minilm-l6-v2"
ORT_BATCH = 64  # in-process ONNX Runtime batches: hubless's --max-batch-size


# ---- systems under load -----------------------------------------------------------------


async def grpc_embed_check(target_addr: str, sentences: list[str]) -> np.ndarray:
    """Embed ``sentences`` through the server (32 per request) and return the vectors."""
    channel, close = await grpc_channel_factory(target_addr)
    try:
        stub = embeddings_pb2_grpc.EmbeddingsServiceStub(channel)
        vecs: list[list[float]] = []
        for i in range(0, len(sentences), 32):
            resp = await stub.Embed(embeddings_pb2.EmbedRequest(texts=sentences[i : i + 32]))
            if resp.dimension != 384 or len(resp.embeddings) != len(sentences[i : i + 32]):
                raise RuntimeError(f"unexpected answer: dimension {resp.dimension}")
            vecs += [list(e.values) for e in resp.embeddings]
        return np.asarray(vecs, dtype=np.float32)
    finally:
        await close()


async def grpc_sweep(
    server: ServerProcess, sentences: list[str], st: Settings
) -> dict[int, LoadResult]:
    payloads = [embeddings_pb2.EmbedRequest(texts=[s]).SerializeToString() for s in sentences]

    async def make() -> tuple[Any, Any]:
        channel, close = await grpc_channel_factory(server.target)
        return grpc_unary(channel, EMBED_METHOD, payloads), close

    cpu = process_tree_cpu(server.proc.pid)
    return await sweep(make, st.concurrency, st.duration_s, st.warmup_s, server.name, cpu)


async def http_sweep(
    server: ServerProcess, bodies: list[dict[str, Any]], st: Settings
) -> dict[int, LoadResult]:
    url = str(server.extra["url"])

    async def make() -> tuple[Any, Any]:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=120),
        )

        async def close() -> None:
            await session.close()

        return http_json(session, url, bodies), close

    cpu = process_tree_cpu(server.proc.pid)
    return await sweep(make, st.concurrency, st.duration_s, st.warmup_s, server.name, cpu)


def variant(
    volume: Path, st: Settings, label: str, extra: list[str]
) -> Callable[[], contextlib.AbstractContextManager[ServerProcess]]:
    """hubless-serve fp32 with ``extra`` arguments after the suite's own."""
    with_extra = dataclasses.replace(st, server_args=[*st.server_args, *extra])
    return lambda: hubless(volume, "float32", with_extra, ["embedding"], name=label)


@contextlib.contextmanager
def null_grpc() -> Iterator[ServerProcess]:
    """The null Embeddings server (bench/null_server.py): the floor of serving a sentence."""
    port = free_port()
    argv = [sys.executable, str(BENCH_DIR / "null_server.py"), "--port", str(port)]
    with running("null-grpc", argv, port=port, timeout_s=60.0) as server:
        server.extra["argv"] = argv
        yield server


async def served_as(target_addr: str) -> tuple[str, str]:
    """What runs all-MiniLM-L6-v2 in a hubless server and at which precision
    (ModelInfo.backend, ModelInfo.precision)."""
    channel, close = await grpc_channel_factory(target_addr)
    try:
        stub = models_pb2_grpc.ModelsServiceStub(channel)
        info = await stub.GetModel(models_pb2.GetModelRequest(name=MINILM_NAME))
        return info.model.backend, info.model.precision
    finally:
        await close()


@contextlib.contextmanager
def per_request() -> Iterator[ServerProcess]:
    port = free_port()
    argv = [
        sys.executable,
        str(BENCH_DIR / "baseline_server.py"),
        "--model-dir",
        str(real_minilm_dir()),
        "--port",
        str(port),
    ]
    with running("per-request", argv, port=port, timeout_s=120.0) as server:
        server.extra["argv"] = argv
        yield server


async def run_grpc_system(
    ctx: Callable[[], contextlib.AbstractContextManager[ServerProcess]],
    sentences: list[str],
    st: Settings,
    reference: np.ndarray | None,
    backend: str = "",
) -> dict[str, Any]:
    with ctx() as server:
        rec: dict[str, Any] = {}
        if backend:  # a fallback to the other backend would measure the wrong thing
            served, rec["precision"] = await served_as(server.target)
            if served != backend:
                raise RuntimeError(f"{server.name} serves on {served or '?'}, not {backend}")
            rec["backend"] = served
            log.info("%s: %s, %s", server.name, served, rec["precision"] or "precision unsaid")
        if reference is not None:
            vecs = await grpc_embed_check(server.target, sentences[: len(reference)])
            rec["min_cosine_vs_fp32"] = min_cosine(reference, vecs)
        n_points = len(st.concurrency) + (len(st.shapes) if server.name in shapes.SYSTEMS else 0)
        async with profiled(server, st, "embeddings", n_points * (st.duration_s + st.warmup_s + 1)):
            points = await grpc_sweep(server, sentences, st)
            if server.name in shapes.SYSTEMS and st.shapes:
                rec["shapes"] = await shapes.measure(server, EMBED_METHOD, sentences, st, points)
        rec.update(system_record(server, points))
        return rec


async def run_peer(name: str, sentences: list[str], st: Settings) -> dict[str, Any]:
    """Install if needed, start, check and load one peer; errors become the record."""
    venv = "infinity" if name.startswith("infinity") else "mlserver"
    why = peers.ensure_venv(venv, st.peer_install)
    if why:
        return {"error": why}
    try:
        if venv == "infinity":
            dtype = "bfloat16" if name.endswith("bf16") else "float32"
            ctx: contextlib.AbstractContextManager[ServerProcess] = peers.infinity(
                real_minilm_dir(), dtype
            )
            body = peers.infinity_body
        else:
            ctx = peers.mlserver(real_minilm_dir(), st.work_dir / "mlserver")
            body = peers.mlserver_body
        with ctx as server:
            async with (
                aiohttp.ClientSession() as session,
                session.post(str(server.extra["url"]), json=body(sentences[0])) as resp,
            ):
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:300]}")
            points = await http_sweep(server, [body(s) for s in sentences], st)
            return system_record(server, points)
    except RuntimeError as exc:
        log_file = peers.LOG_DIR / ("mlserver.log" if venv == "mlserver" else f"{name}.log")
        text = log_file.read_text(errors="replace") if log_file.exists() else str(exc)
        reason = peers.failure_reason(text)
        log.warning("peer %s could not run: %s", name, reason)
        return {"error": f"could not start: {reason}"}


# ---- the suite --------------------------------------------------------------------------


def run(st: Settings) -> dict[str, Any]:
    """Measure everything, write embeddings.json/.png, return the results."""
    started = now_utc()
    machine = machine_info()
    sentences = make_sentences(N_SENTENCES)
    gemm = common.gemm(st.quick)
    if st.quick:
        inproc = InProcess(sentences, 1.0, batch=32)
        ip = inproc.first_pass(16, None, bf16=not st.smoke)
    else:
        inproc = InProcess(sentences, max(4.0, st.duration_s))
        ip = inproc.first_pass(N_CHECK, st.json_dir / "profiles" if st.profile else None)
    gc.collect()
    reference = ip.pop("_reference")
    volume = ensure_minilm_volume(st.work_dir / "minilm-volume")
    ip["onnx_artifact"] = ensure_onnx(volume, [MINILM_NAME], st.threads)[MINILM_NAME]
    ort_ip = InProcessOrt(volume, MINILM_NAME, sentences, inproc.seconds, st.threads)
    ip["onnx_min_cosine_vs_fp32"] = min_cosine(reference, ort_ip.enc(sentences[: len(reference)]))
    ip["onnx_single_call"] = ort_ip.single_call()
    ip["onnx_batched_before"] = ort_ip.batched(ORT_BATCH)
    ip["onnx_batched_cpu_ms_before"] = ort_ip.last_cpu_ms
    log.info(
        "in-process ONNX Runtime: single call p50 %.1f ms; batched %.0f/s, %.2f CPU-ms/sentence",
        ip["onnx_single_call"]["p50_ms"],
        ip["onnx_batched_before"],
        ip["onnx_batched_cpu_ms_before"],
    )

    systems: dict[str, dict[str, Any]] = {}
    torch_args, onnx_args = ["--backend", "torch"], ["--backend", "onnx"]
    plan: list[tuple[str, Callable[[], contextlib.AbstractContextManager[ServerProcess]], str]] = [
        (
            "hubless-onnx",
            lambda: hubless(volume, "float32", st, ["embedding"], "hubless-onnx", onnx_args),
            "onnx",
        ),
        (
            "hubless-torch-fp32",
            lambda: hubless(volume, "float32", st, ["embedding"], "hubless-torch-fp32", torch_args),
            "torch",
        ),
    ]
    if not st.smoke:
        plan += [
            (
                "hubless-torch-bf16",
                lambda: hubless(
                    volume, "bfloat16", st, ["embedding"], "hubless-torch-bf16", torch_args
                ),
                "torch",
            ),
            ("per-request", per_request, ""),
        ]
    if not st.smoke or st.shapes:  # the floor, also of the shapes
        plan.append(("null-grpc", null_grpc, ""))
    for label, extra in st.hubless_variants.items():
        plan.append((label, variant(volume, st, label, extra), ""))
    for name, ctx, backend in plan:
        check = None if name == "null-grpc" else reference
        try:
            systems[name] = asyncio.run(run_grpc_system(ctx, sentences, st, check, backend))
        except RuntimeError as exc:
            log.error("%s failed: %s", name, exc)
            systems[name] = {"error": str(exc)[-1500:]}
    peer_names = ["infinity-emb", "mlserver-huggingface"] if st.peers else []
    for name in peer_names:
        systems[name] = asyncio.run(run_peer(name, sentences, st))
    inproc.second_pass(ip)
    ip["onnx_batched_after"] = ort_ip.batched(ORT_BATCH)
    ip["onnx_batched_cpu_ms_after"] = ort_ip.last_cpu_ms
    ip["onnx_batched_sent_s"] = max(ip["onnx_batched_before"], ip["onnx_batched_after"])
    ip["onnx_batched_cpu_ms_per_sent"] = min(
        ip["onnx_batched_cpu_ms_before"], ip["onnx_batched_cpu_ms_after"]
    )
    del inproc, ort_ip

    results = summarise(st, started, machine, gemm, ip, systems)
    write_json(st.json_dir / "embeddings.json", results)
    series = {
        name: {int(c): p["items_per_s"] for c, p in rec.get("points", {}).items()}
        for name, rec in systems.items()
    }
    plot_throughput(
        st.json_dir / "embeddings.png",
        f"all-MiniLM-L6-v2, 1 sentence/request (~{ip['mean_tokens']:.0f} tokens), "
        f"{machine['cores']} CPU cores, {started[:10]}",
        series,
        {
            f"in-process encode fp32 (batch {ip['batch']})": ip["batched_fp32_sent_s"],
            f"in-process encode bf16 (batch {ip['batch']})": ip["batched_bf16_sent_s"],
        },
    )
    write_markdown(st.json_dir / "embeddings.md", markdown(results))
    if st.shapes:
        data, text = shapes.document(results)
        write_json(st.json_dir / "embeddings-shapes.json", data)
        write_markdown(st.json_dir / "embeddings-shapes.md", text)
    failed = [name for name, rec in systems.items() if "error" in rec]
    if st.smoke and failed:  # CI: a system that does not serve is a failure
        raise RuntimeError(f"smoke: {', '.join(failed)} failed: {systems[failed[0]]['error']}")
    return results


def summarise(
    st: Settings,
    started: str,
    machine: dict[str, Any],
    gemm: dict[str, Any],
    ip: dict[str, Any],
    systems: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Headline keys (at the highest concurrency), MFU, targets, and the full detail."""
    c_hi = max(st.concurrency)
    c_lo = min(st.concurrency)
    tok = ip["mean_tokens"]
    gflop_per_sentence = flops_per_token(MINILM, tok) * tok / 1e9

    def mfu(sent_s: float | None, dtype: str) -> float | None:
        if sent_s is None:
            return None
        return sent_s * gflop_per_sentence / gemm[dtype]

    fp32 = point(systems, "hubless-torch-fp32", c_hi)
    bf16 = point(systems, "hubless-torch-bf16", c_hi)
    onnx = point(systems, "hubless-onnx", c_hi)
    per_req = point(systems, "per-request", c_hi)
    ip32, ip16 = ip["batched_fp32_sent_s"], ip["batched_bf16_sent_s"]
    ip_ort = ip["onnx_batched_sent_s"]
    bf16_cos = systems.get("hubless-torch-bf16", {}).get("min_cosine_vs_fp32")
    onnx_cpu = point(systems, "hubless-onnx", c_hi, "server_cpu_ms_per_item")
    st_cpu = ip["batched_fp32_cpu_ms_per_sent"]
    ort_cpu = ip["onnx_batched_cpu_ms_per_sent"]
    null_cpu = point(systems, "null-grpc", c_hi, "server_cpu_ms_per_item")
    own = None if onnx_cpu is None else onnx_cpu - ort_cpu
    peers_out: dict[str, Any] = {}
    for name in ("infinity-emb", "mlserver-huggingface"):
        if name in systems:
            rec = systems[name]
            peers_out[name] = rec["error"] if "error" in rec else point(systems, name, c_hi)
    best_peer = max((v for v in peers_out.values() if isinstance(v, float)), default=None)
    infinity = peers_out.get("infinity-emb")
    p50_1 = point(systems, "hubless-torch-fp32", c_lo, "p50_ms")
    onnx_p50_1 = point(systems, "hubless-onnx", c_lo, "p50_ms")
    single = ip["single_call"]["p50_ms"]

    targets = [
        target(f"hubless-onnx CPU-ms per sentence / in-process sentence-transformers (c={c_hi})",
               ratio(onnx_cpu, st_cpu), 0.75, "<="),
        target(f"hubless-onnx / in-process sentence-transformers, sentences/s (c={c_hi})",
               ratio(onnx, ip32), 1.0),
        target(f"hubless-onnx / infinity-emb (c={c_hi})",
               ratio(onnx, infinity if isinstance(infinity, float) else None), 2.0),
        target(f"hubless-onnx p50 at c={c_lo} (ms) <= hubless-torch-fp32 p50", onnx_p50_1,
               p50_1 if p50_1 is not None else float("nan"), "<="),
        target(f"hubless own CPU-ms per sentence: hubless-onnx - in-process ONNX Runtime "
               f"(c={c_hi})", own, 0.8, "<="),
        target(f"hubless-torch-fp32 / in-process fp32 (c={c_hi})", ratio(fp32, ip32), 0.9),
        target(f"hubless-torch-bf16 / in-process fp32 (c={c_hi})", ratio(bf16, ip32), 1.8),
        target("hubless-torch-bf16 min cosine vs fp32", bf16_cos, 0.999),
        target("hubless-onnx min cosine vs in-process fp32",
               systems.get("hubless-onnx", {}).get("min_cosine_vs_fp32"), 0.9999),
        target(f"hubless-torch-bf16 / one-request-at-a-time (c={c_hi})", ratio(bf16, per_req), 3.5),
        target(f"hubless-torch-fp32 / one-request-at-a-time (c={c_hi})", ratio(fp32, per_req), 3.5),
        target(f"hubless best / best running peer (c={c_hi})", ratio(
            max(x for x in (fp32, bf16, onnx, 0.0) if x is not None), best_peer), 1.0),
        target(
            f"hubless-torch-fp32 p50 at c={c_lo} (ms) <= 1.2 x in-process single call + 2 ms",
            p50_1, 1.2 * single + 2.0, "<=",
        ),
    ]  # fmt: skip
    by_shape = shapes.summarise(systems, ip, st.shapes)
    if st.shapes:
        targets += by_shape["targets"]
    return {
        "suite": "embeddings",
        "started": started,
        "finished": now_utc(),
        "machine": machine,
        "settings": {
            "duration_s": st.duration_s,
            "warmup_s": st.warmup_s,
            "concurrency": st.concurrency,
            "sentences": N_SENTENCES,
            "mean_tokens": tok,
            "quick": st.quick,
            "server_args": st.server_args,
            "shapes": [shape.label for shape in st.shapes],
        },
        "concurrency_of_headline": c_hi,
        "in_process_sent_s": ip32,
        "in_process_bf16_sent_s": ip16,
        "in_process_onnx_sent_s": ip_ort,
        "server_fp32_sent_s": fp32,
        "server_bf16_sent_s": bf16,
        "server_onnx_sent_s": onnx,
        "per_request_sent_s": per_req,
        "overhead_cpu_ms_per_sentence": {
            "hubless_onnx": onnx_cpu,
            "in_process_onnx": ort_cpu,
            "hubless_own": own,
            "null_grpc_floor": null_cpu,
            "hubless_own_beyond_floor": None if own is None or null_cpu is None else own - null_cpu,
        },
        "bf16_min_cosine": bf16_cos if bf16_cos is not None else ip["bf16_autocast_min_cosine"],
        "gemm_gflops": {"float32": gemm["float32"], "bfloat16": gemm["bfloat16"]},
        "gflop_per_sentence": gflop_per_sentence,
        "mfu": {
            "in_process_fp32": mfu(ip32, "float32"),
            "in_process_bf16": mfu(ip16, "bfloat16"),
            "in_process_onnx": mfu(ip_ort, "float32"),
            "server_fp32": mfu(fp32, "float32"),
            "server_bf16": mfu(bf16, "bfloat16"),
            "server_onnx": mfu(onnx, "float32"),
            "per_request": mfu(per_req, "float32"),
        },
        "cpu_ms_per_sentence": {
            "in_process_fp32": ip["batched_fp32_cpu_ms_per_sent"],
            "in_process_onnx": ort_cpu,
            **{
                name: point(systems, name, c_hi, "server_cpu_ms_per_item")
                for name in systems
                if "points" in systems[name]
            },
        },
        "peers": peers_out,
        "shapes": by_shape,
        "targets": targets,
        "in_process": ip,
        "gemm": gemm,
        "systems": systems,
    }


def markdown(r: dict[str, Any]) -> str:
    """The suite's tables."""
    ip = r["in_process"]
    base = r["in_process_sent_s"]
    g = r["gflop_per_sentence"]
    gemm = r["gemm_gflops"]
    single = ip["single_call"]
    b16, nan = ip["batched_bf16_sent_s"], float("nan")
    b16w = ip.get("batched_bf16_weights_sent_s", nan)
    rows: list[list[Any]] = [
        [f"in-process encode fp32, batch {ip['batch']}", "—", base, "—", "—", "—", 1.0,
         base * g / gemm["float32"], ip["batched_fp32_cpu_ms_per_sent"]],
        [f"in-process encode bf16 autocast, batch {ip['batch']}", "—", b16, "—", "—", "—",
         b16 / base, b16 * g / gemm["bfloat16"], ip["batched_bf16_cpu_ms"]],
        [f"in-process encode bf16 weights, batch {ip['batch']}", "—", b16w, "—", "—", "—",
         b16w / base, b16w * g / gemm["bfloat16"], ip.get("batched_bf16_weights_cpu_ms", nan)],
        ["in-process encode, 1 sentence per call", 1, single["sent_s"], single["p50_ms"],
         single["p95_ms"], single["p99_ms"], single["sent_s"] / base,
         single["sent_s"] * g / gemm["float32"], "—"],
        [f"in-process ONNX Runtime, batch {ORT_BATCH}", "—", ip["onnx_batched_sent_s"], "—",
         "—", "—", ip["onnx_batched_sent_s"] / base,
         ip["onnx_batched_sent_s"] * g / gemm["float32"], ip["onnx_batched_cpu_ms_per_sent"]],
        ["in-process ONNX Runtime, 1 sentence per call", 1, ip["onnx_single_call"]["sent_s"],
         ip["onnx_single_call"]["p50_ms"], ip["onnx_single_call"]["p95_ms"],
         ip["onnx_single_call"]["p99_ms"], ip["onnx_single_call"]["sent_s"] / base,
         ip["onnx_single_call"]["sent_s"] * g / gemm["float32"], "—"],
    ]  # fmt: skip
    for name, rec in r["systems"].items():
        if "error" in rec:
            rows.append([name, "—", "could not run: " + rec["error"][:160], *[""] * 6])
            continue
        peak = gemm["bfloat16"] if "bf16" in name else gemm["float32"]
        for c, p in rec["points"].items():
            s = p["items_per_s"]
            cpu = p.get("server_cpu_ms_per_item")
            rows.append([name, c, s, p["p50_ms"], p["p95_ms"], p["p99_ms"], s / base,
                         s * g / peak, "—" if cpu is None else float(cpu)])  # fmt: skip
    table = md_table(
        ["system", "clients", "sentences/s", "p50 ms", "p95 ms", "p99 ms",
         "x in-process fp32", "MFU", "CPU-ms per sentence"],
        rows,
    )  # fmt: skip
    hub_cos = r["systems"].get("hubless-torch-bf16", {}).get("min_cosine_vs_fp32")
    onnx_cos = r["systems"].get("hubless-onnx", {}).get("min_cosine_vs_fp32")
    over = r["overhead_cpu_ms_per_sentence"]
    parity = ip.get("onnx_artifact", {})
    figures: list[list[Any]] = [
        ["GEMM fp32 / bf16 (GFLOP/s)", f"{fmt(gemm['float32'], 0)} / {fmt(gemm['bfloat16'], 0)}"],
        ["model GFLOP per sentence", fmt(g, 4)],
        [
            "in-process fp32 batched, before / after the servers (sentences/s; max is the "
            "reference)",
            f"{fmt(ip['batched_fp32_before'], 0)} / {fmt(ip['batched_fp32_after'], 0)}",
        ],
        [
            "in-process single call p50, before / after (ms; min is the reference)",
            f"{fmt(ip['single_call_before']['p50_ms'])} / {fmt(ip['single_call_after']['p50_ms'])}",
        ],
        ["tokens per sentence (mean)", fmt(r["settings"]["mean_tokens"], 1)],
        ["bf16 min cosine vs fp32 (hubless)", fmt(hub_cos, 5)],
        ["bf16 min cosine vs fp32 (in-process autocast / bf16 weights)",
         f"{fmt(ip['bf16_autocast_min_cosine'], 5)} / {fmt(ip.get('bf16_weights_min_cosine'), 5)}"],
        ["ONNX min cosine vs in-process fp32 (hubless-onnx / in-process ONNX Runtime)",
         f"{fmt(onnx_cos, 6)} / {fmt(ip['onnx_min_cosine_vs_fp32'], 6)}"],
        ["ONNX artifact (hubless-optimize): parity / size MiB",
         f"{parity.get('parity', parity.get('error'))} / "
         f"{fmt(parity.get('size', 0) / 2**20, 1)}"],
        ["CPU-ms per sentence: hubless-onnx / in-process ONNX Runtime / hubless's own "
         "(the difference) / null gRPC server (the floor)",
         f"{fmt(over['hubless_onnx'], 2)} / {fmt(over['in_process_onnx'], 2)} / "
         f"{fmt(over['hubless_own'], 2)} / {fmt(over['null_grpc_floor'], 2)}"],
    ]  # fmt: skip
    figures += [
        [f"{n} peak RSS (MiB)", fmt(rec["peak_rss_mb"], 0)]
        for n, rec in r["systems"].items()
        if "peak_rss_mb" in rec
    ]
    extra = md_table(["figure", "value"], figures)
    return (
        f"\n### Embeddings (all-MiniLM-L6-v2), {r['started']}, {r['machine']['cpu']}, "
        f"{r['machine']['cores']} cores\n\n{table}\n\n{extra}\n\n{shapes.markdown(r['shapes'])}"
        f"Targets (at {r['concurrency_of_headline']} clients):\n\n{targets_table(r['targets'])}\n"
    )
