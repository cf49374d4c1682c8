"""The soak's environment: the fake hub, the real fetcher, the real server process, and what
is read back from them (``/metrics``, ``/proc``). Everything listens on 127.0.0.1 only."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_CACHE = REPO_ROOT / ".cache" / "tiny-models"
BIN = Path(sys.executable).parent
START_TIMEOUT_S = 300.0
FETCH_TIMEOUT_S = 600.0
HOST = "127.0.0.1"


class SoakError(Exception):
    """The environment could not be set up (the message says which step and why)."""


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def hf_env(hf_home: Path, **extra: str) -> dict[str, str]:
    """The environment of a child: no inherited HF_* settings, a private HF_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(
        HF_HOME=str(hf_home),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        TOKENIZERS_PARALLELISM="false",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        **extra,
    )
    return env


@contextlib.contextmanager
def hub_mirror() -> Iterator[object]:
    """The fake hub on 127.0.0.1: the real all-MiniLM-L6-v2 plus the tiny stand-ins of the
    other catalog models (as ``scripts/demo.py``)."""
    from hubless_fakehub import HubMirror
    from hubless_fakehub.real_models import REAL_MINILM_REPO_ID, real_minilm_dir
    from hubless_fakehub.tiny import cached_tiny_models

    tiny = cached_tiny_models(TINY_CACHE)
    repos = {model.repo_id: model.path for model in tiny.values()}
    repos[REAL_MINILM_REPO_ID] = real_minilm_dir()
    with HubMirror(repos, host=HOST) as mirror:
        yield mirror


def fetch_argv(command: str, models_dir: Path, *args: str) -> list[str]:
    """argv of ``hubless-fetch COMMAND -q --models-dir DIR ARGS``."""
    return [str(BIN / "hubless-fetch"), command, "-q", "--models-dir", str(models_dir), *args]


def run_fetcher(
    command: str,
    models_dir: Path,
    hf_home: Path,
    *args: str,
    endpoint: str = "",
    timeout: float = FETCH_TIMEOUT_S,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run one ``hubless-fetch`` command to its end; output captured."""
    extra = {"HF_ENDPOINT": endpoint} if endpoint else {"HF_HUB_OFFLINE": "1"}
    extra.update(env or {})
    return subprocess.run(
        fetch_argv(command, models_dir, *args),
        env=hf_env(hf_home, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# ---- the server ----------------------------------------------------------------------------


@dataclass
class ServerProc:
    """A running ``hubless-serve``."""

    proc: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    log_path: Path
    grace_period: float
    threads_at_start: int = -1  # once SERVING

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def target(self) -> str:
        return f"{HOST}:{self.port}"

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def log_count(self, needle: str) -> int:
        """Lines of the server log containing ``needle``."""
        try:
            return sum(
                needle in line for line in self.log_path.read_text(errors="replace").splitlines()
            )
        except OSError:
            return 0

    def log_time(self, needle: str) -> float | None:
        """Unix time of the last log line containing ``needle`` (its leading ISO UTC time)."""
        from datetime import datetime

        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return None
        for line in reversed(lines):
            if needle in line:
                try:
                    stamp = line.split(" ", 1)[0].replace("Z", "+00:00")
                    return datetime.fromisoformat(stamp).timestamp()
                except ValueError:
                    return None
        return None

    # -- /proc --
    def status_value(self, key: str) -> float:
        """A field of ``/proc/PID/status`` (``VmRSS`` in kB, ``Threads``); NaN once gone."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return float(line.split()[1])
        except OSError:
            pass
        return float("nan")

    def rss_mib(self) -> float:
        return self.status_value("VmRSS") / 1024.0

    def threads(self) -> int:
        value = self.status_value("Threads")
        return -1 if value != value else int(value)

    def thread_names(self) -> dict[str, int]:
        """Threads of the server by name (``/proc/PID/task/*/comm``)."""
        names: dict[str, int] = {}
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{self.pid}/task").iterdir():
                with contextlib.suppress(OSError):
                    name = (task / "comm").read_text().strip()
                    names[name] = names.get(name, 0) + 1
        return dict(sorted(names.items()))

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server process so far."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

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
    free port) and wait until the whole server reports SERVING."""
    from hubless_client import Client, HublessError

    port_file = workdir / "server.port"
    port_file.unlink(missing_ok=True)
    log_path = workdir / "server.log"
    metrics_port = free_port()
    argv = [
        str(BIN / "hubless-serve"),
        "--models-dir",
        str(models_dir),
        "--host",
        HOST,
        "--port",
        "0",
        "--port-file",
        str(port_file),
        "--metrics-port",
        str(metrics_port),
        "--grace-period",
        str(grace_period),
        *extra,
    ]
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            argv,
            env=hf_env(workdir / "server-hf-home", HF_HUB_OFFLINE="1"),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the soak only; it stops the server
        )
    server = ServerProc(proc, 0, metrics_port, log_path, grace_period)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None:
                raise SoakError(f"hubless-serve exited {proc.returncode}:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                raise SoakError(f"hubless-serve wrote no port file:\n{server.log_tail()}")
            time.sleep(0.1)
        server.port = int(port_file.read_text().strip())
        with Client(server.target, timeout=10, retries=False) as client:
            try:
                client.wait_until_serving(timeout=max(deadline - time.monotonic(), 1.0))
            except HublessError as exc:
                raise SoakError(f"server not ready: {exc}\n{server.log_tail()}") from exc
        server.threads_at_start = server.threads()
    except BaseException:
        stop_server(server)
        raise
    return server


def stop_server(server: ServerProc, wait_s: float | None = None) -> int | None:
    """SIGTERM the server and wait (its grace period + 15 s), then SIGKILL; its exit code."""
    proc = server.proc
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(server.grace_period + 15 if wait_s is None else wait_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"
