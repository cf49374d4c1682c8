"""Fixtures for the server tests: in-process servers over fake runtimes or tiny models."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.server.fakes import FakeRuntime, fake_factory, make_fake_volume
from tests.server.harness import RunningServer, settings_for

StartFake = Callable[..., RunningServer]


@pytest.fixture
def start_fake(tmp_path: Path) -> Iterator[StartFake]:
    """``start(names=None, *flags, wait=True)``: a server over fake runtimes on a fake
    volume holding ``names`` (default: the whole catalog)."""
    FakeRuntime.reset()
    servers: list[RunningServer] = []

    def start(names: list[str] | None = None, *flags: str, wait: bool = True) -> RunningServer:
        volume = make_fake_volume(tmp_path / f"volume-{len(servers)}", names)
        server = RunningServer(settings_for(volume, *flags), fake_factory, wait=wait)
        servers.append(server)
        return server

    yield start
    FakeRuntime.reset()
    for server in servers:
        server.stop()
