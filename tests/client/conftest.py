"""Fixtures of the client tests: one fake server for the whole module."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hubless_client import AsyncClient, Client, _deprecated
from tests.client.fake_server import FakeServer, start_fake_server

#: ``invoke(method, *args, options={...}, **kwargs) -> (result, client)``: see ``invoke``.
Invoke = Callable[..., tuple[Any, Any]]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    server = start_fake_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def recorder(fake: FakeServer):
    fake.recorder.reset()
    return fake.recorder


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(params=["sync", "aio"])
def invoke(request: pytest.FixtureRequest, fake: FakeServer) -> Invoke:
    """Call one client method against the fake with a fresh :class:`Client` (``sync``) or
    :class:`AsyncClient` (``aio``, in its own event loop) made with ``options`` (default
    timeout 10 s); returns the result and the (closed) client. Exceptions propagate."""

    def call(method: str, *args: Any, options: dict[str, Any] | None = None, **kwargs: Any):
        opts = {"timeout": 10, **(options or {})}
        if request.param == "sync":
            with Client(fake.target, **opts) as client:
                return getattr(client, method)(*args, **kwargs), client

        async def main() -> tuple[Any, AsyncClient]:
            async with AsyncClient(fake.target, **opts) as client:
                return await getattr(client, method)(*args, **kwargs), client

        return asyncio.run(main())

    return call


@pytest.fixture
def fresh_warnings() -> Iterator[None]:
    """The deprecated aliases warn again (they warn once per process)."""
    _deprecated.reset()
    yield
    _deprecated.reset()
