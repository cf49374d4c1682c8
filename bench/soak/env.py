"""The soak's environment: the fake hub, the real fetcher, the real server process, and what
is read back from them (``/metrics``, ``/proc``). Everything listens on 127.0.0.1 only.

The offline stack (child environment, fake hub, fetcher, server start and stop) is
:mod:`hubless_fakehub.stack`, shared with ``make demo``, the end-to-end tests and the
benchmarks; ``/proc`` is read with :mod:`hubless_fakehub.procfs`."""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from hubless_fakehub import procfs
from hubless_fakehub.stack import HOST, ServerProcess, StackError, free_port, offline_mirror
from hubless_fakehub.stack import run_fetcher as run_fetcher
from hubless_fakehub.stack import start_server as stack_start_server

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_CACHE = REPO_ROOT / ".cache" / "tiny-models"
START_TIMEOUT_S = 300.0


class SoakError(Exception):
    """The environment could not be set up (the message says which step and why)."""


@contextlib.contextmanager
def hub_mirror() -> Iterator[object]:
    """The fake hub on 127.0.0.1: the real all-MiniLM-L6-v2 plus the tiny stand-ins of the
    other catalog models (:func:`hubless_fakehub.stack.offline_mirror`, as ``make demo``)."""
    with offline_mirror(TINY_CACHE, host=HOST) as mirror:
        yield mirror


# ---- the server ----------------------------------------------------------------------------


@dataclass
class ServerProc:
    """A running ``hubless-serve`` (``process``, the stack's) and what the soak reads back from
    it: its log, ``/proc`` figures and ``/metrics``."""

    process: ServerProcess
    metrics_port: int
    grace_period: float
    threads_at_start: int = -1  # once SERVING

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.process.proc

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def target(self) -> str:
        return self.process.target

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def log_tail(self, n: int = 30) -> str:
        return self.process.log_tail(n)

    def log_count(self, needle: str) -> int:
        """Lines of the server log containing ``needle``."""
        return sum(needle in line for line in self.process.log_text().splitlines())

    def log_time(self, needle: str) -> float | None:
        """Unix time of the last log line containing ``needle`` (its leading ISO UTC time)."""
        for line in reversed(self.process.log_text().splitlines()):
            if needle in line:
                try:
                    stamp = line.split(" ", 1)[0].replace("Z", "+00:00")
                    return datetime.fromisoformat(stamp).timestamp()
                except ValueError:
                    return None
        return None

    # -- /proc --
    def rss_mib(self) -> float:
        return procfs.status_value(self.pid, "VmRSS") / 1024.0

    def anon_mib(self) -> float:
        return procfs.status_value(self.pid, "RssAnon") / 1024.0

    def threads(self) -> int:
        return procfs.threads(self.pid)

    def thread_names(self) -> dict[str, int]:
        """Threads of the server by name."""
        return procfs.thread_names(self.pid)

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server process so far."""
        return procfs.cpu_seconds(self.pid)

    # -- /metrics --
    def metrics_text(self, timeout: float = 5.0) -> str:
        url = f"http://{HOST}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # loopback only
            return resp.read().decode("utf-8", errors="replace")

    def metric_samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        """Samples of one metric: (labels, value) for each line ``name{...} value``."""
        return parse_metric(self.metrics_text(), name)

    def queue_depth(self) -> dict[str, float]:
        """``hubless_queue_depth`` per model."""
        return {
            labels.get("model", ""): v for labels, v in self.metric_samples("hubless_queue_depth")
        }

    def wait_queue_empty(self, timeout_s: float) -> tuple[float, float, dict[str, float]]:
        """Poll /metrics until every model's queue depth is 0 or ``timeout_s`` passes.

        Returns (total depth at the end, seconds waited, depth per model at the end)."""
        t0 = time.monotonic()
        while True:
            try:
                depth = self.queue_depth()
            except OSError as exc:
                raise SoakError(f"/metrics unreadable: {exc}") from exc
            total = sum(depth.values())
            waited = time.monotonic() - t0
            if total == 0 or waited >= timeout_s:
                return total, waited, depth
            time.sleep(0.1)

    def requests_by_code(self, method_suffix: str = "") -> dict[str, float]:
        """``hubless_requests_total`` summed per code (methods ending with ``method_suffix``)."""
        out: dict[str, float] = {}
        for labels, value in self.metric_samples("hubless_requests_total"):
            if labels.get("method", "").endswith(method_suffix):
                code = labels.get("code", "?")
                out[code] = out.get(code, 0.0) + value
        return out

    def dropped(self) -> dict[str, float]:
        """``hubless_dropped_items_total`` summed per reason."""
        out: dict[str, float] = {}
        for labels, value in self.metric_samples("hubless_dropped_items_total"):
            reason = labels.get("reason", "?")
            out[reason] = out.get(reason, 0.0) + value
        return out


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metric(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Samples of metric ``name`` in Prometheus text format."""
    out: list[tuple[dict[str, str], float]] = []
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = _SAMPLE.match(line)
        if not m or m.group(1) != name:
            continue
        labels = dict(_LABEL.findall(m.group(3) or ""))
        try:
            out.append((labels, float(m.group(4))))
        except ValueError:
            continue
    return out


def diff_counts(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    """Per-key increase of a counter (keys that did not move are left out)."""
    out = {k: round(v - before.get(k, 0.0)) for k, v in after.items()}
    return {k: v for k, v in sorted(out.items()) if v}


def start_server(
    models_dir: Path, workdir: Path, *, grace_period: float, extra: Sequence[str] = ()
) -> ServerProc:
    """Start ``hubless-serve`` on 127.0.0.1 (gRPC port picked by the server, /metrics on a
    free port) and wait until the whole server reports SERVING
    (:func:`hubless_fakehub.stack.start_server`)."""
    metrics_port = free_port()
    args = ["--metrics-port", str(metrics_port), "--grace-period", str(grace_period), *extra]
    try:
        started = stack_start_server(models_dir, workdir, *args, timeout=START_TIMEOUT_S)
    except StackError as exc:
        raise SoakError(str(exc)) from exc
    server = ServerProc(started, metrics_port, grace_period)
    server.threads_at_start = server.threads()
    return server


def stop_server(server: ServerProc, wait_s: float | None = None) -> int | None:
    """SIGTERM the server and wait (its grace period + 15 s), then SIGKILL; its exit code."""
    return server.process.stop(server.grace_period + 15 if wait_s is None else wait_s)
