"""Server CPU per call that hubless's interceptor chain adds over a bare grpc.aio server.

Three servers run as child processes, each with the same null ``EmbeddingsService/Embed``
(a fixed 384-float answer, no model): ``bare`` has no interceptor, ``chain`` has the chain
``hubless-serve`` builds (:meth:`hubless_server.transport.chain.Transport.interceptors`) with
bearer tokens, ``--max-caller-concurrency`` and the access log at INFO (text format, written
to /dev/null: the line is built and formatted as in production), ``chain-quiet`` the same
chain with ``--log-level WARNING`` (no access line: what the rest of the chain costs). The
parent sends N unary
calls over loopback to each, in interleaved rounds, and reads each child's CPU time
(user + system, ``/proc/<pid>/stat``) around every round; the load generator's own CPU is
not counted. The figure that holds across machines is the ``chain - bare`` difference and
the ratio of two runs of this script on one machine, never an absolute number.

    python bench/transport_overhead.py                 # N=5000, 3 rounds, a table
    python bench/transport_overhead.py --calls 2000 --rounds 5 --json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from hubless.v1 import common_pb2, embeddings_pb2

METHOD = "/hubless.v1.EmbeddingsService/Embed"
TOKEN = "bench-token-0123456789abcdef"
DIMENSION = 384
MODES = ("bare", "chain", "chain-quiet")
_TICK = os.sysconf("SC_CLK_TCK")


def _null_handler() -> grpc.GenericRpcHandler:
    vector = [((i * 37) % 101) / 101.0 - 0.5 for i in range(DIMENSION)]
    answer = embeddings_pb2.EmbedResponse(
        embeddings=[embeddings_pb2.Embedding(values=vector, tokens=1)],
        dimension=DIMENSION,
        model=common_pb2.ModelRef(name="null", repo_id="null", commit="0" * 40),
    )

    async def embed(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return answer

    return grpc.method_handlers_generic_handler(
        "hubless.v1.EmbeddingsService",
        {
            "Embed": grpc.unary_unary_rpc_method_handler(
                embed,
                request_deserializer=embeddings_pb2.EmbedRequest.FromString,
                response_serializer=embeddings_pb2.EmbedResponse.SerializeToString,
            )
        },
    )


async def _serve(mode: str, port_file: Path) -> None:
    interceptors: list[Any] = []
    if mode in ("chain", "chain-quiet"):
        from hubless_server.core.flags import load_settings
        from hubless_server.observability.logs import configure_logging
        from hubless_server.transport.chain import Transport

        tokens = port_file.with_suffix(".tokens")
        tokens.write_text(f"{TOKEN}\n")
        settings = load_settings(
            [
                "--models-dir",
                str(port_file.parent),
                "--auth-token-file",
                str(tokens),
                "--max-caller-concurrency",
                "64",
            ],
            {},
        )
        # stderr is /dev/null: the access line is formatted and written, then dropped
        configure_logging("text", "WARNING" if mode == "chain-quiet" else "INFO")
        interceptors = list(Transport(settings).interceptors())
    server = grpc.aio.server(interceptors=interceptors)
    server.add_generic_rpc_handlers([_null_handler()])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(port))
    os.replace(tmp, port_file)
    await server.wait_for_termination()


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def _start(mode: str, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port_file = workdir / f"{mode}.port"
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", mode, "--port-file", str(port_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the {mode} server did not start")
        time.sleep(0.05)
    return proc, int(port_file.read_text())


def _drive(port: int, calls: int, concurrency: int) -> None:
    request = embeddings_pb2.EmbedRequest(texts=["hello world"])
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            METHOD,
            request_serializer=embeddings_pb2.EmbedRequest.SerializeToString,
            response_deserializer=embeddings_pb2.EmbedResponse.FromString,
        )
        sent = 0
        while sent < calls:
            wave = min(concurrency, calls - sent)
            futures = [call.future(request, timeout=30, metadata=metadata) for _ in range(wave)]
            for future in futures:
                future.result()
            sent += wave


def measure(calls: int, rounds: int, concurrency: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="hubless-transport-bench-") as tmp:
        servers = {mode: _start(mode, Path(tmp)) for mode in MODES}
        try:
            per_call: dict[str, list[float]] = {mode: [] for mode in servers}
            for _, port in servers.values():  # warm-up: connections, caches
                _drive(port, min(500, calls), concurrency)
            for _ in range(rounds):
                for mode, (proc, port) in servers.items():
                    before = _cpu_s(proc.pid)
                    _drive(port, calls, concurrency)
                    per_call[mode].append((_cpu_s(proc.pid) - before) / calls * 1e6)
        finally:
            for proc, _ in servers.values():
                proc.kill()
                proc.wait(10)
    medians = {mode: statistics.median(values) for mode, values in per_call.items()}
    bare = medians["bare"]
    return {
        "calls": calls,
        "rounds": rounds,
        "concurrency": concurrency,
        "cpu_us_per_call": medians,
        "rounds_us_per_call": per_call,
        "chain_overhead_us": medians["chain"] - bare,
        "quiet_overhead_us": medians["chain-quiet"] - bare,
        "chain_over_bare": medians["chain"] / bare if bare else float("nan"),
    }


def _table(result: dict[str, Any]) -> str:
    bare = result["cpu_us_per_call"]["bare"]
    rows = [
        "| server | CPU µs/call (median) | rounds | vs bare |",
        "|---|---|---|---|",
    ]
    for mode in MODES:
        value = result["cpu_us_per_call"][mode]
        rounds = ", ".join(f"{v:.0f}" for v in result["rounds_us_per_call"][mode])
        rows.append(f"| {mode} | {value:.0f} | {rounds} | {value / bare:.2f}x |")
    rows.append("")
    rows.append(
        f"chain overhead: {result['chain_overhead_us']:.0f} µs of server CPU per call "
        f"({result['quiet_overhead_us']:.0f} µs without the access line); "
        f"{result['calls']} calls x {result['rounds']} rounds, {result['concurrency']} in flight"
    )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000, help="unary calls per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per server")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        import asyncio

        asyncio.run(_serve(args.serve, args.port_file))
        return
    logging.basicConfig(level=logging.WARNING)
    result = measure(args.calls, args.rounds, args.concurrency)
    print(json.dumps(result, indent=2) if args.json else _table(result))


if __name__ == "__main__":
    main()
