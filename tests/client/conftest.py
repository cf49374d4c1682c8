"""Fixtures of the client tests: one fake server for the whole module."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.client.fake_server import FakeServer, start_fake_server


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
