"""Start servers under test as subprocesses, wait until they serve, read their memory."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

log = logging.getLogger("bench")

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
LOG_DIR = BENCH_DIR / ".logs"


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A server process under test."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    started_at: float
    ready_after_s: float = float("nan")
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def peak_rss_mb(self) -> float:
        """Peak resident memory (VmHWM) of the process, in MiB."""
        return _status_kb(self.proc.pid, "VmHWM") / 1024.0

    def rss_mb(self) -> float:
        """Current resident memory (VmRSS) of the process, in MiB."""
        return _status_kb(self.proc.pid, "VmRSS") / 1024.0

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _status_kb(pid: int, key: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def grpc_serving(target: str, service: str = "", timeout: float = 1.0) -> bool:
    """True when the gRPC health service reports ``service`` SERVING."""
    try:
        with grpc.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
            return resp.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True when GET ``url`` answers 2xx."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError):
        return False


def start(
    name: str,
    argv: Sequence[str],
    *,
    port: int,
    env: dict[str, str] | None = None,
    ready: str = "grpc",
    ready_url: str = "",
    timeout_s: float = 180.0,
    poll_s: float = 0.05,
) -> Server:
    """Start ``argv`` and wait until it serves (``ready``: "grpc" health or "http" GET).

    Raises ``RuntimeError`` with the log tail if the process exits or is not ready in time.
    """
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{name}.log"
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    log.info("starting %s: %s", name, " ".join(argv))
    fh = open(log_path, "wb")  # noqa: SIM115 - owned by the child for its lifetime
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        list(argv), stdout=fh, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
    )
    fh.close()
    server = Server(name=name, proc=proc, port=port, log_path=log_path, started_at=t0)
    target = f"127.0.0.1:{port}"
    deadline = t0 + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{name} exited with {proc.returncode} before serving:\n{server.log_tail()}"
            )
        ok = grpc_serving(target, timeout=0.5) if ready == "grpc" else http_ok(ready_url, 0.5)
        if ok:
            server.ready_after_s = time.perf_counter() - t0
            log.info("%s serving after %.2f s", name, server.ready_after_s)
            return server
        if time.perf_counter() > deadline:
            stop(server)
            raise RuntimeError(f"{name} not serving after {timeout_s:.0f} s:\n{server.log_tail()}")
        time.sleep(poll_s)


def stop(server: Server, grace_s: float = 10.0) -> None:
    """SIGTERM the server's process group, SIGKILL it after ``grace_s``."""
    if server.proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.proc.pid, signal.SIGTERM)
    try:
        server.proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(5)


@contextlib.contextmanager
def running(name: str, argv: Sequence[str], **kwargs: object) -> Iterator[Server]:
    """``start`` ... ``stop`` as a context manager."""
    server = start(name, argv, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        stop(server)


def venv_python() -> str:
    """The interpreter running the benchmark (the main .venv)."""
    return sys.executable


def hubless_serve_argv(
    models_dir: Path,
    port: int,
    *,
    dtype: str,
    threads: int,
    extra: Sequence[str] = (),
) -> list[str]:
    """Command line of ``hubless-serve`` for a benchmark run."""
    exe = Path(sys.executable).with_name("hubless-serve")
    return [
        str(exe),
        "--models-dir",
        str(models_dir),
        "--port",
        str(port),
        "--metrics-port",
        "0",
        "--dtype",
        dtype,
        "--threads",
        str(threads),
        *extra,
    ]


@contextlib.contextmanager
def py_spy(pid: int, out: Path, seconds: float) -> Iterator[None]:
    """Sample ``pid`` with py-spy while the block runs (if py-spy is installed): collapsed
    stacks in ``out`` (``.folded``) and a readable summary beside it (``.txt``)."""
    exe = Path(sys.executable).with_name("py-spy")
    if not exe.exists():
        log.warning("py-spy not installed; no profile")
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [str(exe), "record", "--pid", str(pid), "--duration", str(max(1, int(seconds)))]
    argv += ["--rate", "50", "--format", "raw", "--threads", "--nonblocking", "--output", str(out)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        try:
            proc.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            proc.terminate()
        if out.exists():
            summary = out.with_suffix(".txt")
            summary.write_text(summarise_folded(out.read_text()))
            log.info("py-spy profile: %s (summary %s)", out, summary)


def summarise_folded(text: str, top: int = 40) -> str:
    """Share of samples per thread and the top frames by inclusive share, from py-spy's
    collapsed stacks (``frame;frame;... count`` per line, first frame = thread)."""
    from collections import Counter

    total = 0
    threads: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        threads[frames[0]] += n
        for frame in set(frames[1:]):
            inclusive[frame] += n
    if not total:
        return "no samples\n"
    lines = [f"{total} samples (active threads only)", "", "by thread:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in threads.most_common(12)]
    lines += ["", "top frames (inclusive):"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"
