"""Start the servers under test as subprocesses and wait until they serve
(:func:`hubless_fakehub.stack.start_process`, the one server-subprocess helper of the demo,
the tests, the benchmarks and the soak); profile them with py-spy."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hubless_fakehub import procfs
from hubless_fakehub.stack import ServerProcess, free_port, start_process

log = logging.getLogger("bench")

BENCH_DIR = Path(__file__).resolve().parent
LOG_DIR = BENCH_DIR / ".logs"

__all__ = ["ServerProcess", "free_port"]


def peak_rss_mb(server: ServerProcess) -> float:
    """Peak resident memory (VmHWM) of the server process, in MiB; NaN once it is gone."""
    return procfs.status_value(server.pid, "VmHWM") / 1024.0


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
) -> ServerProcess:
    """Start ``argv`` (offline; log in ``bench/.logs/NAME.log``) and wait until it serves on
    ``port`` (``ready``: "grpc" health or "http" GET of ``ready_url``). ``StackError`` with
    the log's tail if the process exits or is not ready in time."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    log.info("starting %s: %s", name, " ".join(argv))

    def check(server: ServerProcess) -> bool:
        if ready == "grpc":
            return grpc_serving(server.target, timeout=0.5)
        return http_ok(ready_url, 0.5)

    server = start_process(
        argv,
        log_path=LOG_DIR / f"{name}.log",
        env=full_env,
        ready=check,
        name=name,
        port=port,
        timeout=timeout_s,
        poll_s=poll_s,
    )
    log.info("%s serving after %.2f s", name, server.ready_after_s)
    return server


@contextlib.contextmanager
def running(name: str, argv: Sequence[str], **kwargs: object) -> Iterator[ServerProcess]:
    """``start`` ... ``stop`` (SIGTERM to its process group, SIGKILL after 10 s) as a
    context manager."""
    server = start(name, argv, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop(10.0)


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
