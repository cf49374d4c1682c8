"""TLS, mutual TLS, bearer tokens, the plaintext health port, rotations and the per-caller
limit, through the Python client against real ``hubless-serve`` processes (tiny models).

One server with TLS and tokens (reflection on: open without a token), one with mutual TLS
and no reflection; certificates from throwaway CAs (trustme). Bad files must stop the process
with exit status 2 and a message naming the file.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from hubless_client import (
    AsyncClient,
    Client,
    ErrorReason,
    HealthStatus,
    HublessError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from hubless_fakehub.stack import ServerProcess, free_port
from hubless_fakehub.tiny import TinyModel
from hubless_server.transport.auth import caller_id
from tests.e2e import procs
from tests.support.volume import make_volume

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MODEL = "all-minilm-l6-v2"
TOKEN_A, TOKEN_B = "token-a-0123456789abcdef", "token-b-0123456789abcdef"
#: No pooled connections between clients: every new client makes a new TLS handshake.
FRESH = [("grpc.use_local_subchannel_pool", 1)]


def _write_pair(ca: trustme.CA, cert_file: Path, key_file: Path) -> None:
    """Issue a localhost certificate and replace both files atomically, key first."""
    cert = ca.issue_cert("localhost", "127.0.0.1")
    for path, data in (
        (key_file, cert.private_key_pem.bytes()),
        (cert_file, b"".join(blob.bytes() for blob in cert.cert_chain_pems)),
    ):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class Secured:
    """A running server with its files."""

    process: ServerProcess
    health_port: int
    metrics_port: int
    server_ca: trustme.CA
    cert_file: Path
    key_file: Path
    token_file: Path | None
    client_ca: trustme.CA | None

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def target(self) -> str:
        return f"localhost:{self.port}"

    def client(self, **kwargs: Any) -> Client:
        options: dict[str, Any] = {
            "timeout": 30.0,
            "root_certificates": self.server_ca.cert_pem.bytes(),
            "retries": False,
            "options": FRESH,
        }
        options.update(kwargs)
        return Client(self.target, **options)

    def log(self) -> str:
        return self.process.log_text()


@pytest.fixture(scope="module")
def volume(tiny_models: dict[str, TinyModel], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_volume(tmp_path_factory.mktemp("security") / "models", [tiny_models[MODEL]])


def _start(workdir: Path, models: Path, extra: list[str], **files: Any) -> Secured:
    """The server with ``extra``, ready once its plaintext health port (which answers the
    same statuses as the TLS port) says SERVING."""
    health_port, metrics_port = free_port(), free_port()
    args = ["--tasks", "embedding", "--log-format", "json", "--health-port", str(health_port)]
    args += ["--metrics-port", str(metrics_port), *extra]

    def ready(_: ServerProcess) -> bool:
        with Client(f"127.0.0.1:{health_port}", timeout=5, retries=False) as plain:
            try:
                return plain.health() is HealthStatus.SERVING
            except HublessError:
                return False

    process = procs.start_server(models, workdir, extra_args=args, ready=ready)
    return Secured(process, health_port, metrics_port, **files)


@pytest.fixture(scope="module")
def tls_server(volume: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """TLS, tokens (reflection open), at most 1 call in flight per caller."""
    root = tmp_path_factory.mktemp("tls-server")
    ca = trustme.CA()
    cert_file, key_file, token_file = root / "tls.crt", root / "tls.key", root / "tokens"
    _write_pair(ca, cert_file, key_file)
    _replace(token_file, f"# clients\n{TOKEN_A}\n{TOKEN_B}\n")
    extra = [
        *("--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file)),
        *("--auth-token-file", str(token_file), "--max-caller-concurrency", "1"),
    ]
    files = {"cert_file": cert_file, "key_file": key_file, "token_file": token_file}
    server = _start(root / "run", volume, extra, server_ca=ca, client_ca=None, **files)
    yield server
    server.process.stop()


@pytest.fixture(scope="module")
def mtls_server(volume: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """Mutual TLS, no tokens, no reflection."""
    root = tmp_path_factory.mktemp("mtls-server")
    server_ca, client_ca = trustme.CA(), trustme.CA()
    cert_file, key_file, ca_file = root / "tls.crt", root / "tls.key", root / "client-ca.pem"
    _write_pair(server_ca, cert_file, key_file)
    ca_file.write_bytes(client_ca.cert_pem.bytes())
    extra = [
        *("--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file)),
        *("--tls-client-ca-file", str(ca_file), "--no-reflection"),
    ]
    files = {"cert_file": cert_file, "key_file": key_file, "token_file": None}
    server = _start(root / "run", volume, extra, server_ca=server_ca, client_ca=client_ca, **files)
    yield server
    server.process.stop()


def _reflection_services(channel: grpc.Channel) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (reply,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    return [s.name for s in reply.list_services_response.service]


def test_tokens_over_tls(tls_server: Secured) -> None:
    with tls_server.client() as anonymous:
        assert anonymous.health() is HealthStatus.SERVING  # health needs no token
        with pytest.raises(Unauthenticated) as info:
            anonymous.embed(["hello"])
        assert info.value.reason is ErrorReason.UNAUTHENTICATED
        assert "authorization: Bearer" in info.value.details
    with tls_server.client(token="not-a-token") as wrong, pytest.raises(Unauthenticated):
        wrong.embed(["hello"])
    with tls_server.client(token=TOKEN_A) as right:
        assert right.embed(["hello"]).model.name == MODEL
        assert right.health() is HealthStatus.SERVING
    # Plaintext to the TLS port fails; the health port is plaintext and serves health only.
    with (
        Client(f"127.0.0.1:{tls_server.port}", timeout=5, retries=False) as plain,
        pytest.raises(Unavailable),
    ):
        plain.health()
    with Client(f"127.0.0.1:{tls_server.health_port}", timeout=5, retries=False) as health:
        assert health.health("hubless.v1.EmbeddingsService") is HealthStatus.SERVING
        with pytest.raises(HublessError) as denied:
            health.list_models()
        assert denied.value.code is grpc.StatusCode.UNIMPLEMENTED
    # Reflection is open by default (no --auth-reflection).
    credentials = grpc.ssl_channel_credentials(tls_server.server_ca.cert_pem.bytes())
    with grpc.secure_channel(tls_server.target, credentials) as channel:
        assert "hubless.v1.EmbeddingsService" in _reflection_services(channel)


def test_access_log_names_callers_never_tokens(tls_server: Secured) -> None:
    with tls_server.client(token=TOKEN_B) as client:
        client.embed(["logged"])
    deadline = time.monotonic() + 10
    while True:
        records = [json.loads(line) for line in tls_server.log().splitlines() if line[:1] == "{"]
        access = [r for r in records if r.get("logger") == "hubless_server.access"]
        if any(r["caller"] == caller_id(TOKEN_B) for r in access) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert any(r["caller"] == caller_id(TOKEN_B) and r["code"] == "OK" for r in access)
    text = tls_server.log()
    assert TOKEN_A not in text and TOKEN_B not in text
    listening = next(r for r in records if r["msg"].startswith("listening on"))
    assert (listening["transport"], listening["auth"]) == ("tls", "token")


def test_caller_limit(tls_server: Secured) -> None:
    """A burst from one caller (limit 1) is partly refused with CALLER_LIMIT; a burst from
    two callers at once refuses neither's first call."""
    texts = [f"text number {i} " * 20 for i in range(64)]

    async def burst() -> list[BaseException | object]:
        async with AsyncClient(
            tls_server.target,
            timeout=60,
            root_certificates=tls_server.server_ca.cert_pem.bytes(),
            token=TOKEN_A,
            retries=False,
        ) as client:
            calls = [client.embed(texts) for _ in range(12)]
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(burst())
    refused = [r for r in results if isinstance(r, ResourceExhausted)]
    served = [r for r in results if not isinstance(r, BaseException)]
    assert refused and served, results
    assert len(refused) + len(served) == len(results), results
    error = refused[0]
    assert error.reason is ErrorReason.CALLER_LIMIT
    assert error.metadata["limit"] == "--max-caller-concurrency"
    assert error.metadata["limit_value"] == "1"
    assert error.retry_delay is not None and error.retry_delay > 0


def test_token_rotation_without_restart(tls_server: Secured) -> None:
    assert tls_server.token_file is not None
    new_token = "token-c-0123456789abcdef"
    _replace(tls_server.token_file, f"{new_token}\n{TOKEN_B}\n")
    time.sleep(1.2)  # the file is checked at most once a second
    try:
        with tls_server.client(token=new_token) as client:
            deadline = time.monotonic() + 10
            while True:
                try:
                    assert client.embed(["rotated"]).model.name == MODEL
                    break
                except Unauthenticated:
                    assert time.monotonic() < deadline
                    time.sleep(0.3)
        with tls_server.client(token=TOKEN_A) as old, pytest.raises(Unauthenticated):
            old.embed(["revoked"])
    finally:
        _replace(tls_server.token_file, f"{TOKEN_A}\n{TOKEN_B}\n")
        time.sleep(1.2)


def _metrics_status(server: Secured, ca: trustme.CA) -> int:
    context = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
    raw = socket.create_connection(("127.0.0.1", server.metrics_port), timeout=5)
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        return int(tls.recv(64).split()[1])


def test_certificate_rotation_without_restart(tls_server: Secured) -> None:
    """New files: new connections (gRPC and metrics) see the new certificate."""
    old_ca, new_ca = tls_server.server_ca, trustme.CA()
    assert _metrics_status(tls_server, old_ca) == 200
    _write_pair(new_ca, tls_server.cert_file, tls_server.key_file)
    tls_server.server_ca = new_ca
    try:
        with tls_server.client(token=TOKEN_B) as client:
            assert client.embed(["new certificate"]).model.name == MODEL
        old_root = old_ca.cert_pem.bytes()
        with (
            tls_server.client(token=TOKEN_B, root_certificates=old_root) as old,
            pytest.raises(Unavailable),
        ):
            old.embed(["old CA"])
        assert _metrics_status(tls_server, new_ca) == 200
        with pytest.raises(ssl.SSLError):
            _metrics_status(tls_server, old_ca)
    finally:
        _write_pair(old_ca, tls_server.cert_file, tls_server.key_file)
        tls_server.server_ca = old_ca


def test_mutual_tls(mtls_server: Secured, tmp_path: Path) -> None:
    assert mtls_server.client_ca is not None
    good = mtls_server.client_ca.issue_cert("client-a")
    cert_path, key_path = tmp_path / "client.crt", tmp_path / "client.key"
    cert_path.write_bytes(good.cert_chain_pems[0].bytes())
    key_path.write_bytes(good.private_key_pem.bytes())
    # The right certificate, as paths: served.
    with mtls_server.client(client_cert=cert_path, client_key=key_path) as client:
        assert client.embed(["mutual"]).model.name == MODEL
    # No certificate, or one from a CA the server does not trust: the handshake fails.
    untrusted = trustme.CA().issue_cert("client-b")
    with mtls_server.client(timeout=5) as anonymous, pytest.raises(Unavailable):
        anonymous.health()
    with (
        mtls_server.client(
            timeout=5,
            client_cert=untrusted.cert_chain_pems[0].bytes(),
            client_key=untrusted.private_key_pem.bytes(),
        ) as stranger,
        pytest.raises(Unavailable),
    ):
        stranger.health()
    # The plaintext health port needs no certificate.
    with Client(f"127.0.0.1:{mtls_server.health_port}", timeout=5, retries=False) as health:
        assert health.health() is HealthStatus.SERVING
    # The health probe, over mutual TLS.
    probe = procs.console_script("hubless-health-probe")
    ca_file = tmp_path / "server-ca.pem"
    ca_file.write_bytes(mtls_server.server_ca.cert_pem.bytes())
    tls_args = [
        "--ca-file",
        str(ca_file),
        "--cert-file",
        str(cert_path),
        "--key-file",
        str(key_path),
    ]
    done = subprocess.run(
        [probe, "--target", mtls_server.target, *tls_args], capture_output=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    done = subprocess.run(
        [probe, "--target", mtls_server.target, "--ca-file", str(ca_file)],
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 1
    # --no-reflection: nothing answers reflection.
    credentials = grpc.ssl_channel_credentials(
        mtls_server.server_ca.cert_pem.bytes(),
        good.private_key_pem.bytes(),
        good.cert_chain_pems[0].bytes(),
    )
    with grpc.secure_channel(mtls_server.target, credentials) as channel:
        with pytest.raises(grpc.RpcError) as info:
            _reflection_services(channel)
        assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED


def _serve_and_fail(volume: Path, tmp_path: Path, *flags: str) -> str:
    """Run hubless-serve with ``flags``; it must exit 2 at once. Its log."""
    args = procs.server_args(volume, tmp_path / "port", list(flags))
    env = procs.child_env(tmp_path / "hf-home", HF_HUB_OFFLINE="1")
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert not (tmp_path / "port").exists()
    return done.stderr


def test_bad_files_exit_2_naming_the_file(volume: Path, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    _write_pair(ca, cert_file, key_file)
    other_cert, other_key = tmp_path / "other.crt", tmp_path / "other.key"
    _write_pair(trustme.CA(), other_cert, other_key)

    err = _serve_and_fail(
        volume, tmp_path, "--tls-cert-file", str(cert_file), "--tls-key-file", str(other_key)
    )
    assert "do not form a valid pair" in err and str(other_key) in err
    missing = tmp_path / "absent.crt"
    err = _serve_and_fail(
        volume, tmp_path, "--tls-cert-file", str(missing), "--tls-key-file", str(key_file)
    )
    assert f"--tls-cert-file {missing}: cannot read" in err
    junk = tmp_path / "junk.pem"
    junk.write_text("not pem")
    flags = ["--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file)]
    err = _serve_and_fail(volume, tmp_path, *flags, "--tls-client-ca-file", str(junk))
    assert f"--tls-client-ca-file {junk}" in err
    err = _serve_and_fail(volume, tmp_path, "--auth-token-file", str(tmp_path / "no-tokens"))
    assert "--auth-token-file" in err and "no-tokens" in err
    err = _serve_and_fail(volume, tmp_path, "--tls-cert-file", str(cert_file))
    assert "--tls-cert-file and --tls-key-file go together" in err
