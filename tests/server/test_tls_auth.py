"""TLS, mTLS, certificate rotation and bearer tokens, on a real grpc.aio server over loopback.

The server here is a bare grpc.aio server with an echo method and the health service, so these
tests check :mod:`hubless_server.transport.tls` and :mod:`hubless_server.transport.auth` alone; the
wiring into
``hubless-serve`` is tested end to end elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from hubless_server.transport.auth import (
    AuthInterceptor,
    TokenFile,
    TokenFileError,
    bearer_token,
    caller_id,
)
from hubless_server.transport.tls import TLSConfigError, TLSFiles

ECHO = "/test.Echo/Echo"


def _write_pair(ca: trustme.CA, dest: Path, name: str = "server") -> tuple[Path, Path]:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_file, key_file = dest / f"{name}.crt", dest / f"{name}.key"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key_file.write_bytes(cert.private_key_pem.bytes())
    return cert_file, key_file


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    server_ca, client_ca, other_ca = trustme.CA(), trustme.CA(), trustme.CA()
    cert_file, key_file = _write_pair(server_ca, tmp_path)
    client_ca_file = tmp_path / "client-ca.pem"
    client_ca_file.write_bytes(client_ca.cert_pem.bytes())
    good = client_ca.issue_cert("client-a")
    bad = other_ca.issue_cert("client-b")
    return {
        "dir": tmp_path,
        "server_ca": server_ca,
        "cert": cert_file,
        "key": key_file,
        "client_ca": client_ca_file,
        "good_client": (good.private_key_pem.bytes(), good.cert_chain_pems[0].bytes()),
        "bad_client": (bad.private_key_pem.bytes(), bad.cert_chain_pems[0].bytes()),
    }


class _Server:
    def __init__(self, credentials: grpc.ServerCredentials, interceptors: list[Any]) -> None:
        self.credentials = credentials
        self.interceptors = interceptors
        self.port = 0
        self.server: grpc.aio.Server | None = None

    async def __aenter__(self) -> _Server:
        server = grpc.aio.server(interceptors=self.interceptors)

        async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return request

        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
                )
            ]
        )
        health = HealthServicer()
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        self.port = server.add_secure_port("127.0.0.1:0", self.credentials)
        await server.start()
        self.server = server
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        await self.server.stop(0)


async def _echo(
    port: int,
    root: bytes,
    client: tuple[bytes, bytes] | None = None,
    metadata: tuple[tuple[str, str], ...] = (),
) -> bytes:
    key, chain = client if client else (None, None)
    creds = grpc.ssl_channel_credentials(root, key, chain)
    async with grpc.aio.secure_channel(f"localhost:{port}", creds) as channel:
        call = channel.unary_unary(ECHO)
        return await call(b"ping", timeout=5, metadata=metadata)


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


def test_tls_serves_and_refuses_a_client_that_does_not_trust_it(pki: dict[str, Any]) -> None:
    tls = TLSFiles(pki["cert"], pki["key"])

    async def scenario() -> None:
        async with _Server(tls.grpc_credentials(), []) as server:
            assert await _echo(server.port, pki["server_ca"].cert_pem.bytes()) == b"ping"
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _echo(server.port, trustme.CA().cert_pem.bytes())
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE

    _run(scenario())


def test_mtls_requires_a_certificate_from_the_client_ca(pki: dict[str, Any]) -> None:
    tls = TLSFiles(pki["cert"], pki["key"], pki["client_ca"])
    root = pki["server_ca"].cert_pem.bytes()

    async def scenario() -> None:
        async with _Server(tls.grpc_credentials(), []) as server:
            assert await _echo(server.port, root, pki["good_client"]) == b"ping"
            for client in (None, pki["bad_client"]):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await _echo(server.port, root, client)
                assert info.value.code() is grpc.StatusCode.UNAVAILABLE

    _run(scenario())


def test_certificate_rotation_without_restart(pki: dict[str, Any]) -> None:
    tls = TLSFiles(pki["cert"], pki["key"])
    new_ca = trustme.CA()
    staged = pki["dir"] / "staged"
    staged.mkdir()
    new_cert, new_key = _write_pair(new_ca, staged)

    async def scenario() -> None:
        async with _Server(tls.grpc_credentials(), []) as server:
            assert await _echo(server.port, pki["server_ca"].cert_pem.bytes()) == b"ping"
            # A half-written rotation (new cert, old key) is refused and the old pair kept.
            shutil.copy(new_cert, pki["cert"])
            os.utime(pki["cert"], ns=(1, 1))
            assert await _echo(server.port, pki["server_ca"].cert_pem.bytes()) == b"ping"
            assert tls.reloads == 0
            shutil.copy(new_key, pki["key"])
            assert await _echo(server.port, new_ca.cert_pem.bytes()) == b"ping"
            assert tls.reloads == 1

    _run(scenario())


def test_bad_tls_files_fail_with_the_file_named(pki: dict[str, Any], tmp_path: Path) -> None:
    _, other_key = _write_pair(trustme.CA(), tmp_path, "other")
    with pytest.raises(TLSConfigError, match="do not form a valid pair"):
        TLSFiles(pki["cert"], other_key)
    with pytest.raises(TLSConfigError, match=r"--tls-cert-file .*cannot read"):
        TLSFiles(tmp_path / "absent.crt", pki["key"])
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(TLSConfigError, match=r"--tls-client-ca-file .*not PEM"):
        TLSFiles(pki["cert"], pki["key"], junk)


# ---- tokens -------------------------------------------------------------------------


@pytest.fixture
def token_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "tokens"
    path.write_text("# service A\nalpha-token\n\n beta-token  # service B\n")
    yield path


def test_token_file_parsing_and_errors(token_file: Path, tmp_path: Path) -> None:
    tokens = TokenFile(token_file)
    assert tokens.count == 2
    assert tokens.accepts("alpha-token") and tokens.accepts("beta-token")
    assert not tokens.accepts("alpha") and not tokens.accepts("")
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n\n")
    with pytest.raises(TokenFileError, match="no token"):
        TokenFile(empty)
    with pytest.raises(TokenFileError, match="cannot read"):
        TokenFile(tmp_path / "absent")
    assert caller_id("alpha-token") == caller_id("alpha-token") != caller_id("beta-token")
    assert "alpha" not in caller_id("alpha-token")


def test_token_rotation_and_bad_rewrite(token_file: Path) -> None:
    now = [0.0]
    tokens = TokenFile(token_file, clock=lambda: now[0])
    token_file.write_text("gamma-token\n")
    os.utime(token_file, ns=(10**18, 10**18))
    assert tokens.accepts("alpha-token")  # checked at most once a second
    now[0] = 2.0
    assert tokens.accepts("gamma-token") and not tokens.accepts("alpha-token")
    token_file.write_text("")  # emptied by mistake: keep the last good tokens
    now[0] = 4.0
    assert tokens.accepts("gamma-token")


def test_bearer_token_parsing() -> None:
    assert bearer_token((("authorization", "Bearer abc"),)) == "abc"
    assert bearer_token((("authorization", "bearer  abc "),)) == "abc"
    assert bearer_token((("authorization", "Basic abc"),)) is None
    assert bearer_token((("x-other", "Bearer abc"),)) is None
    assert bearer_token(None) is None


def test_interceptor_missing_wrong_right_and_health_open(
    pki: dict[str, Any], token_file: Path
) -> None:
    tls = TLSFiles(pki["cert"], pki["key"])
    interceptor = AuthInterceptor(TokenFile(token_file))
    root = pki["server_ca"].cert_pem.bytes()

    async def scenario() -> None:
        async with _Server(tls.grpc_credentials(), [interceptor]) as server:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _echo(server.port, root)
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert "authorization: Bearer" in (info.value.details() or "")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _echo(server.port, root, metadata=(("authorization", "Bearer nope"),))
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert "not accepted" in (info.value.details() or "")
            ok = await _echo(server.port, root, metadata=(("authorization", "Bearer beta-token"),))
            assert ok == b"ping"
            creds = grpc.ssl_channel_credentials(root)
            async with grpc.aio.secure_channel(f"localhost:{server.port}", creds) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING

    _run(scenario())
