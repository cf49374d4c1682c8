"""Run inside a network namespace with only loopback (see test_offline_netns.py).

``python -m tests.e2e.netns_check VOLUME WORKDIR``: checks that the namespace has no way out,
starts ``hubless-serve`` on VOLUME, makes one call of every RPC through the client and prints
one JSON object with what it saw. Exits non-zero on any failure.
"""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.e2e import procs


def outside_reachable() -> str:
    """'' when no non-loopback address can be reached, else what answered."""
    for address in (("1.1.1.1", 443), ("8.8.8.8", 53)):
        try:
            with socket.create_connection(address, timeout=2):
                return f"{address} reachable"
        except OSError as exc:
            if exc.errno not in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL):
                return f"{address}: unexpected {exc!r}"
    return ""


def remote_addresses(pid: int) -> list[str]:
    """Remote ends of the process's TCP sockets (hex as in /proc/net/tcp)."""
    remotes = []
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        remotes += [line.split()[2] for line in lines]
    return remotes


def is_loopback_or_unset(remote: str) -> bool:
    address = remote.split(":")[0]
    if len(address) == 8:  # IPv4, little-endian hex
        return address == "00000000" or address.endswith("7F")
    return address in ("0" * 32, "0" * 31 + "1", "0000000000000000FFFF00000100007F")


def main(argv: list[str]) -> int:
    volume, workdir = Path(argv[0]), Path(argv[1])
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    names = [line.split(":")[1].strip() for line in links.stdout.splitlines()]
    seen: dict[str, Any] = {"links": names, "outside": outside_reachable()}
    try:
        (volume / "probe").write_text("x")
        seen["volume_writable"] = True
    except OSError as exc:
        seen["volume_writable"] = False
        seen["volume_write_error"] = errno.errorcode.get(exc.errno or 0, str(exc))
    with procs.running_server(volume, workdir) as server:
        client = server.client(timeout=60)
        seen["embed_dimension"] = client.embed(["offline"]).dimension
        seen["emotion"] = client.detect_emotion(["I am happy"])[0].label
        seen["sentiment"] = client.analyze_sentiment(["I am happy"])[0].polarity.value
        zero_shot = client.classify_zero_shot(["The match"], ["sports", "politics"])
        seen["zero_shot"] = zero_shot[0].label
        seen["summary_tokens"] = client.summarize(["A long text to summarise."] * 2)[0].tokens
        seen["reply_model"] = client.reply(["Hello"], max_new_tokens=4).model.name
        stream = client.stream_reply(["Hello"], max_new_tokens=4).result()
        seen["stream_finish"] = stream.finish_reason.value
        ready = [m.name for m in client.list_models() if m.state.value == "ready"]
        seen["models_ready"] = sorted(ready)
        seen["health"] = client.health().value
        seen["remotes"] = remote_addresses(server.proc.pid)
        seen["non_loopback_remotes"] = [r for r in seen["remotes"] if not is_loopback_or_unset(r)]
    print(json.dumps(seen))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
