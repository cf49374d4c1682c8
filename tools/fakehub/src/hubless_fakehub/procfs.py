"""A process's figures from Linux ``/proc``: memory and thread counts, CPU time, thread names,
and the CPU's model. The one reader the benchmarks, the soak and the tests use to watch the
processes they start (``hubless-serve``, the peers).

Every function answers "nothing" rather than raising once the process is gone (NaN, ``-1``, an
empty dict): a figure read at the edge of a window may race the process's exit, and the caller
records what it got.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
from collections.abc import Iterable
from pathlib import Path

PROC = Path("/proc")
MEMORY_FIELDS = ("VmHWM", "VmRSS", "RssAnon", "RssFile")
"""The ``/proc/PID/status`` memory fields the benchmarks report: peak, resident, and the
resident memory's anonymous and file-backed parts."""


def status_fields(pid: int, keys: Iterable[str] | None = None) -> dict[str, float]:
    """Numeric fields of ``/proc/PID/status`` (``keys``, or all of them): memory in kB as the
    kernel writes it, counts (``Threads``) as they are. Empty once the process is gone."""
    wanted = None if keys is None else set(keys)
    out: dict[str, float] = {}
    try:
        text = (PROC / str(pid) / "status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if wanted is not None and key not in wanted:
            continue
        with contextlib.suppress(IndexError, ValueError):
            out[key] = float(rest.split()[0])
    return out


def status_value(pid: int, key: str) -> float:
    """One numeric field of ``/proc/PID/status`` (``VmRSS`` in kB, ``Threads``); NaN when the
    process or the field is absent."""
    return status_fields(pid, (key,)).get(key, math.nan)


def memory_mib(pid: int, keys: Iterable[str] = MEMORY_FIELDS) -> dict[str, float]:
    """Memory fields of ``/proc/PID/status`` in MiB, rounded to 0.1 (absent ones left out)."""
    return {key: round(kb / 1024, 1) for key, kb in status_fields(pid, keys).items()}


def threads(pid: int) -> int:
    """The process's thread count; -1 once it is gone."""
    value = status_value(pid, "Threads")
    return -1 if math.isnan(value) else int(value)


def thread_names(pid: int) -> dict[str, int]:
    """The process's threads counted by name (``/proc/PID/task/*/comm``), sorted by name."""
    names: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for task in (PROC / str(pid) / "task").iterdir():
            with contextlib.suppress(OSError):
                name = (task / "comm").read_text().strip()
                names[name] = names.get(name, 0) + 1
    return dict(sorted(names.items()))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process (all its threads) used so far; NaN once gone."""
    try:
        # The command name (field 2) may hold spaces and parentheses: split after its ")".
        fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return math.nan


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    with contextlib.suppress(OSError):
        for line in (PROC / "cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"
