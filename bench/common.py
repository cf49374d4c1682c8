"""Pieces every suite uses: hubless-serve under test, records, ratios, profiling."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

from .loadgen import LoadResult
from .procs import ServerProcess, free_port, hubless_serve_argv, peak_rss_mb, py_spy, running
from .settings import Settings
from .workload import measure_gemm

log = logging.getLogger("bench")


@contextlib.contextmanager
def hubless(
    volume: Path,
    dtype: str,
    st: Settings,
    tasks: Sequence[str] = (),
    name: str = "",
    args: Sequence[str] = (),
) -> Iterator[ServerProcess]:
    """``hubless-serve`` on ``volume`` serving ``tasks`` (all when empty), with ``args`` (e.g.
    ``--backend onnx``) before the CLI's ``--server-arg`` values, until the block ends."""
    port = free_port()
    extra = [*(["--tasks", ",".join(tasks)] if tasks else []), *args, *st.server_args]
    argv = hubless_serve_argv(volume, port, dtype=dtype, threads=st.threads, extra=extra)
    short = {"float32": "fp32", "bfloat16": "bf16"}.get(dtype, dtype)
    with running(name or f"hubless-{short}", argv, port=port, timeout_s=300.0) as server:
        server.extra["argv"] = argv
        yield server


def system_record(server: ServerProcess, points: dict[int, LoadResult]) -> dict[str, Any]:
    """One system's load points plus how it started and its peak memory."""
    return {
        "points": {str(c): r.to_json() for c, r in points.items()},
        "ready_s": round(server.ready_after_s, 2),
        "peak_rss_mb": round(peak_rss_mb(server), 1),
        "argv": [str(a) for a in server.extra.get("argv", [])],
    }


@contextlib.asynccontextmanager
async def profiled(
    server: ServerProcess, st: Settings, label: str, seconds: float
) -> AsyncIterator[None]:
    """With ``--profile``, a py-spy flame graph of ``server`` while the block runs."""
    if not st.profile:
        yield
        return
    out = st.json_dir / "profiles" / f"{label}-{server.name}.folded"
    with py_spy(server.proc.pid, out, seconds):
        yield


def point(systems: dict[str, Any], name: str, c: int, key: str = "items_per_s") -> float | None:
    """A figure of one load point, or None when that point was not measured."""
    p = systems.get(name, {}).get("points", {}).get(str(c))
    return None if p is None else p.get(key)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or math.isnan(b):
        return None
    return a / b


@functools.cache
def gemm(quick: bool) -> dict[str, Any]:
    """GEMM rates, measured once per process and shared by the suites of one run."""
    return measure_gemm(0.6 if quick else 3.0)


def bf16_native(g: dict[str, Any]) -> bool:
    """Whether bf16 matmuls run at least at half the fp32 rate (AVX512-BF16/AMX CPUs).

    Without native support torch falls back to a reference kernel that is 10-100x slower
    than fp32, and the full-size bf16 points would take minutes each.
    """
    return g["bfloat16"] >= 0.5 * g["float32"]


def window(st: Settings, request_s: float) -> tuple[float, float]:
    """(warm-up, duration) for a load point whose requests take about ``request_s``: the
    warm-up lets the first requests finish, the window holds at least two of them."""
    if st.quick:
        return st.warmup_s * 3, st.duration_s
    return max(st.warmup_s * 3, 1.2 * request_s), max(st.duration_s, 2.5 * request_s)
