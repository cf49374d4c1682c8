"""Hostile clients against the HTTP door of a real ``hubless-serve`` (issue 17, "Done when").

    python bench/hostile_http.py [--nofile 1024] [--body-mb 30] [--body-seconds 8]
                                 [--idle 1100] [--idle-window 30] [--json PATH]

The server child runs with tokens, TLS (a trustme CA), ``--http-port`` and ``--health-port``
on 127.0.0.1 over the real all-MiniLM-L6-v2 (``bench/.models/minilm-volume``), its open-files
limit set to ``--nofile`` (soft and hard, as a container's ``ulimit -n``) before it starts.
Beside it, one authorised gRPC caller embeds one short text in a loop the whole time:

1. **idle**: a few seconds of the caller alone: its idle p50;
2. **big bodies**: two clients, each in a loop for ``--body-seconds``: a TLS connection, a
   ``POST /v1/tasks/embed`` without a token announcing a ``--body-mb`` body
   (``{"texts": ["a", "a", ...]}``), the body streamed until the server answers or closes.
   Passes when every attempt is refused within 2 s and the caller's p50 stays within 5x its
   idle p50 (max <= 2 s);
3. **idle connections**: ``--idle`` connections without a token, a third each: TCP only
   (no TLS handshake), TLS and half a request head, TLS and an unfinished chunked body.
   Passes when gRPC and the health port keep answering and >= 90 % are closed by the server
   within ``--idle-window`` seconds.

Prints a table per phase and a PASS/FAIL line per criterion; ``--json`` writes the figures.
Not a test; timings on a shared machine are noisy: compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a file: bench.* from the repository root
    sys.path.insert(0, str(REPO_ROOT))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from bench.volume import ensure_minilm_volume  # noqa: E402
from hubless.v1 import embeddings_pb2, embeddings_pb2_grpc  # noqa: E402
from hubless_fakehub.stack import child_env  # noqa: E402

HOST = "127.0.0.1"
TOKEN = "bench-hostile-http-token-0123456789"
BIN = Path(sys.executable).parent
VOLUME = REPO_ROOT / "bench" / ".models" / "minilm-volume"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def now_utc() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    http_port: int
    health_port: int
    metrics_port: int
    log_path: Path
    ca_file: Path

    def rss_mib(self) -> float:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server so far."""
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return float("nan")

    def open_files(self) -> int:
        with contextlib.suppress(OSError):
            return len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        return -1

    def metrics(self, name: str) -> list[tuple[dict[str, str], float]]:
        """The samples ``name`` of ``/metrics`` (HTTPS, as the other ports): (labels, value)."""
        import urllib.request

        url = f"https://localhost:{self.metrics_port}/metrics"
        context = ssl.create_default_context(cafile=str(self.ca_file))
        with urllib.request.urlopen(url, timeout=10, context=context) as answer:
            text = answer.read().decode()
        return [
            (sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name
        ]


def start_server(workdir: Path, nofile: int) -> Server:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", HOST)
    cert_file, key_file = workdir / "tls.crt", workdir / "tls.key"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key_file.write_bytes(cert.private_key_pem.bytes())
    ca_file = workdir / "ca.pem"
    ca_file.write_bytes(ca.cert_pem.bytes())
    tokens = workdir / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    http_port, health_port, metrics_port = free_port(), free_port(), free_port()
    port_file = workdir / "port"
    argv = [
        str(BIN / "hubless-serve"),
        *("--models-dir", str(ensure_minilm_volume(VOLUME))),
        *("--tasks", "embedding", "--host", HOST, "--port", "0", "--port-file", str(port_file)),
        *("--http-port", str(http_port), "--health-port", str(health_port)),
        *("--metrics-port", str(metrics_port), "--batch-wait-ms", "0", "--drain-delay", "0"),
        *("--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file)),
        *("--auth-token-file", str(tokens), "--grace-period", "2"),
    ]

    def limit_files() -> None:  # in the child, before exec: its ulimit -n
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    log_path = workdir / "server.log"
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            argv,
            env=child_env(workdir / "hf-home", HF_HUB_OFFLINE="1"),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=limit_files,  # no threads in this process yet
            start_new_session=True,
        )
    server = Server(proc, 0, http_port, health_port, metrics_port, log_path, ca_file)
    deadline = time.monotonic() + 300
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"hubless-serve did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.1)
    server.port = int(port_file.read_text())
    while not health_ok(health_port, timeout=2):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"hubless-serve not SERVING:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)
    return server


def health_ok(port: int, timeout: float = 2.0) -> bool:
    try:
        with grpc.insecure_channel(f"{HOST}:{port}") as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        return answer.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


# ---- the authorised gRPC caller ------------------------------------------------------------


@dataclass
class Caller:
    """One authorised gRPC caller embedding one short text in a loop (its own thread)."""

    server: Server
    calls: list[tuple[float, float, bool]] = field(default_factory=list)
    """(start time, seconds, ok) of every call."""
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        credentials = grpc.ssl_channel_credentials(self.server.ca_file.read_bytes())
        options = [("grpc.ssl_target_name_override", "localhost")]
        with grpc.secure_channel(f"{HOST}:{self.server.port}", credentials, options) as channel:
            stub = embeddings_pb2_grpc.EmbeddingsServiceStub(channel)
            request = embeddings_pb2.EmbedRequest(texts=["a short sentence to embed"])
            metadata = (("authorization", f"Bearer {TOKEN}"),)
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    stub.Embed(request, timeout=10, metadata=metadata)
                    ok = True
                except grpc.RpcError:
                    ok = False
                self.calls.append((started, time.monotonic() - started, ok))
                time.sleep(0.02)

    def window(self, start: float, end: float) -> dict[str, Any]:
        calls = [c for c in self.calls if start <= c[0] < end]
        seconds = [c[1] for c in calls if c[2]]
        return {
            "calls": len(calls),
            "failed": sum(not c[2] for c in calls),
            "p50_ms": statistics.median(seconds) * 1000 if seconds else float("nan"),
            "max_ms": max(seconds) * 1000 if seconds else float("nan"),
        }


# ---- phase 2: big bodies without a token ---------------------------------------------------


async def big_body(port: int, context: ssl.SSLContext, size: int) -> dict[str, Any]:
    """One attempt: seconds to the refusal from the connect, and what the server did."""
    started = time.monotonic()
    sent = 0
    try:
        reader, writer = await asyncio.open_connection(
            HOST, port, ssl=context, server_hostname="localhost"
        )
    except (OSError, ssl.SSLError) as exc:
        return {"s": time.monotonic() - started, "outcome": f"connect: {exc}"}
    head = (
        f"POST /v1/tasks/embed HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
    )

    async def pump() -> None:
        nonlocal sent
        chunk = b'"a", ' * 13_107  # 64 KiB of {"texts": ["a", "a", ...
        writer.write(head.encode() + b'{"texts": [')
        while sent < size and not writer.transport.is_closing():
            writer.write(chunk)
            sent += len(chunk)
            await writer.drain()

    pumping = asyncio.ensure_future(pump())
    try:
        line = await asyncio.wait_for(reader.readline(), timeout=30)
        outcome = line.decode(errors="replace").split(" ")[1] if line else "closed"
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
        outcome = "reset"
    except TimeoutError:
        outcome = "no answer in 30 s"
    seconds = time.monotonic() - started
    pumping.cancel()
    with contextlib.suppress(BaseException):
        await pumping
    writer.transport.abort()
    return {"s": seconds, "outcome": outcome}


async def big_bodies(port: int, context: ssl.SSLContext, size: int, seconds: float) -> list[Any]:
    end = time.monotonic() + seconds
    results: list[dict[str, Any]] = []

    async def client() -> None:
        while time.monotonic() < end:
            results.append(await big_body(port, context, size))

    await asyncio.gather(client(), client())
    return results


# ---- phase 3: idle and partial connections -------------------------------------------------


async def hold(port: int, context: ssl.SSLContext, kind: str, opened: list[float]) -> float:
    """Open one connection of ``kind`` and wait until the server closes it; the time then
    (``inf`` when the connection could not even be made)."""
    try:
        if kind == "tcp":
            reader, writer = await asyncio.open_connection(HOST, port)
        else:
            reader, writer = await asyncio.open_connection(
                HOST, port, ssl=context, server_hostname="localhost"
            )
            if kind == "half-head":
                writer.write(f"POST /v1/embeddings HTTP/1.1\r\nHost: {HOST}\r\n".encode())
            else:
                writer.write(
                    f"POST /v1/tasks/embed HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: "
                    "application/json\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{}".encode()
                )
    except (OSError, ssl.SSLError):
        opened.append(time.monotonic())
        return time.monotonic()  # closed by the server before the connection was up
    opened.append(time.monotonic())
    try:
        while await reader.read(65536):
            pass
    except (OSError, ssl.SSLError):
        pass
    closed = time.monotonic()
    writer.transport.abort()
    return closed


async def idle_connections(
    server: Server, context: ssl.SSLContext, count: int, window: float
) -> dict[str, Any]:
    kinds = ["tcp", "half-head", "chunked"]
    opened: list[float] = []
    started = time.monotonic()
    tasks = [
        asyncio.ensure_future(hold(server.http_port, context, kinds[i % 3], opened))
        for i in range(count)
    ]
    checks: list[tuple[float, bool]] = []
    files_peak = 0
    loop = asyncio.get_running_loop()
    while time.monotonic() - started < window and not all(t.done() for t in tasks):
        ok = await loop.run_in_executor(None, health_ok, server.health_port, 2.0)
        checks.append((time.monotonic() - started, ok))
        files_peak = max(files_peak, server.open_files())
        await asyncio.sleep(0.5)
    closed = [t.result() - started for t in tasks if t.done()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "connections": count,
        "closed_by_server": len(closed),
        "closed_share": len(closed) / count,
        "last_closed_s": max(closed) if closed else float("nan"),
        "health_checks": len(checks),
        "health_failed": sum(not ok for _, ok in checks),
        "server_open_files_peak": files_peak,
    }


# ---- the run -------------------------------------------------------------------------------


def counts(server: Server, name: str, *keys: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, value in server.metrics(name):
        key = "/".join(labels.get(k, "") for k in keys)
        out[key] = out.get(key, 0.0) + value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nofile", type=int, default=1024, help="the server's ulimit -n")
    parser.add_argument("--body-mb", type=float, default=30.0)
    parser.add_argument("--body-seconds", type=float, default=8.0)
    parser.add_argument("--idle", type=int, default=1100, help="idle/partial connections")
    parser.add_argument("--idle-window", type=float, default=30.0)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    # The attack clients write into connections the server has reset: asyncio would warn.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this process holds the clients
    workdir = Path(tempfile.mkdtemp(prefix="hubless-hostile-http-"))
    print(f"== {now_utc()}, {cpu_model()}, {os.cpu_count()} CPUs (shared machine)", flush=True)
    server = start_server(workdir, args.nofile)
    caller = Caller(server)
    thread = threading.Thread(target=caller.run, daemon=True)
    results: dict[str, Any] = {
        "when": now_utc(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "body_seconds": args.body_seconds,
    }
    try:
        log_before = server.log_path.stat().st_size
        thread.start()
        t0 = time.monotonic()
        time.sleep(5)
        idle = caller.window(t0 + 1, time.monotonic())  # the first second warms up
        context = ssl.create_default_context(cafile=str(server.ca_file))
        rss_before, cpu_before = server.rss_mib(), server.cpu_s()
        t1 = time.monotonic()
        size = int(args.body_mb * 1_000_000)
        attempts = asyncio.run(big_bodies(server.http_port, context, size, args.body_seconds))
        during = caller.window(t1, time.monotonic())
        rss_after, cpu_after = server.rss_mib(), server.cpu_s()
        t2 = time.monotonic()
        held = asyncio.run(idle_connections(server, context, args.idle, args.idle_window))
        after_idle = caller.window(t2, time.monotonic())
        refused = counts(server, "hubless_refused_requests_total", "code", "reason")
        closed = counts(server, "hubless_http_connections_closed_total", "reason")
        log_growth = server.log_path.stat().st_size - log_before
        log_text = server.log_path.read_text(errors="replace")
    finally:
        caller.stop.set()
        thread.join(15)
        server.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.proc.wait(20)
        if server.proc.poll() is None:
            server.proc.kill()
    worst = max(a["s"] for a in attempts)
    outcomes: dict[str, int] = {}
    for attempt in attempts:
        outcomes[attempt["outcome"]] = outcomes.get(attempt["outcome"], 0) + 1
    results |= {
        "server_nofile": args.nofile,
        "idle_caller": idle,
        "big_bodies": {
            "attempts": len(attempts),
            "outcomes": outcomes,
            "refusal_p50_ms": statistics.median(a["s"] for a in attempts) * 1000,
            "refusal_max_ms": worst * 1000,
            "server_cpu_s": cpu_after - cpu_before,
            "rss_mib_before": rss_before,
            "rss_mib_after": rss_after,
            "caller": during,
        },
        "idle_connections": {**held, "caller": after_idle},
        "refused_total": refused,
        "connections_closed_total": closed,
        "server_log_bytes": log_growth,
        "server_log_tracebacks": log_text.count("Traceback"),
        "server_log_too_many_files": log_text.lower().count("too many open files"),
    }
    ratio = during["p50_ms"] / idle["p50_ms"]
    checks = [
        ("every big body refused within 2 s", worst <= 2.0),
        ("caller p50 during big bodies <= 5x idle p50", ratio <= 5),
        ("caller max during big bodies <= 2 s", during["max_ms"] <= 2000 and not during["failed"]),
        ("gRPC answers while connections are held", not after_idle["failed"]),
        ("health port answers while connections are held", not held["health_failed"]),
        (">= 90 % of idle connections closed by the server", held["closed_share"] >= 0.9),
    ]
    results["checks"] = {name: ok for name, ok in checks}
    print(report(results, ratio), flush=True)
    for name, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return 0 if all(ok for _, ok in checks) else 1


def report(r: dict[str, Any], ratio: float) -> str:
    big, held = r["big_bodies"], r["idle_connections"]
    idle, during, after = r["idle_caller"], big["caller"], held["caller"]
    rows = [
        ("server ulimit -n", f"{r['server_nofile']}"),
        ("caller idle: calls / p50 / max", _caller(idle)),
        (
            f"big bodies: attempts (2 clients x {r.get('body_seconds', 8)} s) / outcomes",
            f"{big['attempts']} / {big['outcomes']}",
        ),
        (
            "big bodies: refusal p50 / max (from connect, TLS included)",
            f"{big['refusal_p50_ms']:.1f} ms / {big['refusal_max_ms']:.1f} ms",
        ),
        (
            "big bodies: server CPU (all threads, the caller's calls included)",
            f"{big['server_cpu_s']:.2f} s in {r['body_seconds']:.0f} s",
        ),
        ("big bodies: server RSS before / after", _rss(big)),
        ("caller during big bodies: calls / p50 / max", _caller(during)),
        ("caller p50 during / idle", f"{ratio:.2f}x"),
        (
            "idle connections: opened / closed by the server",
            f"{held['connections']} / {held['closed_by_server']} ({held['closed_share']:.0%})",
        ),
        ("idle connections: last one closed after", f"{held['last_closed_s']:.1f} s"),
        ("idle connections: server open files, peak", f"{held['server_open_files_peak']}"),
        (
            "health port checks meanwhile: done / failed",
            f"{held['health_checks']} / {held['health_failed']}",
        ),
        ("caller meanwhile: calls / p50 / max", _caller(after)),
        ("refused (code/reason: count)", _pairs(r["refused_total"])),
        ("connections closed by the server (reason: count)", _pairs(r["connections_closed_total"])),
        (
            "server log: bytes / tracebacks / 'too many open files'",
            f"{r['server_log_bytes']:,} / {r['server_log_tracebacks']} / "
            f"{r['server_log_too_many_files']}",
        ),
    ]
    lines = ["| figure | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


def _caller(w: dict[str, Any]) -> str:
    failed = f", {w['failed']} failed" if w["failed"] else ""
    return f"{w['calls']} / {w['p50_ms']:.1f} ms / {w['max_ms']:.1f} ms{failed}"


def _rss(big: dict[str, Any]) -> str:
    return f"{big['rss_mib_before']:.0f} MiB / {big['rss_mib_after']:.0f} MiB"


def _pairs(values: dict[str, float]) -> str:
    return ", ".join(f"{k}: {v:.0f}" for k, v in sorted(values.items()) if v) or "none"


if __name__ == "__main__":
    sys.exit(main())
