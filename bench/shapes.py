"""Request shapes of the embeddings suite: N closed-loop clients x K sentences per request.

Issue 18 measures what serving costs beside the model at two shapes: ``64x1`` (64 clients,
one sentence per request: hubless's own work per request decides) and ``8x32`` (8 clients,
32 sentences per request: the forward decides). Each shape is one load point on
hubless-torch-fp32, hubless-torch-bf16 and the null gRPC server (the floor); a ``Cx1`` shape
whose concurrency the suite's sweep already measured reuses that point (same requests).

The rows, all from one run:

- server CPU-ms per sentence and per request: ``/proc`` of the server's process tree over the
  window (``loadgen.process_tree_cpu``), divided by sentences or requests served;
- in-process CPU-ms per sentence at the same precision: sentence-transformers ``encode`` at
  batch 128 in the benchmark process, fp32, and for bf16 what ``ModelInfo.precision`` says
  the server runs (bf16 weights when its probe kept parity, else autocast on fp32 weights);
- efficiency = in-process CPU-ms/sentence / server CPU-ms/sentence (1.0: serving is free);
- hubless's own CPU per single-sentence request above the null server = server CPU-ms per
  request at 64x1 - in-process CPU-ms per sentence - null server CPU-ms per request at 64x1.

Targets (issue 18): efficiency >= 0.9 at 64x1 and >= 1.0 at 8x32, at fp32 and at bf16; own
CPU above the null server <= 0.5 ms per request.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from hubless.v1 import embeddings_pb2

from .loadgen import (
    CallFn,
    LoadResult,
    grpc_channel_factory,
    grpc_unary,
    load_point,
    process_tree_cpu,
)
from .procs import ServerProcess
from .report import fmt, md_table, target, targets_table
from .settings import Settings, Shape

log = logging.getLogger("bench")

NULL = "null-grpc"
# The hubless systems measured at each shape, by the precision they are compared at.
HUBLESS = {"fp32": "hubless-torch-fp32", "bf16": "hubless-torch-bf16"}
SYSTEMS = frozenset({*HUBLESS.values(), NULL})
EFFICIENCY_TARGETS = {"64x1": 0.9, "8x32": 1.0}
OWN_SHAPE = "64x1"  # the shape of "own CPU per single-sentence request"
OWN_ABOVE_NULL_MS = 0.5


def payloads(sentences: Sequence[str], texts: int) -> list[bytes]:
    """Pre-serialised requests of ``texts`` consecutive sentences (wrapping), one per start."""
    n = len(sentences)
    return [
        embeddings_pb2.EmbedRequest(
            texts=[sentences[(i + j) % n] for j in range(texts)]
        ).SerializeToString()
        for i in range(n)
    ]


async def _connect(
    target: str, method: str, reqs: list[bytes], texts: int
) -> tuple[CallFn, Callable[[], Awaitable[None]]]:
    channel, close = await grpc_channel_factory(target)
    return grpc_unary(channel, method, reqs, items_per_call=texts), close


async def measure(
    server: ServerProcess,
    method: str,
    sentences: Sequence[str],
    st: Settings,
    swept: dict[int, LoadResult],
) -> dict[str, dict[str, Any]]:
    """One load point per shape of ``st.shapes`` on ``server``: label -> record."""
    cpu = process_tree_cpu(server.proc.pid)
    out: dict[str, dict[str, Any]] = {}
    for shape in st.shapes:
        reused = shape.texts == 1 and shape.clients in swept
        if reused:
            res = swept[shape.clients]
        else:
            make = functools.partial(
                _connect, server.target, method, payloads(sentences, shape.texts), shape.texts
            )
            warmup, duration = window(st, shape, swept.values())
            res = await load_point(
                make, shape.clients, duration, warmup, f"{server.name} {shape.label}", cpu
            )
        out[shape.label] = record(res, shape, reused)
    return out


def window(st: Settings, shape: Shape, swept: Iterable[LoadResult]) -> tuple[float, float]:
    """(warm-up, duration) of a shape's point: the settings', stretched where one request
    would take more than a third of the window (short ``--quick`` windows, big requests, a
    busy machine). A request's time is estimated by Little's law from the best throughput
    the sweep measured on this server: clients x sentences per request / sentences per s."""
    best = max((r.items_per_s for r in swept if r.items), default=0.0)
    request_s = shape.clients * shape.texts / best if best > 0 else 0.0
    return max(st.warmup_s, 1.5 * request_s), max(st.duration_s, 3.0 * request_s)


def record(res: LoadResult, shape: Shape, reused: bool = False) -> dict[str, Any]:
    """A load point's figures plus the shape and the server's CPU per request."""
    rec = {"clients": shape.clients, "texts_per_request": shape.texts, **res.to_json()}
    per_item = rec.get("server_cpu_ms_per_item")
    if per_item is not None:
        rec["server_cpu_ms_per_request"] = round(per_item * shape.texts, 3)
    if reused:
        rec["from_concurrency_sweep"] = True
    return rec


def _num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _int(x: float | None) -> int | None:
    return None if x is None else int(x)


def in_process_reference(ip: dict[str, Any], kind: str, precision: str) -> tuple[float | None, str]:
    """In-process CPU-ms per sentence at the precision the server runs, and which it is."""
    batch = ip.get("batch")
    if kind == "fp32":
        return _num(ip.get("batched_fp32_cpu_ms_per_sent")), f"fp32, batch {batch}"
    if precision.startswith("bfloat16 weights"):
        return _num(ip.get("batched_bf16_weights_cpu_ms")), f"bf16 weights, batch {batch}"
    return _num(ip.get("batched_bf16_cpu_ms")), f"bf16 autocast on fp32 weights, batch {batch}"


def summarise(
    systems: dict[str, dict[str, Any]], ip: dict[str, Any], shapes: Sequence[Shape]
) -> dict[str, Any]:
    """Efficiency per shape and precision, the null floor, hubless's own CPU, the targets."""
    labels = [s.label for s in shapes]

    def at(name: str, label: str, key: str) -> float | None:
        return _num(systems.get(name, {}).get("shapes", {}).get(label, {}).get(key))

    null = {
        label: {
            "sent_s": at(NULL, label, "items_per_s"),
            "requests": _int(at(NULL, label, "requests")),
            "cpu_ms_per_sentence": at(NULL, label, "server_cpu_ms_per_item"),
            "cpu_ms_per_request": at(NULL, label, "server_cpu_ms_per_request"),
        }
        for label in labels
    }
    hubless: dict[str, Any] = {}
    for kind, name in HUBLESS.items():
        precision = str(systems.get(name, {}).get("precision", ""))
        ref, ref_name = in_process_reference(ip, kind, precision)
        points = {}
        for label in labels:
            cpu = at(name, label, "server_cpu_ms_per_item")
            points[label] = {
                "sent_s": at(name, label, "items_per_s"),
                "p50_ms": at(name, label, "p50_ms"),
                "requests": _int(at(name, label, "requests")),
                "cpu_ms_per_sentence": cpu,
                "cpu_ms_per_request": at(name, label, "server_cpu_ms_per_request"),
                "efficiency": None if ref is None or not cpu else ref / cpu,
            }
        per_req = points.get(OWN_SHAPE, {}).get("cpu_ms_per_request")
        floor = null.get(OWN_SHAPE, {}).get("cpu_ms_per_request")
        own = None if per_req is None or ref is None else per_req - ref
        hubless[kind] = {
            "system": name,
            "precision": precision or None,
            "in_process_reference": ref_name,
            "in_process_cpu_ms_per_sentence": ref,
            "points": points,
            "own_cpu_ms_per_request": own,
            "own_cpu_ms_above_null": None if own is None or floor is None else own - floor,
        }
    targets = []
    for label, needed in EFFICIENCY_TARGETS.items():
        for kind in HUBLESS:
            value = hubless[kind]["points"].get(label, {}).get("efficiency")
            targets.append(
                target(f"{label} {kind} efficiency: in-process / server CPU-ms per sentence",
                       value, needed)
            )  # fmt: skip
    for kind in HUBLESS:
        targets.append(
            target(f"{OWN_SHAPE} {kind}: hubless's own CPU-ms per request above the null server",
                   hubless[kind]["own_cpu_ms_above_null"], OWN_ABOVE_NULL_MS, "<=")
        )  # fmt: skip
    return {"shapes": labels, "null_grpc": null, "hubless": hubless, "targets": targets}


def markdown(s: dict[str, Any]) -> str:
    """The shapes table and hubless's own CPU above the floor (targets go with the suite's);
    empty when no shape was measured."""
    if not s["shapes"]:
        return ""
    rows: list[list[Any]] = []
    for label in s["shapes"]:
        for h in s["hubless"].values():
            p = h["points"][label]
            short = (h["precision"] or "—").split(" (")[0]  # the whole line is listed below
            rows.append(
                [label, h["system"], short, p["requests"], p["sent_s"], p["p50_ms"],
                 fmt(p["cpu_ms_per_sentence"], 2), fmt(p["cpu_ms_per_request"], 2),
                 fmt(h["in_process_cpu_ms_per_sentence"], 2), fmt(p["efficiency"], 2)]
            )  # fmt: skip
        n = s["null_grpc"][label]
        rows.append(
            [label, NULL + " (the floor)", "—", n["requests"], n["sent_s"], "—",
             fmt(n["cpu_ms_per_sentence"], 3), fmt(n["cpu_ms_per_request"], 3), "—", "—"]
        )  # fmt: skip
    table = md_table(
        ["shape (clients x sentences/request)", "system", "precision (ModelInfo)",
         "requests in window", "sentences/s", "p50 ms", "server CPU-ms/sentence",
         "server CPU-ms/request", "in-process CPU-ms/sentence, same precision", "efficiency"],
        rows,
    )  # fmt: skip
    own_rows = [
        [kind, h["in_process_reference"], fmt(h["points"].get(OWN_SHAPE, {}).get(
            "cpu_ms_per_request"), 2), fmt(h["in_process_cpu_ms_per_sentence"], 2),
         fmt(s["null_grpc"].get(OWN_SHAPE, {}).get("cpu_ms_per_request"), 3),
         fmt(h["own_cpu_ms_above_null"], 2)]
        for kind, h in s["hubless"].items()
    ]  # fmt: skip
    own = md_table(
        ["precision", "in-process reference", f"server CPU-ms/request ({OWN_SHAPE})",
         "- in-process CPU-ms/sentence", f"- null CPU-ms/request ({OWN_SHAPE})",
         "= hubless's own CPU-ms above the null server"],
        own_rows,
    )  # fmt: skip
    said = "".join(
        f"- {h['system']}: ModelInfo.precision `{h['precision']}`\n"
        for h in s["hubless"].values()
        if h["precision"]
    )
    return (
        "By request shape. Efficiency = in-process CPU-ms per sentence (sentence-transformers "
        "`encode`, same precision) / server CPU-ms per sentence (/proc of its process tree).\n\n"
        f"{table}\n\n{own}\n\n" + (f"{said}\n" if said else "")
    )


def document(results: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """``embeddings-shapes.json`` and ``.md``: the shapes, the machine, and their targets."""
    s, m, ip = results["shapes"], results["machine"], results["in_process"]
    data = {
        "suite": "embeddings-shapes",
        "started": results["started"],
        "finished": results["finished"],
        "machine": m,
        "settings": results["settings"],
        "in_process_cpu_ms_per_sentence": {
            "fp32": _num(ip.get("batched_fp32_cpu_ms_per_sent")),
            "bf16_weights": _num(ip.get("batched_bf16_weights_cpu_ms")),
            "bf16_autocast": _num(ip.get("batched_bf16_cpu_ms")),
            "batch": ip.get("batch"),
        },
        "bf16_min_cosine_vs_fp32": {
            "in_process_bf16_weights": _num(ip.get("bf16_weights_min_cosine")),
            "in_process_autocast": _num(ip.get("bf16_autocast_min_cosine")),
            "hubless": results["systems"].get(HUBLESS["bf16"], {}).get("min_cosine_vs_fp32"),
        },
        **s,
        "points": {
            name: rec["shapes"] for name, rec in results["systems"].items() if "shapes" in rec
        },
    }
    st = results["settings"]
    flags = ", ".join(m.get("cpu_flags", [])) or "CPU flags unknown"
    text = (
        f"### Embeddings by request shape (all-MiniLM-L6-v2), {results['started']}, "
        f"{m['cpu']} ({flags}), {m['cores']} cores\n\n"
        f"Windows of {st['duration_s']:g} s after {st['warmup_s']:g} s of warm-up; load "
        f"average at the start {m['loadavg_at_start']} (a shared machine: compare ratios within "
        "this run, not absolute figures).\n\n"
        f"{markdown(s)}Targets (issue 18):\n\n{targets_table(s['targets'])}\n"
    )
    return data, text
