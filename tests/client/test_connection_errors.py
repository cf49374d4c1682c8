"""Errors the client makes itself: a server that cannot be reached is :class:`ConnectionFailed`
(reason ``UNREACHABLE``, still an :class:`Unavailable`), apart from the server's own
``UNAVAILABLE`` answers; a closed client raises :class:`ClientClosed`, not gRPC's
``ValueError``; the server's proto spelling of truncation modes is shown as the client's."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from hubless_client import (
    AsyncClient,
    Client,
    ClientClosed,
    ConnectionFailed,
    ErrorReason,
    HublessError,
    Internal,
    InvalidArgument,
    Unavailable,
)
from hubless_client.errors import from_rpc_error
from tests.client.conftest import Invoke
from tests.client.fake_errors import DETAILS_KEY, FakeCallError, FakeRpcError, rich_error
from tests.client.fake_server import ALWAYS_DOWN, HINTED, FakeServer, Recorder

#: One call of each kind: split batch, unary, stream, models, health, waiting for health.
CALLS: list[tuple[str, tuple[Any, ...]]] = [
    ("embed", (["a"],)),
    ("reply", (["hi"],)),
    ("stream_reply", (["hi"],)),
    ("list_models", ()),
    ("health", ()),
    ("wait_until_serving", ()),
]


@pytest.mark.parametrize(("method", "args"), CALLS)
def test_a_closed_client_raises_client_closed(fake: FakeServer, method: str, args: tuple) -> None:
    client = Client(fake.target, timeout=5)
    client.close()
    client.close()  # twice is harmless
    with pytest.raises(ClientClosed) as info:
        getattr(client, method)(*args)
    assert isinstance(info.value, HublessError)
    assert fake.target in str(info.value) and "create a new client" in str(info.value)


@pytest.mark.parametrize(("method", "args"), CALLS)
def test_a_closed_async_client_raises_client_closed(
    fake: FakeServer, method: str, args: tuple
) -> None:
    async def body() -> None:
        async with AsyncClient(fake.target, timeout=5) as client:
            await client.health()
        assert client.closed
        with pytest.raises(ClientClosed, match="is closed"):
            call = getattr(client, method)(*args)
            if asyncio.iscoroutine(call):
                await call

    asyncio.run(body())


def test_unreachable_is_connection_failed_for_both_clients(closed_port: int) -> None:
    target = f"127.0.0.1:{closed_port}"
    with Client(target, timeout=5, retries=False) as client, pytest.raises(Unavailable) as sync:
        client.embed(["a"])

    async def body() -> ConnectionFailed:
        async with AsyncClient(target, timeout=5, retries=False) as client:
            with pytest.raises(ConnectionFailed) as info:
                await client.list_models()
            return info.value

    for error in (sync.value, asyncio.run(body())):
        assert type(error) is ConnectionFailed
        assert error.reason is ErrorReason.UNREACHABLE and error.reason == "UNREACHABLE"
        assert str(error).endswith("[UNREACHABLE]") and target in error.details


def test_the_servers_own_unavailable_is_not_connection_failed(
    fake: FakeServer, recorder: Recorder
) -> None:
    with (
        Client(fake.target, timeout=5, retries=False) as client,
        pytest.raises(Unavailable) as info,
    ):
        client.embed([ALWAYS_DOWN])
    assert type(info.value) is Unavailable
    assert info.value.reason is ErrorReason.MODEL_LOADING


def test_wait_until_serving_keeps_waiting_through_connection_failures(closed_port: int):
    with (
        Client(f"127.0.0.1:{closed_port}", retries=False) as client,
        pytest.raises(HublessError) as info,
    ):
        client.wait_until_serving(timeout=0.5, interval=0.1)
    assert info.value.code.name == "DEADLINE_EXCEEDED"
    assert "not SERVING after 0.5 s" in str(info.value) and "UNREACHABLE" in str(info.value)


def test_input_too_long_hint_uses_the_clients_spelling(invoke: Invoke, recorder: Recorder):
    with pytest.raises(InvalidArgument) as info:
        invoke("embed", ["a", HINTED], truncation="error")
    error = info.value
    assert "TRUNCATION_" not in str(error)
    assert error.details.endswith('(truncation="error"; shorten it or set truncation="truncate")')
    assert error.field_violations[0].field == "texts[1]"
    assert 'set truncation="truncate"' in error.field_violations[0].description
    # the original status is untouched
    assert "TRUNCATION_TRUNCATE" in error.rpc_error.details()


def test_only_an_unavailable_without_any_details_is_connection_failed() -> None:
    unavailable = grpc.StatusCode.UNAVAILABLE
    for trailing in ((), None, (("x-other", "1"),)):
        error = from_rpc_error(FakeCallError(unavailable, "Socket closed", trailing))
        assert type(error) is ConnectionFailed and error.reason == "UNREACHABLE"
    shutting_down = from_rpc_error(rich_error(unavailable, "stopping", "SHUTTING_DOWN"))
    assert type(shutting_down) is Unavailable and shutting_down.reason == "SHUTTING_DOWN"
    garbage = FakeCallError(unavailable, "x", ((DETAILS_KEY, b"\xff not a status"),))
    assert type(from_rpc_error(garbage)) is Unavailable  # details were there: a server sent it
    assert type(from_rpc_error(FakeRpcError(unavailable, "x"))) is Unavailable  # cannot tell
    other = from_rpc_error(FakeCallError(grpc.StatusCode.INTERNAL, "x", ()))
    assert type(other) is Internal and other.reason == ""
