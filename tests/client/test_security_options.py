"""Client security options: ``token=`` on every call, no token in clear text to another host,
TLS and mutual TLS material as bytes or paths. End to end against a TLS server:
tests/e2e/test_security.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from hubless_client import AsyncClient, Client
from hubless_client._common import (
    channel_credentials,
    is_loopback_host,
    is_loopback_target,
    target_hosts,
)
from tests.client.fake_server import FakeServer, Recorder


def test_token_is_sent_with_every_call(fake: FakeServer, recorder: Recorder) -> None:
    with Client(fake.target, timeout=10, token="s3cret", metadata={"x-tenant": "t1"}) as client:
        client.list_models()
        client.health()
        list(client.stream_reply(["hi"]))
    for method in ("ListModels", "StreamReply"):
        seen = recorder.metadata[method][0]
        assert seen["authorization"] == "Bearer s3cret" and seen["x-tenant"] == "t1"


def test_async_token(fake: FakeServer, recorder: Recorder) -> None:
    async def scenario() -> None:
        async with AsyncClient(fake.target, timeout=10, token="t0k") as client:
            await client.list_models()

    asyncio.run(scenario())
    assert recorder.metadata["ListModels"][0]["authorization"] == "Bearer t0k"


@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_no_token_in_clear_text_to_another_host(cls: type) -> None:
    with pytest.raises(ValueError, match="refusing to send a bearer token over plaintext"):
        cls("hubless.example:50051", token="t")
    with pytest.raises(ValueError, match="plaintext"):
        cls("10.0.0.7:50051", metadata={"authorization": "Bearer t"})


def test_token_allowed_where_it_cannot_leak() -> None:
    for target in ("127.0.0.1:50051", "localhost:1", "[::1]:1", "unix:/tmp/hubless.sock"):
        Client(target, token="t").close()
    Client("hubless.example:50051", token="t", tls=True).close()
    Client("hubless.example:50051", token="t", allow_insecure_token=True).close()


def test_bad_token_arguments() -> None:
    with pytest.raises(ValueError, match="without whitespace"):
        Client("127.0.0.1:1", token="two words")
    with pytest.raises(ValueError, match="not both"):
        Client("127.0.0.1:1", token="t", metadata={"Authorization": "Bearer u"})


def test_target_hosts() -> None:
    assert target_hosts("hubless:50051") == ["hubless"]
    assert target_hosts("[::1]:50051") == ["::1"]
    assert target_hosts("dns:///hubless.ns.svc:50051") == ["hubless.ns.svc"]
    assert target_hosts("dns:hubless:1") == ["hubless"]
    assert target_hosts("ipv4:127.0.0.1:5000") == ["127.0.0.1"]
    assert target_hosts("ipv4:127.0.0.1:1,10.0.0.1:2") == ["127.0.0.1", "10.0.0.1"]
    assert target_hosts("ipv6:[::1]:1,[fe80::1]:2") == ["::1", "fe80::1"]
    assert target_hosts("unix:/run/s.sock") == []
    assert target_hosts("localhost") == ["localhost"]
    # another resolver picks the addresses: unknown here
    assert target_hosts("dns://8.8.8.8/localhost:50051") is None
    assert target_hosts("xds:///hubless") is None
    assert target_hosts("vsock:3:50051") is None


@pytest.mark.parametrize(
    "host",
    ["localhost", "LOCALHOST", "localhost.", "127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"],
)
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize(
    "host",
    [
        "evil.localhost",
        "localhost.evil.com",
        "ip6-localhost",
        "0.0.0.0",
        "::",
        "10.0.0.1",
        "127.1",
        "2130706433",
        "",
        "localhost\x00.evil.com",
    ],
)
def test_not_loopback_hosts(host: str) -> None:
    assert not is_loopback_host(host)


@pytest.mark.parametrize(
    "target",
    [
        "ipv4:127.0.0.1:1,10.0.0.1:2",  # the second address is another machine
        "ipv4:10.0.0.1:2,127.0.0.1:1",
        "ipv6:[::1]:1,[2001:db8::1]:2",
        "evil.localhost:50051",
        "localhost.evil.com:50051",
        "dns://8.8.8.8/localhost:50051",
        "xds:///hubless",
        ":50051",
    ],
)
@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_no_token_in_clear_text_to_any_address_not_this_machine(cls: type, target: str) -> None:
    assert not is_loopback_target(target)
    with pytest.raises(ValueError, match="refusing to send a bearer token over plaintext"):
        cls(target, token="t")


def test_every_address_of_a_loopback_target_is_loopback() -> None:
    for target in ("ipv4:127.0.0.1:1,127.0.0.2:2", "ipv6:[::1]:1,[::1]:2", "dns:///localhost:1"):
        assert is_loopback_target(target)
        Client(target, token="t").close()


def test_tls_material_as_bytes_or_paths(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("client")
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "c.pem", tmp_path / "k.pem"
    ca_file.write_bytes(ca.cert_pem.bytes())
    cert_file.write_bytes(cert.cert_chain_pems[0].bytes())
    key_file.write_bytes(cert.private_key_pem.bytes())
    assert isinstance(
        channel_credentials(False, ca_file, cert_file, str(key_file)), grpc.ChannelCredentials
    )
    assert channel_credentials(False, None) is None
    with pytest.raises(ValueError, match="go together"):
        channel_credentials(True, None, cert_file, None)
    with pytest.raises(ValueError, match="cannot read"):
        channel_credentials(True, tmp_path / "absent.pem")
    with pytest.raises(ValueError, match="not both"):
        channel_credentials(grpc.ssl_channel_credentials(), None, cert_file, key_file)
