"""The HTTP door against hostile clients, over real sockets on 127.0.0.1 (bounded counts and
waits): bodies refused from the head, idle and slow connections closed, caps, refusals
counted and logged once, the auth back-off, hostile JSON and hang-ups without tracebacks,
``Content-Type``, ``Host`` and ``Origin`` checks. The timeouts are shortened on the running
server (the defaults are 10 and 30 s); the figures under load are bench/hostile_http.py's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hubless.v1 import embeddings_pb2, embeddings_pb2_grpc
from hubless_server.core.flags import load_settings
from hubless_server.observability import metrics
from hubless_server.transport.http import limits as door_limits
from hubless_server.transport.http.gate import is_loopback_host
from hubless_server.transport.http.refusals import RefusalLog
from hubless_server.transport.refusals import FAILURES_ALLOWED, WINDOW_S, Refusals
from tests.server.conftest import StartFake
from tests.server.harness import RunningServer
from tests.server.http_calls import free_port

EMBEDDER = "all-minilm-l6-v2"
TOKEN = "hostile-http-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _start(start_fake: StartFake, tmp_path: Path, *flags: str, tokens: bool = True) -> Any:
    port = free_port()
    extra: list[str] = []
    if tokens:
        token_file = tmp_path / "tokens"
        token_file.write_text(f"{TOKEN}\n")
        extra += ["--auth-token-file", str(token_file)]
    server = start_fake(
        [EMBEDDER], "--tasks", "embedding", "--http-port", str(port), *extra, *flags
    )
    return server, port


def _shorten(server: RunningServer, **changes: float) -> None:
    """Shorter head/body timeouts on the running door (its defaults are 10 s and 30 s)."""
    http = server.server._http
    http.door.tracker.limits = dataclasses.replace(http.door.tracker.limits, **changes)
    http.app.limits = dataclasses.replace(http.app.limits, **changes)


def _head(path: str, headers: dict[str, str], method: str = "POST") -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _answer(sock: socket.socket, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP answer (status, headers, body) read off ``sock``."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed without an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """True when the server closes ``sock`` within ``timeout`` seconds."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:
        return True
    return True


def _count(method: str, code: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "hubless_requests_total", {"method": method, "code": code}
    )
    return value or 0.0


def _closed(reason: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "hubless_http_connections_closed_total", {"reason": reason}
    )
    return value or 0.0


def _grpc_and_health_answer(server: RunningServer, health_port: int) -> None:
    stub = embeddings_pb2_grpc.EmbeddingsServiceStub(server.channel)
    reply = stub.Embed(
        embeddings_pb2.EmbedRequest(texts=["still here"]),
        timeout=5,
        metadata=(("authorization", f"Bearer {TOKEN}"),),
    )
    assert reply.model.name == EMBEDDER
    with grpc.insecure_channel(f"127.0.0.1:{health_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


# ---- bodies: decided from the head ----------------------------------------------------


def test_the_body_limit_comes_from_the_request_limits(tmp_path: Path) -> None:
    defaults = load_settings(["--models-dir", str(tmp_path)], {})
    assert door_limits.body_limit(defaults) == 64 * 20_000 * 4 + 1024 * 1024 == 6_168_576
    small = load_settings(["--models-dir", str(tmp_path), "--max-texts", "2"], {})
    assert door_limits.body_limit(small) == 2 * 20_000 * 4 + 1024 * 1024
    limits = door_limits.DoorLimits.from_settings(defaults, open_files=1024)
    assert (limits.max_connections, limits.max_per_peer) == (256, 128)
    big = door_limits.DoorLimits.from_settings(defaults, open_files=1 << 20)
    assert big.max_connections == door_limits.MAX_AUTO_CONNECTIONS
    flags = ["--models-dir", str(tmp_path), "--http-max-connections", "10"]
    set_by_flags = load_settings([*flags, "--http-max-connections-per-peer", "40"], {})
    limits = door_limits.DoorLimits.from_settings(set_by_flags, open_files=1024)
    assert (limits.max_connections, limits.max_per_peer) == (10, 10)


def test_unauthenticated_bodies_are_refused_before_they_are_read(
    start_fake: StartFake, tmp_path: Path
) -> None:
    _, port = _start(start_fake, tmp_path)
    before = _count("EmbeddingsService.Embed", "UNAUTHENTICATED")
    declared = {"Content-Type": "application/json", "Content-Length": "30000000"}
    chunked = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    for headers, start in ((declared, b'{"input": ["aaaa'), (chunked, b'1000\r\n{"input": ["')):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(_head("/v1/embeddings", headers) + start)  # 30 MB announced, none sent
            status, answer_headers, body = _answer(sock)
            assert status == 401 and b'"code":"unauthenticated"' in body
            assert answer_headers["connection"] == "close"
            assert _closed_by_server(sock, 5)
    assert _count("EmbeddingsService.Embed", "UNAUTHENTICATED") == before + 2
    # A token that is not accepted: the same, before any body.
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_head("/v1/tasks/embed", {**declared, "Authorization": "Bearer nope"}))
        status, _, body = _answer(sock)
    assert status == 401 and b"not accepted" in body


def test_bodies_over_the_limit_are_refused_as_they_come(
    start_fake: StartFake, tmp_path: Path
) -> None:
    _, port = _start(start_fake, tmp_path, "--max-texts", "1", "--max-text-chars", "1")
    limit = 1 * 1 * 4 + 1024 * 1024
    json_auth = {"Content-Type": "application/json", **AUTH}
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_head("/v1/tasks/embed", {**json_auth, "Content-Length": str(limit + 1)}))
        status, headers, body = _answer(sock)
    assert status == 413 and b'"code":"request_too_large"' in body
    assert headers["connection"] == "close" and str(limit) in body.decode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_head("/v1/tasks/embed", {**json_auth, "Transfer-Encoding": "chunked"}))
        chunk = b"a" * 65536
        try:
            for _ in range(limit // len(chunk) + 4):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            pass  # the server answered and closed as soon as the limit was passed
        status, _, body = _answer(sock)
    assert status == 413
    answer = httpx.post(
        f"http://127.0.0.1:{port}/v1/tasks/embed", json={"texts": ["x"]}, headers=AUTH
    )
    assert answer.status_code == 200


# ---- idle, slow and too many connections ------------------------------------------------


def test_idle_and_slow_connections_are_closed_and_grpc_keeps_answering(
    start_fake: StartFake, tmp_path: Path
) -> None:
    health_port = free_port()
    server, port = _start(
        start_fake,
        tmp_path,
        "--health-port",
        str(health_port),
        "--http-max-connections-per-peer",
        "16",
    )
    _shorten(server, head_timeout_s=1.0, body_timeout_s=1.0)
    evicted = _closed("evicted_peer")
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(24)]
    try:
        for i, sock in enumerate(socks):
            if i % 3 == 1:
                sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # half a head
            elif i % 3 == 2:
                sock.sendall(b"G")  # one byte of a request line
        _grpc_and_health_answer(server, health_port)
        # The first 8 were closed to make room for the last 8 (16 per address), the others
        # at the head timeout, whatever they trickle in meanwhile.
        for sock in socks[:8]:
            assert _closed_by_server(sock, 2)
        assert _closed("evicted_peer") - evicted == 8
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:  # trickling bytes keeps no connection open
            for sock in socks[8:]:
                with contextlib.suppress(OSError):
                    sock.sendall(b"E")
            time.sleep(0.3)
        assert all(_closed_by_server(sock, 3) for sock in socks[8:])
    finally:
        for sock in socks:
            sock.close()
    # A body that stops coming: 408 at the body timeout.
    with socket.create_connection(("127.0.0.1", port)) as sock:
        headers = {"Content-Type": "application/json", "Content-Length": "100", **AUTH}
        sock.sendall(_head("/v1/embeddings", headers) + b'{"input": ')
        status, answer_headers, body = _answer(sock, timeout=5)
    assert status == 408 and b'"code":"body_timeout"' in body
    assert answer_headers["connection"] == "close"
    _grpc_and_health_answer(server, health_port)


def test_a_new_connection_over_the_cap_with_none_idle_is_refused(
    start_fake: StartFake, tmp_path: Path
) -> None:
    _, port = _start(start_fake, tmp_path, "--http-max-connections-per-peer", "2")
    headers = {"Content-Type": "application/json", "Content-Length": "100", **AUTH}
    busy = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    try:
        for sock in busy:  # requests in progress (body half sent): never evicted
            sock.sendall(_head("/v1/embeddings", headers) + b"{")
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", port)) as extra:
            status, answer_headers, body = _answer(extra)
        assert status == 503 and b'"code":"connection_limit"' in body
        assert answer_headers["retry-after"] == "1"
    finally:
        for sock in busy:
            sock.close()
    time.sleep(0.3)
    assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200


def test_tls_connections_are_capped_and_timed_out_from_accept(
    start_fake: StartFake, tmp_path: Path
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_file, key_file, ca_file = tmp_path / "s.crt", tmp_path / "s.key", tmp_path / "ca.pem"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key_file.write_bytes(cert.private_key_pem.bytes())
    ca_file.write_bytes(ca.cert_pem.bytes())
    tls = ["--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file)]
    server, port = _start(start_fake, tmp_path, *tls, "--http-max-connections-per-peer", "4")
    _shorten(server, head_timeout_s=1.0)
    base = f"https://127.0.0.1:{port}"
    body = {"input": "hi"}
    trusted = ssl.create_default_context(cafile=str(ca_file))
    assert httpx.post(f"{base}/v1/embeddings", json=body, verify=trusted).status_code == 401
    time.sleep(0.3)  # that connection is gone
    raw = [socket.create_connection(("127.0.0.1", port)) for _ in range(6)]  # no handshake
    try:
        assert all(_closed_by_server(sock, 1) for sock in raw[:2])  # evicted for the last 2
        assert all(_closed_by_server(sock, 4) for sock in raw[2:])  # handshake timed out
    finally:
        for sock in raw:
            sock.close()
    with (
        socket.create_connection(("127.0.0.1", port)) as plain,
        trusted.wrap_socket(plain, server_hostname="127.0.0.1") as sock,
    ):
        sock.sendall(_head("/healthz", {}, method="GET"))
        status, _, _ = _answer(sock)
        assert status == 200
        assert _closed_by_server(sock, 10)  # idle after the answer: keep-alive, then closed
    answer = httpx.post(f"{base}/v1/embeddings", json=body, headers=AUTH, verify=trusted)
    assert answer.status_code == 200


# ---- refusals: counted, logged once, back-off -------------------------------------------


def test_refusals_are_counted_logged_once_and_backed_off(
    start_fake: StartFake, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, port = _start(start_fake, tmp_path)
    url = f"http://127.0.0.1:{port}/v1/embeddings"
    before = _count("EmbeddingsService.Embed", "UNAUTHENTICATED")
    statuses = []
    with caplog.at_level(logging.INFO, logger="hubless_server.access"), httpx.Client() as client:
        for _ in range(200):
            answer = client.post(url, json={"input": "x"}, headers={"Authorization": "Bearer x"})
            statuses.append(answer.status_code)
            retry_after = answer.headers.get("retry-after")
    assert _count("EmbeddingsService.Embed", "UNAUTHENTICATED") - before == 20
    backed_off = _count("EmbeddingsService.Embed", "RESOURCE_EXHAUSTED")
    assert backed_off >= 180
    assert statuses[:20] == [401] * 20 and set(statuses[20:]) == {429}
    assert retry_after is not None and 1 <= int(retry_after) <= WINDOW_S
    refused = [r for r in caplog.records if r.getMessage().startswith("refused ")]
    assert 1 <= len(refused) <= 4, [r.getMessage() for r in refused]
    fields = refused[0].__dict__["fields"]
    assert fields["peer"].startswith("ipv4:127.0.0.1:") and fields["via"] == "http"
    assert fields["reason"] == "UNAUTHENTICATED"
    # A caller with an accepted token from the same address is still served.
    ok = httpx.post(url, json={"input": "x"}, headers=AUTH)
    assert ok.status_code == 200


def test_refusal_log_and_backoff_windows() -> None:
    now = [0.0]
    log = RefusalLog(window_s=10, burst=3, clock=lambda: now[0])
    assert log.admit("ipv4:a", "R") == (True, 0)
    assert log.admit("ipv4:a", "R") == (False, 1)
    assert log.admit("ipv4:b", "R")[0] and log.admit("ipv4:c", "R")[0]
    assert log.admit("ipv4:d", "R") == (False, 1)  # three lines in this window already
    now[0] = 10.5
    assert log.admit("ipv4:a", "R") == (True, 1)
    # the token back-off is the transport's count, one per address whichever door
    shared = Refusals(clock=lambda: now[0])
    for _ in range(FAILURES_ALLOWED):
        assert shared.count("ipv4:10.0.0.7:1000") is None
    assert shared.count("ipv4:10.0.0.7:2000") == pytest.approx(WINDOW_S)  # another port
    assert shared.note("ipv4:10.0.0.7:3000")[0] == pytest.approx(WINDOW_S)  # a gRPC call
    now[0] += WINDOW_S
    assert shared.count("ipv4:10.0.0.7:1000") is None


# ---- hygiene ------------------------------------------------------------------------------


def _tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


def test_hostile_json_and_hang_ups_get_answers_not_tracebacks(
    start_fake: StartFake, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, port = _start(start_fake, tmp_path, tokens=False)
    base = f"http://127.0.0.1:{port}"
    json_type = {"Content-Type": "application/json"}
    with caplog.at_level(logging.DEBUG):
        for body, param in (
            (b'{"input": "\\ud800"}', "input"),
            (b'{"input": ["ok", "\\udfff x"]}', "input[1]"),
            (b'{"input": "ok", "model": "\\ud800"}', "model"),
        ):
            answer = httpx.post(f"{base}/v1/embeddings", content=body, headers=json_type)
            assert answer.status_code == 400, answer.text
            error = answer.json()["error"]
            assert error["code"] == "malformed_request" and error["param"] == param
            assert "lone surrogate" in error["message"]
        for route in ("/v1/embeddings", "/v1/tasks/embed"):
            for body in (b'{"texts": ["\xff\xfe"]}', b"[" * 100_000, b'{"texts": ["\\ud800"]}'):
                answer = httpx.post(f"{base}{route}", content=body, headers=json_type)
                assert answer.status_code == 400, (route, body[:20], answer.text)
                assert answer.json()["error"]["type"] == "invalid_request_error"
        for _ in range(3):  # hang up mid-body, and mid-head
            with socket.create_connection(("127.0.0.1", port)) as sock:
                headers = {"Content-Type": "application/json", "Content-Length": "1000"}
                sock.sendall(_head("/v1/embeddings", headers) + b'{"input": [')
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: 127")
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            status, _, _ = _answer(sock)
        assert status == 400
        time.sleep(0.3)
        assert httpx.get(f"{base}/healthz").status_code == 200
    assert not _tracebacks(caplog), _tracebacks(caplog)[:2]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_an_unexpected_error_is_json_and_its_traceback_throttled(
    start_fake: StartFake, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    from hubless_server.transport.http import openai_compat

    def broken(response: Any, encoding: str) -> dict[str, Any]:
        raise RuntimeError("a bug in the answer")

    monkeypatch.setattr(openai_compat, "embeddings_response", broken)
    _, port = _start(start_fake, tmp_path, tokens=False)
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            answer = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"input": "x"})
            assert answer.status_code == 500
            assert answer.json()["error"]["code"] == "internal"
            assert "RuntimeError" in answer.json()["error"]["message"]
    assert len(_tracebacks(caplog)) == 1


def test_json_is_required_on_post(start_fake: StartFake, tmp_path: Path) -> None:
    _, port = _start(start_fake, tmp_path, tokens=False)
    url = f"http://127.0.0.1:{port}/v1/embeddings"
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"Content-Type": content_type} if content_type else {}
        answer = httpx.post(url, content=b'{"input": "x"}', headers=headers)
        assert answer.status_code == 415, content_type
        assert answer.json()["error"]["code"] == "unsupported_media_type"
    charset = {"Content-Type": "application/json; charset=utf-8"}
    assert httpx.post(url, content=b'{"input": "x"}', headers=charset).status_code == 200
    # An empty POST needs no Content-Type.
    empty = httpx.post(f"http://127.0.0.1:{port}/v1/tasks/list-models")
    assert empty.status_code == 200 and empty.json()["models"]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("localhost:8080", True),
        ("127.0.0.1:80", True),
        ("127.9.9.9", True),
        ("[::1]:8080", True),
        ("evil.localhost", False),
        ("attacker.example:8080", False),
        ("10.0.0.1", False),
        ("[::1", True),
        ("", False),
    ],
)
def test_loopback_host_names(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_host_and_origin_checks(start_fake: StartFake, tmp_path: Path) -> None:
    _, port = _start(start_fake, tmp_path, tokens=False)
    url = f"http://127.0.0.1:{port}/v1/embeddings"
    body = {"input": "x"}
    rebound = httpx.post(url, json=body, headers={"Host": f"attacker.example:{port}"})
    assert rebound.status_code == 421 and rebound.json()["error"]["code"] == "host_not_allowed"
    assert (
        httpx.get(url.replace("/v1/embeddings", "/healthz"), headers={"Host": "evil"}).status_code
        == 421
    )
    assert httpx.post(url, json=body, headers={"Host": f"localhost:{port}"}).status_code == 200
    foreign = httpx.post(url, json=body, headers={"Origin": "https://attacker.example"})
    assert foreign.status_code == 403 and foreign.json()["error"]["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in foreign.headers
    assert httpx.post(url, json=body, headers={"Origin": "null"}).status_code == 403
    same = httpx.post(url, json=body, headers={"Origin": f"http://127.0.0.1:{port}"})
    assert same.status_code == 200
    preflight = httpx.options(url, headers={"Origin": f"http://127.0.0.1:{port}"})
    assert "access-control-allow-origin" not in preflight.headers


def test_a_server_on_all_interfaces_takes_any_host(start_fake: StartFake, tmp_path: Path) -> None:
    _, port = _start(start_fake, tmp_path, "--host", "0.0.0.0", tokens=False)
    answer = httpx.post(
        f"http://127.0.0.1:{port}/v1/embeddings",
        json={"input": "x"},
        headers={"Host": "hubless.internal"},
    )
    assert answer.status_code == 200


def test_embeddings_errors_name_input(start_fake: StartFake, tmp_path: Path) -> None:
    _, port = _start(start_fake, tmp_path, "--max-texts", "2", tokens=False)
    url = f"http://127.0.0.1:{port}/v1/embeddings"
    blank = httpx.post(url, json={"input": ["ok", "  "]}).json()["error"]
    assert blank["param"] == "input[1]" and blank["message"].startswith("input[1] ")
    assert "texts" not in blank["message"]
    many = httpx.post(url, json={"input": ["a", "b", "c"]}).json()["error"]
    assert many["param"] == "input" and many["message"].startswith("input has 3 entries")
    assert "--max-texts" in many["message"]


# ---- open files ---------------------------------------------------------------------------


def test_open_files_limit_and_accept_errors(monkeypatch: Any) -> None:
    import asyncio
    import errno
    import resource

    from hubless_server.transport import open_files

    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda _: (256, 4096))
    monkeypatch.setattr(resource, "setrlimit", lambda _, limits: calls.append(limits))
    assert open_files.raise_open_files_limit() == (256, 4096, 4096)
    assert calls == [(4096, 4096)]

    def refuse(_: int, limits: tuple[int, int]) -> None:
        raise ValueError("not allowed")

    monkeypatch.setattr(resource, "setrlimit", refuse)
    assert open_files.raise_open_files_limit() == (256, 256, 4096)

    now = [0.0]
    seen: list[dict[str, Any]] = []
    throttle = open_files.LoopErrorThrottle(
        lambda loop, ctx: seen.append(ctx), clock=lambda: now[0]
    )
    loop = asyncio.new_event_loop()
    try:
        emfile = OSError(errno.EMFILE, "Too many open files")
        context = {"message": "socket.accept() out of system resource", "exception": emfile}
        for _ in range(1000):
            throttle(loop, context)
        assert len(seen) == 1
        now[0] = 61
        throttle(loop, context)
        assert len(seen) == 2 and "999 more" in seen[1]["message"]
    finally:
        loop.close()
