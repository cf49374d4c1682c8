"""The transport wiring of HublessServer, in-process over fake runtimes: the per-caller limit
(deterministic, with a runtime held on a gate), token-protected reflection, the plaintext
health port beside a TLS port, and the metrics port following a certificate rotation with no
gRPC connection at all. The same features through the real process: tests/e2e/test_security.py.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from hubless.v1 import embeddings_pb2, embeddings_pb2_grpc
from hubless_server.core.flags import load_settings
from hubless_server.core.values import ConfigError
from hubless_server.observability import metrics
from hubless_server.transport import chain as transport_module
from hubless_server.transport import refusals as refusals_module
from hubless_server.transport.auth import caller_id
from hubless_server.transport.caller_limit import peer_host
from hubless_server.transport.chain import is_loopback
from hubless_server.transport.interceptor import HublessInterceptor
from tests.server.conftest import StartFake
from tests.server.fakes import FakeRuntime
from tests.server.rich_errors import details_of


def _embed_future(channel: grpc.Channel, token: str | None = None) -> Any:
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    stub = embeddings_pb2_grpc.EmbeddingsServiceStub(channel)
    return stub.Embed.future(
        embeddings_pb2.EmbedRequest(texts=["hello"]), timeout=20, metadata=metadata
    )


def _wait_until(predicate: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _write_tokens(path: Path, *tokens: str) -> Path:
    path.write_text("".join(f"{t}\n" for t in tokens))
    return path


def test_caller_limit_by_token(start_fake: StartFake, tmp_path: Path) -> None:
    tokens = _write_tokens(tmp_path / "tokens", "token-a-0123456789", "token-b-0123456789")
    server = start_fake(
        ["all-minilm-l6-v2"],
        "--tasks",
        "embedding",
        "--auth-token-file",
        str(tokens),
        "--max-caller-concurrency",
        "1",
    )
    FakeRuntime.gate = threading.Event()
    try:
        first = _embed_future(server.channel, "token-a-0123456789")
        _wait_until(lambda: FakeRuntime.batches)  # a's call is in the model, held
        with pytest.raises(grpc.RpcError) as info:
            _embed_future(server.channel, "token-a-0123456789").result()
        details = details_of(info.value)
        assert (details.code, details.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "CALLER_LIMIT",
        )
        assert details.info.metadata["limit"] == "--max-caller-concurrency"
        assert details.info.metadata["limit_value"] == "1"
        assert details.retry is not None
        assert "--max-caller-concurrency=1" in (info.value.details() or "")
        other = _embed_future(server.channel, "token-b-0123456789")  # another caller is not limited
        time.sleep(0.2)
        assert not other.done()
    finally:
        FakeRuntime.gate.set()
    assert first.result().model.name == "all-minilm-l6-v2"
    assert other.result().model.name == "all-minilm-l6-v2"
    # The slot is free again once the call is over.
    assert (
        _embed_future(server.channel, "token-a-0123456789").result().model.name
        == "all-minilm-l6-v2"
    )


def test_caller_limit_by_client_address_without_tokens(start_fake: StartFake) -> None:
    server = start_fake(
        ["all-minilm-l6-v2"], "--tasks", "embedding", "--max-caller-concurrency", "1"
    )
    FakeRuntime.gate = threading.Event()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as second_connection:
        try:
            first = _embed_future(server.channel)
            _wait_until(lambda: FakeRuntime.batches)
            # Another connection from the same address is the same caller.
            with pytest.raises(grpc.RpcError) as info:
                _embed_future(second_connection).result()
            assert details_of(info.value).reason == "CALLER_LIMIT"
            # Health checks never count.
            health = health_pb2_grpc.HealthStub(second_connection)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
        finally:
            FakeRuntime.gate.set()
        assert first.result().model.name == "all-minilm-l6-v2"


def _list_services(channel: grpc.Channel, token: str | None = None) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (reply,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5, metadata=metadata))
    return [s.name for s in reply.list_services_response.service]


def test_reflection_open_protected_or_off(start_fake: StartFake, tmp_path: Path) -> None:
    tokens = _write_tokens(tmp_path / "tokens", "token-a-0123456789")
    server = start_fake(
        ["all-minilm-l6-v2"], "--tasks", "embedding", "--auth-token-file", str(tokens)
    )
    assert "hubless.v1.EmbeddingsService" in _list_services(server.channel)
    with pytest.raises(grpc.RpcError) as info:
        _embed_future(server.channel).result()
    assert details_of(info.value).reason == "UNAUTHENTICATED"

    protected = start_fake(
        ["all-minilm-l6-v2"],
        "--tasks",
        "embedding",
        "--auth-token-file",
        str(tokens),
        "--auth-reflection",
    )
    with pytest.raises(grpc.RpcError) as info:
        _list_services(protected.channel)
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "hubless.v1.EmbeddingsService" in _list_services(protected.channel, "token-a-0123456789")

    off = start_fake(["all-minilm-l6-v2"], "--tasks", "embedding", "--no-reflection")
    with pytest.raises(grpc.RpcError) as info:
        _list_services(off.channel)
    assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED


def _pki(dest: Path, ca: trustme.CA) -> tuple[Path, Path]:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_file, key_file = dest / "server.crt", dest / "server.key"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key_file.write_bytes(cert.private_key_pem.bytes())
    return cert_file, key_file


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _https_metrics(port: int, ca: trustme.CA) -> int:
    context = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        return int(tls.recv(64).split()[1])


def test_health_port_and_metrics_follow_a_rotation(
    start_fake: StartFake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport_module, "TLS_REFRESH_S", 0.2)
    old_ca, new_ca = trustme.CA(), trustme.CA()
    cert_file, key_file = _pki(tmp_path, old_ca)
    staged = tmp_path / "staged"
    staged.mkdir()
    new_cert, new_key = _pki(staged, new_ca)
    health_port, metrics_port = _free_port(), _free_port()
    server = start_fake(
        ["all-minilm-l6-v2"],
        "--tasks",
        "embedding",
        "--tls-cert-file",
        str(cert_file),
        "--tls-key-file",
        str(key_file),
        "--health-port",
        str(health_port),
        "--metrics-port",
        str(metrics_port),
    )
    assert server.server.transport is not None
    assert server.server.transport.health_port == health_port
    with grpc.insecure_channel(f"127.0.0.1:{health_port}") as plain:
        reply = health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:  # only health is served there
            _embed_future(plain).result()
        assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(grpc.RpcError) as info:  # the main port speaks TLS only
        _embed_future(server.channel).result()
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert _https_metrics(metrics_port, old_ca) == 200

    # Rotate with no gRPC connection at all: the periodic refresh alone moves the metrics port.
    for src, dst in ((new_key, key_file), (new_cert, cert_file)):
        shutil.copy(src, dst.with_suffix(".tmp"))
        os.replace(dst.with_suffix(".tmp"), dst)
    _wait_until(lambda: server.server.transport.tls.reloads >= 1)  # type: ignore[union-attr]
    assert _https_metrics(metrics_port, new_ca) == 200
    with pytest.raises(ssl.SSLError):
        _https_metrics(metrics_port, old_ca)


def test_settings_validation() -> None:
    base = ["--models-dir", "/m"]
    for argv, message in (
        (["--tls-cert-file", "c.pem"], "go together"),
        (["--tls-key-file", "k.pem"], "go together"),
        (["--tls-client-ca-file", "ca.pem"], "needs --tls-cert-file"),
        (["--auth-reflection"], "needs --auth-token-file"),
        (["--health-port", "50051"], "--health-port must differ from --port"),
        (["--max-caller-concurrency", "-1"], "must not be negative"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_settings(base + argv, {})
    s = load_settings(base, {"HUBLESS_REFLECTION": "0", "HUBLESS_HEALTH_PORT": "8081"})
    assert (s.reflection, s.health_port, s.metrics_host, s.auth_reflection) == (
        False,
        8081,
        "",
        False,
    )
    assert s.tls_cert_file is None and s.auth_token_file is None and s.max_caller_concurrency == 0


def test_helpers() -> None:
    assert peer_host("ipv4:10.0.0.7:41234") == "10.0.0.7"
    assert peer_host("ipv6:[::1]:5000") == "::1"
    assert peer_host("unix:/tmp/s") == "unix:/tmp/s"
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1")
    assert len(caller_id("x")) == 12


def test_access_log_names_the_caller_not_the_token(
    start_fake: StartFake, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tokens = _write_tokens(tmp_path / "tokens", "secret-token-a-0123456789")
    server = start_fake(
        ["all-minilm-l6-v2"], "--tasks", "embedding", "--auth-token-file", str(tokens)
    )
    with caplog.at_level("INFO", logger="hubless_server.access"):
        _embed_future(server.channel, "secret-token-a-0123456789").result()
        _wait_until(lambda: any(r.name == "hubless_server.access" for r in caplog.records))
    (record,) = [r for r in caplog.records if r.name == "hubless_server.access"]
    assert record.fields["caller"] == caller_id("secret-token-a-0123456789")  # type: ignore[attr-defined]
    assert "secret-token-a-0123456789" not in repr(record.__dict__)


def test_no_tokens_no_caller(start_fake: StartFake, caplog: pytest.LogCaptureFixture) -> None:
    server = start_fake(["all-minilm-l6-v2"], "--tasks", "embedding")
    with caplog.at_level("INFO", logger="hubless_server.access"):
        _embed_future(server.channel, "ignored").result()
        _wait_until(lambda: any(r.name == "hubless_server.access" for r in caplog.records))
    (record,) = [r for r in caplog.records if r.name == "hubless_server.access"]
    assert record.fields["caller"] == "-"  # type: ignore[attr-defined]


@pytest.mark.parametrize("bad", ["cert", "token", "health-port"])
def test_bad_files_or_ports_fail_the_start(tmp_path: Path, bad: str) -> None:
    """Bad TLS or token files fail the start before anything listens (exit 2 in the CLI); a
    health port in use fails it as OSError naming the address (exit 1)."""
    from hubless_server.app import HublessServer
    from hubless_server.transport.auth import TokenFileError
    from hubless_server.transport.tls import TLSConfigError
    from tests.server.fakes import fake_factory, make_fake_volume
    from tests.server.harness import settings_for

    volume = make_fake_volume(tmp_path / "v", ["all-minilm-l6-v2"])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        flags: tuple[str, ...] = ("--health-port", str(port))
        error: type[Exception] = OSError
        match = f"127.0.0.1:{port}"
        if bad == "cert":
            flags = ("--tls-cert-file", str(tmp_path / "absent.crt"), "--tls-key-file", "k")
            error, match = TLSConfigError, "--tls-cert-file .*absent.crt"
        elif bad == "token":
            flags = ("--auth-token-file", str(tmp_path / "absent"))
            error, match = TokenFileError, "--auth-token-file .*absent"
        settings = settings_for(volume, "--tasks", "embedding", *flags)

        async def scenario() -> None:
            server = HublessServer(settings, fake_factory, native_bf16=False)
            with pytest.raises(error, match=match):
                await server.start()
            await server.stop(0)

        asyncio.run(scenario())


# ---- the one interceptor ----------------------------------------------------------------


class _Details(NamedTuple):
    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


def test_each_method_handler_is_wrapped_once() -> None:
    """Per-method handlers are built once and cached while gRPC hands out the same handler;
    health and reflection handlers pass through as they are."""

    async def behavior(request: Any, context: Any) -> Any:
        return request

    served = grpc.unary_unary_rpc_method_handler(behavior)
    interceptor = HublessInterceptor()

    async def continuation(details: Any) -> Any:
        return served

    async def handlers(method: str) -> list[Any]:
        return [
            await interceptor.intercept_service(continuation, _Details(method, ())) for _ in "ab"
        ]

    first, second = asyncio.run(handlers("/hubless.v1.EmbeddingsService/Embed"))
    assert first is second and first is not served and first.unary_unary is not behavior
    health = asyncio.run(handlers("/grpc.health.v1.Health/Check"))
    assert health == [served, served]
    # Another table's handler (the HTTP door's) gets its own wrapper; both stay cached.
    grpc_handler, served = served, grpc.unary_unary_rpc_method_handler(behavior)
    (third, _) = asyncio.run(handlers("/hubless.v1.EmbeddingsService/Embed"))
    assert third is not first and third.unary_unary is not None
    served = grpc_handler
    assert asyncio.run(handlers("/hubless.v1.EmbeddingsService/Embed")) == [first, first]


def _requests(method: str, code: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "hubless_requests_total", {"method": method, "code": code}
    )
    return value or 0.0


def test_calls_are_counted_when_the_access_log_is_off(
    start_fake: StartFake, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_fake(["all-minilm-l6-v2"], "--tasks", "embedding")
    before = _requests("EmbeddingsService.Embed", "OK")
    with caplog.at_level("WARNING", logger="hubless_server.access"):
        for _ in range(3):
            _embed_future(server.channel).result()
    assert _requests("EmbeddingsService.Embed", "OK") == before + 3
    assert not [r for r in caplog.records if r.name == "hubless_server.access"]


# ---- refused calls: counted, logged once in a while, backed off --------------------------


def _refusals(method: str = "EmbeddingsService.Embed") -> dict[str, float]:
    return {code: _requests(method, code) for code in ("UNAUTHENTICATED", "RESOURCE_EXHAUSTED")}


def test_wrong_token_calls_are_counted_logged_once_and_backed_off(
    start_fake: StartFake,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(refusals_module, "WINDOW_S", 3600.0)  # one window for the whole test
    token = "right-token-0123456789"
    tokens = _write_tokens(tmp_path / "tokens", token)
    server = start_fake(
        ["all-minilm-l6-v2"], "--tasks", "embedding", "--auth-token-file", str(tokens)
    )
    before = _refusals()
    stub = embeddings_pb2_grpc.EmbeddingsServiceStub(server.channel)
    request = embeddings_pb2.EmbedRequest(texts=["hello"])
    codes: list[grpc.StatusCode] = []
    with caplog.at_level("INFO", logger="hubless_server.access"):
        for _ in range(200):
            with pytest.raises(grpc.RpcError) as info:
                stub.Embed(request, timeout=10, metadata=(("authorization", "Bearer wrong-guess"),))
            codes.append(info.value.code())
        # Backed off: the next refusal says when to retry; a right token still passes.
        with pytest.raises(grpc.RpcError) as info:
            stub.Embed(request, timeout=10)
        assert stub.Embed(request, timeout=10, metadata=(("authorization", f"Bearer {token}"),))
    after = _refusals()
    assert after["UNAUTHENTICATED"] - before["UNAUTHENTICATED"] == refusals_module.FAILURES_ALLOWED
    assert sum(after.values()) - sum(before.values()) == 201  # all 200, and the missing one
    assert codes[: refusals_module.FAILURES_ALLOWED] == [grpc.StatusCode.UNAUTHENTICATED] * 20
    assert set(codes[20:]) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    details = details_of(info.value)
    assert (details.code, details.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "UNAUTHENTICATED")
    assert details.retry is not None and "valid token" in (info.value.details() or "")
    lines = [r for r in caplog.records if r.name == "hubless_server.access"]
    refused = [r.fields for r in lines if r.fields["code"] != "OK"]  # type: ignore[attr-defined]
    assert len(refused) == 1  # one line per address per window
    (line,) = refused
    assert line["code"] == "UNAUTHENTICATED" and line["caller"] == "-"
    assert line["method"] == "EmbeddingsService.Embed" and line["suppressed"] == 0
    assert line["peer"].startswith("ipv4:127.0.0.1:")
    assert not any("wrong-guess" in repr(r.__dict__) for r in lines)


def test_refusals_of_unknown_methods_and_http_are_counted(
    start_fake: StartFake, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.server.http_calls import call, free_port

    tokens = _write_tokens(tmp_path / "tokens", "right-token-0123456789")
    port = free_port()
    server = start_fake(
        ["all-minilm-l6-v2"],
        "--tasks",
        "embedding",
        "--auth-token-file",
        str(tokens),
        "--http-port",
        str(port),
    )
    before = _refusals()
    url = f"http://127.0.0.1:{port}/v1/embeddings"
    with caplog.at_level("INFO", logger="hubless_server.access"):
        for _ in range(5):
            answer = call("POST", url, {"input": "hi"}, headers={"Authorization": "Bearer nope"})
            assert answer.status == 401
    assert _refusals()["UNAUTHENTICATED"] == before["UNAUTHENTICATED"] + 5
    unknown = _refusals("X.Nope")
    before = _refusals("unknown")
    with pytest.raises(grpc.RpcError) as info:  # a method not served: its name is no label
        server.channel.unary_unary("/hubless.v1.X/Nope")(b"", timeout=10)
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert _refusals("unknown")["UNAUTHENTICATED"] == before["UNAUTHENTICATED"] + 1
    assert _refusals("X.Nope") == unknown
    lines = [r.fields for r in caplog.records if r.name == "hubless_server.access"]  # type: ignore[attr-defined]
    # the door logs its refusals once per address and window (one line for the 5 calls); the
    # gRPC refusal has its own window, so at most one line more
    http = [(line["via"], line["code"]) for line in lines if line.get("via") == "http"]
    assert http == [("http", "UNAUTHENTICATED")]
    assert len(lines) <= 2 and all(line["code"] == "UNAUTHENTICATED" for line in lines)


# ---- a rotation reaches every port --------------------------------------------------------


def _grpc_health(port: int, root: trustme.CA, client: trustme.LeafCert) -> int:
    creds = grpc.ssl_channel_credentials(
        root.cert_pem.bytes(), client.private_key_pem.bytes(), client.cert_chain_pems[0].bytes()
    )
    with grpc.secure_channel(f"localhost:{port}", creds) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status)


def _https_status(port: int, path: str, root: trustme.CA, client: trustme.LeafCert) -> int | None:
    """The HTTP status of a GET on a fresh connection, None when TLS refuses it."""
    context = ssl.create_default_context(cadata=root.cert_pem.bytes().decode())
    client.configure_cert(context)
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(
                f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
            )
            head = tls.recv(64)
    except (ssl.SSLError, ConnectionError):
        return None
    return int(head.split()[1]) if head else None


def test_a_rotation_reaches_every_port_with_no_connection_in_between(
    start_fake: StartFake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key pair and the client CA are replaced, and no connection arrives for several
    refresh periods (the periodic refresh alone loads them); then fresh connections to the
    gRPC, HTTP and metrics ports all get the new certificate, and a client of the removed CA
    is refused on all three."""
    monkeypatch.setattr(transport_module, "TLS_REFRESH_S", 0.2)
    old_ca, new_ca = trustme.CA(), trustme.CA()
    old_clients, new_clients = trustme.CA(), trustme.CA()
    old_client, new_client = old_clients.issue_cert("old"), new_clients.issue_cert("new")
    cert_file, key_file = _pki(tmp_path, old_ca)
    client_ca = tmp_path / "client-ca.pem"
    client_ca.write_bytes(old_clients.cert_pem.bytes())
    metrics_port, http_port = _free_port(), _free_port()
    server = start_fake(
        ["all-minilm-l6-v2"],
        *("--tasks", "embedding", "--tls-cert-file", str(cert_file)),
        *("--tls-key-file", str(key_file), "--tls-client-ca-file", str(client_ca)),
        *("--metrics-port", str(metrics_port), "--http-port", str(http_port)),
    )
    tls = server.server.transport.tls  # type: ignore[union-attr]
    assert tls is not None
    plain = [(metrics_port, "/metrics"), (http_port, "/healthz")]
    assert _grpc_health(server.port, old_ca, old_client) == 1
    assert [_https_status(p, path, old_ca, old_client) for p, path in plain] == [200, 200]

    staged = tmp_path / "staged"
    staged.mkdir()
    new_cert, new_key = _pki(staged, new_ca)
    (staged / "client-ca.pem").write_bytes(new_clients.cert_pem.bytes())
    for src, dst in (
        (new_key, key_file),
        (new_cert, cert_file),
        (staged / "client-ca.pem", client_ca),
    ):
        shutil.copy(src, dst.with_suffix(".tmp"))
        os.replace(dst.with_suffix(".tmp"), dst)
    _wait_until(lambda: tls.reloads >= 1)
    time.sleep(5 * transport_module.TLS_REFRESH_S)  # refreshes with no connection at all

    assert _grpc_health(server.port, new_ca, new_client) == 1
    for client in (old_client,):
        with pytest.raises(grpc.RpcError) as info:
            _grpc_health(server.port, new_ca, client)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert [_https_status(p, path, new_ca, new_client) for p, path in plain] == [200, 200]
    assert [_https_status(p, path, new_ca, old_client) for p, path in plain] == [None, None]
    assert [_https_status(p, path, old_ca, new_client) for p, path in plain] == [None, None]
    assert tls.reloads == 1
