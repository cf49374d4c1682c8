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
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from hubless_server.transport import refusals as refusals_module
from hubless_server.transport.auth import (
    TokenFile,
    TokenFileError,
    bearer_token,
    caller_id,
    parse_tokens,
)
from hubless_server.transport.interceptor import HublessInterceptor
from hubless_server.transport.refusals import FAILURES_ALLOWED, WINDOW_S, Refusals, address_of
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
    path.write_text(
        "# service A\nalpha-token-0123456789\n\n  # service B\n beta-token-0123456789 \n"
    )
    yield path


def test_token_file_parsing_and_errors(token_file: Path, tmp_path: Path) -> None:
    tokens = TokenFile(token_file)
    assert tokens.count == 2
    assert tokens.accepts("alpha-token-0123456789") and tokens.accepts("beta-token-0123456789")
    assert not tokens.accepts("alpha") and not tokens.accepts("")
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n\n")
    with pytest.raises(TokenFileError, match="no token"):
        TokenFile(empty)
    with pytest.raises(TokenFileError, match="cannot read"):
        TokenFile(tmp_path / "absent")
    assert (
        caller_id("alpha-token-0123456789")
        == caller_id("alpha-token-0123456789")
        != caller_id("beta-token-0123456789")
    )
    assert "alpha" not in caller_id("alpha-token-0123456789")


def test_token_rotation_and_bad_rewrite(token_file: Path) -> None:
    now = [0.0]
    tokens = TokenFile(token_file, clock=lambda: now[0])
    token_file.write_text("gamma-token-0123456789\n")
    os.utime(token_file, ns=(10**18, 10**18))
    assert tokens.accepts("alpha-token-0123456789")  # checked at most once a second
    now[0] = 2.0
    assert tokens.accepts("gamma-token-0123456789") and not tokens.accepts("alpha-token-0123456789")
    token_file.write_text("")  # emptied by mistake: keep the last good tokens
    now[0] = 4.0
    assert tokens.accepts("gamma-token-0123456789")


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
    interceptor = HublessInterceptor(tokens=TokenFile(token_file))
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
            ok = await _echo(
                server.port, root, metadata=(("authorization", "Bearer beta-token-0123456789"),)
            )
            assert ok == b"ping"
            creds = grpc.ssl_channel_credentials(root)
            async with grpc.aio.secure_channel(f"localhost:{server.port}", creds) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING

    _run(scenario())


# ---- refusals -----------------------------------------------------------------------------


def test_refusals_back_off_per_address_and_log_once_per_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [0.0]
    refusals = Refusals(clock=lambda: now[0])
    a, b = "ipv4:10.0.0.1:5000", "ipv4:10.0.0.2:5000"
    notes = [refusals.note(a) for _ in range(FAILURES_ALLOWED)]
    assert notes[0] == (None, 0) and notes[1:] == [(None, None)] * (FAILURES_ALLOWED - 1)
    now[0] = 4.0
    backoff, line = refusals.note("ipv4:10.0.0.1:6000")  # another port, same address
    assert backoff == pytest.approx(WINDOW_S - 4.0) and line is None
    assert refusals.note(b) == (None, 0)  # other addresses are not held back
    now[0] = WINDOW_S + 1  # a new window: not backed off, and a line due, with the count
    assert refusals.note(a) == (None, FAILURES_ALLOWED)
    # IPv6: one /64 is one address.
    assert address_of("ipv6:[2001:db8::1]:443") == address_of("ipv6:[2001:db8::ffff:2]:1")
    assert address_of("ipv6:[2001:db8:0:1::1]:443") != address_of("ipv6:[2001:db8::1]:443")
    # Lines in all are capped per window, and so is the memory of addresses.
    monkeypatch.setattr(refusals_module, "LINES_PER_WINDOW", 3)
    monkeypatch.setattr(refusals_module, "MAX_ADDRESSES", 50)
    now[0] = 100.0
    lines = [refusals.note(f"ipv4:10.1.0.{i}:1")[1] for i in range(200)]
    assert sum(line is not None for line in lines) == 3
    assert len(refusals._addresses) <= 50


# ---- token file rules ---------------------------------------------------------------------

GOOD = "good-token-0123456789"


def test_hash_is_part_of_a_token_and_comments_are_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"  # a comment, indented\ndelta#Zk9-0123456789abc\n\n{GOOD}\n")
    tokens = TokenFile(path)
    assert tokens.count == 2
    assert tokens.accepts("delta#Zk9-0123456789abc") and not tokens.accepts("delta")
    assert parse_tokens("#only a comment\n") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"{GOOD}\nshort-token\n", r"line 2: the token has 11 characters, fewer than the 16"),
        (f"{GOOD}  # service B\n", r"line 1: a token cannot contain spaces; '#' starts a comment"),
        (f"# x\n{GOOD}é\n", r"line 2: a token must be printable ASCII"),
        (f"{GOOD}\n{GOOD}", r"line 2, the last, does not end with a newline"),
    ],
)
def test_bad_token_files_are_refused_naming_file_and_line(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "tokens"
    path.write_text(text)
    with pytest.raises(TokenFileError, match=message) as info:
        TokenFile(path)
    assert str(path) in str(info.value) and "short-token" not in str(info.value)


def test_a_bad_token_file_fails_the_start_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{GOOD}\nabc\n")
    (tmp_path / "models").mkdir()
    argv = ["--models-dir", str(tmp_path / "models"), "--auth-token-file", str(path)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBLESS_")}
    proc = subprocess.run(
        [sys.executable, "-m", "hubless_server", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"{path}: line 2: the token has 3 characters" in proc.stderr


class _ChangedWhileRead(TokenFile):
    """A token file a writer rewrites while the server reads it (once)."""

    then: str | None = None

    def _read(self) -> Any:
        tokens = super()._read()
        if self.then is not None:
            self.path.write_text(self.then)
            os.utime(self.path, ns=(10**18 + 5, 10**18 + 5))
            self.then = None
        return tokens


def test_rereads_never_take_a_bad_or_partial_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{GOOD}\n")
    now = [0.0]
    tokens = _ChangedWhileRead(path, clock=lambda: now[0])

    def rewrite(text: str, stamp: int) -> None:
        path.write_text(text)
        os.utime(path, ns=(stamp, stamp))
        now[0] += 2  # past the once-a-second check

    new = "new-token-0123456789abc"
    with caplog.at_level("WARNING", logger="hubless_server.transport.auth"):
        rewrite(f"{new}\nshort\n", 10**18)  # a short token: refused, old tokens kept
        assert tokens.accepts(GOOD) and not tokens.accepts(new)
        assert any(r.levelname == "ERROR" and "line 2" in r.getMessage() for r in caplog.records)
        rewrite(f"{GOOD}\n{new}", 10**18 + 1)  # half written: no final newline yet
        assert tokens.accepts(GOOD) and not tokens.accepts(new)
        rewrite(f"{new}\n", 10**18 + 2)  # complete: taken
        assert tokens.accepts(new) and not tokens.accepts(GOOD)
    # A file that changes while it is read is read again at the next check, not used.
    tokens.then = f"{GOOD}\n"
    rewrite("other-token-0123456789\n", 10**18 + 3)
    assert tokens.accepts(new) and not tokens.accepts("other-token-0123456789")
    now[0] += 2
    assert tokens.accepts(GOOD) and not tokens.accepts(new)


# ---- the SSLContext of the other ports ------------------------------------------------------


def _tls_hello(port: int, root: bytes, client: tuple[bytes, bytes], sni: bool) -> bytes | None:
    """What a TLS echo server answers to a fresh connection; None when TLS refuses it."""
    import socket
    import ssl

    key, chain = client
    context = ssl.create_default_context(cadata=root.decode())
    context.check_hostname = sni
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "k").write_bytes(key)
        (Path(tmp) / "c").write_bytes(chain)
        context.load_cert_chain(Path(tmp) / "c", Path(tmp) / "k")
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="localhost" if sni else None) as tls,
        ):
            tls.sendall(b"hi")
            return tls.recv(16) or None
    except (ssl.SSLError, ConnectionError):
        return None


def test_ssl_context_follows_a_new_pair_and_a_removed_client_ca(pki: dict[str, Any]) -> None:
    """One SSLContext for the life of the server: after a rotation, new connections (with or
    without SNI) get the new pair, and a client of the removed CA is refused."""
    tls = TLSFiles(pki["cert"], pki["key"], pki["client_ca"])
    new_server, new_clients = trustme.CA(), trustme.CA()
    issued = new_clients.issue_cert("client-c")
    new_client = (issued.private_key_pem.bytes(), issued.cert_chain_pems[0].bytes())
    old_root, new_root = pki["server_ca"].cert_pem.bytes(), new_server.cert_pem.bytes()

    async def scenario() -> None:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.read(16))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=tls.ssl_context())
        port = server.sockets[0].getsockname()[1]

        async def hello(root: bytes, client: tuple[bytes, bytes], sni: bool = True) -> Any:
            return await asyncio.to_thread(_tls_hello, port, root, client, sni)

        async with server:
            assert await hello(old_root, pki["good_client"]) == b"hi"
            assert await hello(old_root, pki["bad_client"]) is None
            staged = pki["dir"] / "staged"
            staged.mkdir()
            cert, key = _write_pair(new_server, staged)
            (staged / "ca.pem").write_bytes(new_clients.cert_pem.bytes())
            for src, dst in (
                (key, pki["key"]),
                (cert, pki["cert"]),
                (staged / "ca.pem", pki["client_ca"]),
            ):
                shutil.copy(src, dst.with_suffix(".tmp"))
                os.replace(dst.with_suffix(".tmp"), dst)
            assert tls.refresh()
            for sni in (True, False):
                assert await hello(new_root, new_client, sni) == b"hi"
                assert await hello(new_root, pki["good_client"], sni) is None  # CA removed
                assert await hello(old_root, new_client, sni) is None  # old pair gone

    _run(scenario())
