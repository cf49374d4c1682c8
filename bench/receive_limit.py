"""Peak memory of oversized gRPC messages, with the receive limit from the request limits.

A child process serves ``hubless.v1.EmbeddingsService/Embed`` the way ``hubless-serve``
does (the transport's interceptor and gRPC options, hubless's never-raising deserializer, a
servicer that checks ``texts`` against ``--max-texts`` and computes nothing). The parent
sends it 30 MB messages, ``EmbedRequest(texts=["a"] * 10_000_000)`` as raw bytes, one alone
and then three at once, and reads the child's memory: VmRSS before, the peak (VmHWM, reset
through ``/proc/<pid>/clear_refs`` before each step) and VmRSS after. ``derived`` is the
server as built now (``grpc.max_receive_message_length`` from
:func:`hubless_server.transport.chain.max_receive_bytes`: refused from the length prefix);
``old`` the former fixed 32 MiB limit (the message is decoded, then refused by
``--max-texts``).

    python bench/receive_limit.py            # both, a table
    python bench/receive_limit.py --mode derived --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

METHOD = "/hubless.v1.EmbeddingsService/Embed"
BODY_TEXTS = 10_000_000
OLD_LIMIT = 32 * 1024 * 1024


async def _serve(mode: str, port_file: Path) -> None:
    from hubless.v1 import embeddings_pb2
    from hubless_server.core.flags import load_settings
    from hubless_server.services.common import check_texts
    from hubless_server.services.errors import ErrorScope, abort
    from hubless_server.services.wire import add_service
    from hubless_server.transport.chain import Transport

    settings = load_settings(["--models-dir", str(port_file.parent)], {})
    transport = Transport(settings)
    options = transport.grpc_options()
    if mode == "old":
        options = [("grpc.max_receive_message_length", OLD_LIMIT)]

    class NullEmbeddings:
        async def Embed(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                check_texts(request.texts, settings)
            except Exception as exc:
                await abort(context, exc, ErrorScope(METHOD))
            return embeddings_pb2.EmbedResponse()

    server = grpc.aio.server(interceptors=transport.interceptors(), options=options)
    add_service(
        server, embeddings_pb2.DESCRIPTOR.services_by_name["EmbeddingsService"], NullEmbeddings()
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(f"{port} {dict(options)['grpc.max_receive_message_length']}")
    os.replace(tmp, port_file)
    await server.wait_for_termination()


def _status_mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def _send(port: int, body: bytes, calls: int) -> list[str]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(METHOD)

        def one(_: int) -> str:
            try:
                call(body, timeout=120)
                return "OK"
            except grpc.RpcError as exc:
                return exc.code().name  # type: ignore[no-any-return]

        with ThreadPoolExecutor(calls) as pool:
            return list(pool.map(one, range(calls)))


def measure(mode: str) -> dict[str, Any]:
    body = b"\n\x01a" * BODY_TEXTS
    with tempfile.TemporaryDirectory(prefix="hubless-receive-bench-") as tmp:
        port_file = Path(tmp) / "port"
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", mode, "--port-file", str(port_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while not port_file.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the {mode} server did not start")
                time.sleep(0.05)
            port, limit = (int(v) for v in port_file.read_text().split())
            _send(port, b"", 1)  # warm: connection, handler cache
            result: dict[str, Any] = {"mode": mode, "limit_bytes": limit, "body_bytes": len(body)}
            for calls in (1, 3):
                before = _status_mib(proc.pid, "VmRSS")
                Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # reset VmHWM
                codes = _send(port, body, calls)
                time.sleep(0.5)
                result[f"x{calls}"] = {
                    "codes": codes,
                    "rss_before_mib": round(before, 1),
                    "peak_over_before_mib": round(_status_mib(proc.pid, "VmHWM") - before, 1),
                    "rss_after_mib": round(_status_mib(proc.pid, "VmRSS"), 1),
                }
            return result
        finally:
            proc.kill()
            proc.wait(10)


def _table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| server | receive limit | calls | status | RSS before MiB | peak - before MiB "
        "| RSS after MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for calls in (1, 3):
            x = r[f"x{calls}"]
            codes = ",".join(sorted(set(x["codes"])))
            rows.append(
                f"| {r['mode']} | {r['limit_bytes']:,} | {calls} | {codes} "
                f"| {x['rss_before_mib']} | {x['peak_over_before_mib']} | {x['rss_after_mib']} |"
            )
    rows.append("")
    rows.append(
        f"each call: {results[0]['body_bytes']:,} bytes (EmbedRequest of {BODY_TEXTS:,} texts)"
    )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("both", "derived", "old"), default="both")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--serve", choices=("derived", "old"), help=argparse.SUPPRESS)
    parser.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve, args.port_file))
        return
    modes = ("derived", "old") if args.mode == "both" else (args.mode,)
    results = [measure(mode) for mode in modes]
    print(json.dumps(results, indent=2) if args.json else _table(results))


if __name__ == "__main__":
    main()
