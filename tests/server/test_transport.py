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
from typing import Any

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from hubless.v1 import embeddings_pb2, embeddings_pb2_grpc
from hubless_server.core.flags import load_settings
from hubless_server.core.values import ConfigError
from hubless_server.transport import chain as transport_module
from hubless_server.transport.auth import caller_id
from hubless_server.transport.caller_limit import peer_host
from hubless_server.transport.chain import is_loopback
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
    tokens = _write_tokens(tmp_path / "tokens", "token-a", "token-b")
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
        first = _embed_future(server.channel, "token-a")
        _wait_until(lambda: FakeRuntime.batches)  # a's call is in the model, held
        with pytest.raises(grpc.RpcError) as info:
            _embed_future(server.channel, "token-a").result()
        details = details_of(info.value)
        assert (details.code, details.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "CALLER_LIMIT",
        )
        assert details.info.metadata["limit"] == "--max-caller-concurrency"
        assert details.info.metadata["limit_value"] == "1"
        assert details.retry is not None
        assert "--max-caller-concurrency=1" in (info.value.details() or "")
        other = _embed_future(server.channel, "token-b")  # another caller is not limited
        time.sleep(0.2)
        assert not other.done()
    finally:
        FakeRuntime.gate.set()
    assert first.result().model.name == "all-minilm-l6-v2"
    assert other.result().model.name == "all-minilm-l6-v2"
    # The slot is free again once the call is over.
    assert _embed_future(server.channel, "token-a").result().model.name == "all-minilm-l6-v2"


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
    tokens = _write_tokens(tmp_path / "tokens", "token-a")
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
    assert "hubless.v1.EmbeddingsService" in _list_services(protected.channel, "token-a")

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
    tokens = _write_tokens(tmp_path / "tokens", "secret-token-a")
    server = start_fake(
        ["all-minilm-l6-v2"], "--tasks", "embedding", "--auth-token-file", str(tokens)
    )
    with caplog.at_level("INFO", logger="hubless_server.access"):
        _embed_future(server.channel, "secret-token-a").result()
        _wait_until(lambda: any(r.name == "hubless_server.access" for r in caplog.records))
    (record,) = [r for r in caplog.records if r.name == "hubless_server.access"]
    assert record.fields["caller"] == caller_id("secret-token-a")  # type: ignore[attr-defined]
    assert "secret-token-a" not in repr(record.__dict__)


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
