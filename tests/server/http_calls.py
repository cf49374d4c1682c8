"""HTTP calls for the HTTP-door tests: the ``curl`` CLI when installed (what an operator
types), else httpx; both return the status, the headers and the body."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from dataclasses import dataclass
from typing import Any

import httpx

CURL = shutil.which("curl")


def free_port() -> int:
    """A loopback port free right now (``--http-port 0`` means off, so tests pick one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)

    @property
    def error(self) -> dict[str, Any]:
        body = self.json()
        assert set(body) == {"error"}, body
        error: dict[str, Any] = body["error"]
        return error


def _curl(
    method: str, url: str, body: bytes | None, headers: dict[str, str], cacert: str | None
) -> Answer:
    assert CURL is not None
    args = [CURL, "-sS", "-i", "-X", method, url, "--max-time", "30"]
    for key, value in headers.items():
        args += ["-H", f"{key}: {value}"]
    if body is not None:
        args += ["--data-binary", "@-"]
    if cacert:
        args += ["--cacert", cacert]
    proc = subprocess.run(args, input=body, capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    raw = proc.stdout.decode("utf-8", errors="replace")
    head, _, text = raw.partition("\r\n\r\n")
    lines = head.split("\r\n")
    status = int(lines[0].split()[1])
    parsed = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        parsed[key.strip().lower()] = value.strip()
    return Answer(status, parsed, text)


def call(
    method: str,
    url: str,
    payload: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    cacert: str | None = None,
    use_curl: bool = True,
) -> Answer:
    """One request; ``payload`` is sent as JSON (``raw`` as it is)."""
    headers = dict(headers or {})
    body = raw
    if payload is not None:
        body = json.dumps(payload).encode()
        headers.setdefault("Content-Type", "application/json")
    if CURL is not None and use_curl:
        return _curl(method, url, body, headers, cacert)
    with httpx.Client(verify=cacert or True, timeout=30) as client:
        response = client.request(method, url, content=body, headers=headers)
    return Answer(
        response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.text
    )
