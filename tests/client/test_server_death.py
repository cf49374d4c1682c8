"""A server that dies mid-call: every call ends with UNAVAILABLE within its deadline, never hangs.

The fake server runs in a subprocess here so it can be killed (SIGKILL) while a call is in
flight. Regression test: with gRPC retries applied to server-streaming calls, grpcio's core
hangs such a stream past its deadline.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hubless_client import AsyncClient, Client, ConnectionFailed, ErrorReason, Unavailable
from tests.client.fake_server import SLOW, SLOW_STREAM

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVE = (
    "import time; from tests.client.fake_server import start_fake_server; "
    "print(start_fake_server().port, flush=True); time.sleep(120)"
)
KILL_AFTER_S = 0.5
DEADLINE_S = 8.0


@pytest.fixture
def doomed_server() -> Iterator[tuple[str, Callable[[], None]]]:
    """(target, kill_soon): a fake server in a subprocess; ``kill_soon()`` SIGKILLs it
    ``KILL_AFTER_S`` seconds later."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())

        def kill_soon() -> None:
            threading.Timer(KILL_AFTER_S, proc.send_signal, args=(signal.SIGKILL,)).start()

        yield f"127.0.0.1:{port}", kill_soon
    finally:
        proc.kill()
        proc.wait(10)


def test_stream_ends_unavailable_when_server_dies_before_first_chunk(doomed_server) -> None:
    target, kill_soon = doomed_server
    with Client(target, timeout=DEADLINE_S) as client:
        client.wait_until_serving(timeout=10)
        kill_soon()
        started = time.monotonic()
        with pytest.raises(Unavailable):
            list(client.stream_reply([SLOW_STREAM]))
    assert time.monotonic() - started < DEADLINE_S - 2


def test_unary_is_retried_then_unavailable_when_server_dies(doomed_server) -> None:
    target, kill_soon = doomed_server
    with Client(target, timeout=DEADLINE_S) as client:
        client.wait_until_serving(timeout=10)
        kill_soon()
        started = time.monotonic()
        with pytest.raises(ConnectionFailed) as info:
            client.summarize([SLOW])
    assert time.monotonic() - started < DEADLINE_S - 2
    # a dead server sends no google.rpc details: the connection failed, no server answered
    assert (info.value.reason, info.value.retry_delay) == (ErrorReason.UNREACHABLE, None)
    assert isinstance(info.value, Unavailable)


def test_async_stream_ends_unavailable_when_server_dies(doomed_server) -> None:
    target, kill_soon = doomed_server

    async def body() -> float:
        async with AsyncClient(target, timeout=DEADLINE_S) as client:
            await client.wait_until_serving(timeout=10)
            kill_soon()
            started = time.monotonic()
            with pytest.raises(Unavailable):
                [piece async for piece in client.stream_reply([SLOW_STREAM])]
            return time.monotonic() - started

    assert asyncio.run(body()) < DEADLINE_S - 2
