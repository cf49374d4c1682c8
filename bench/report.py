"""Results: JSON files, markdown tables, plots, and the issue's targets."""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hubless_fakehub import procfs

log = logging.getLogger("bench")


def machine_info() -> dict[str, Any]:
    """CPU model, core count and load at the start of a run (runs are noisy: say so)."""
    import torch

    return {
        "cpu": procfs.cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def cpu_flags(wanted: Sequence[str] = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")) -> list[str]:
    """Which of ``wanted`` /proc/cpuinfo lists (what decides fp32 vs bf16 speed); [] if none
    or not Linux."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("flags"):
            present = set(line.partition(":")[2].split())
            return [f for f in wanted if f in present]
    return []


def now_utc() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def fmt(x: Any, digits: int = 1) -> str:
    """A number for a table ('—' for missing/NaN)."""
    if x is None:
        return "—"
    if isinstance(x, float):
        if math.isnan(x):
            return "—"
        return f"{x:,.{digits}f}"
    return str(x)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += [
        "| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows
    ]
    return "\n".join(out)


def target(name: str, value: float | None, threshold: float, op: str = ">=") -> dict[str, Any]:
    """One issue target: met when ``value op threshold``; ``met`` is None when unmeasured."""
    met: bool | None
    if value is None or (isinstance(value, float) and math.isnan(value)):
        met = None
    else:
        met = value >= threshold if op == ">=" else value <= threshold
    return {
        "target": name,
        "value": None if value is None else round(float(value), 4),
        "threshold": round(threshold, 4),
        "op": op,
        "met": met,
    }


def targets_table(targets: Sequence[dict[str, Any]]) -> str:
    rows = [
        [t["target"], fmt(t["value"], 3), f"{t['op']} {fmt(t['threshold'], 3)}",
         {True: "met", False: "**missed**", None: "not measured"}[t["met"]]]
        for t in targets
    ]  # fmt: skip
    return md_table(["target", "measured", "needed", ""], rows)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")
    log.info("wrote %s", path)


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def plot_throughput(
    path: Path,
    title: str,
    series: dict[str, dict[int, float]],
    ceilings: dict[str, float],
    unit: str = "sentences/s",
) -> None:
    """Throughput vs concurrency, one line per system, dashed lines for in-process ceilings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, points in series.items():
        if not points:
            continue
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker="o", label=name)
    for i, (name, value) in enumerate(ceilings.items()):
        if value and not math.isnan(value):
            ax.axhline(value, linestyle="--", linewidth=1, color=f"C{(i + 6) % 10}", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients (1 item per request)")
    ax.set_ylabel(unit)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log.info("wrote %s", path)


def write_markdown(path: Path, text: str) -> None:
    """Print a suite's tables and keep them beside its JSON (for the README)."""
    print(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.lstrip("\n"))
