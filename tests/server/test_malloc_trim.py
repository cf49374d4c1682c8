"""MallocTrimmer: malloc_trim(0) when RssAnon grew, never when it did not; the server runs
one unless --malloc-trim-interval is 0."""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest

from hubless_server.observability.malloc_trim import (
    MallocTrimmer,
    glibc_malloc_trim,
    rss_anon_bytes,
)
from tests.server.conftest import StartFake

MIB = 2**20


class FakeMemory:
    """RssAnon that the test sets; a trim drops it to ``live``."""

    def __init__(self, anon: int, live: int) -> None:
        self.anon = anon
        self.live = live
        self.calls: list[int] = []

    def rss_anon(self) -> int:
        return self.anon

    def trim(self, pad: int) -> int:
        self.calls.append(pad)
        self.anon = self.live
        return 1


def test_trims_only_after_enough_growth() -> None:
    memory = FakeMemory(anon=600 * MIB, live=600 * MIB)
    trimmer = MallocTrimmer(10, min_growth=32 * MIB, trim=memory.trim, rss_anon=memory.rss_anon)

    async def scenario() -> list[bool]:
        results = [await trimmer.check()]  # sets the floor at 600 MiB
        memory.anon = 620 * MIB
        results.append(await trimmer.check())  # +20 MiB: not yet
        memory.anon, memory.live = 900 * MIB, 650 * MIB
        results.append(await trimmer.check())  # +300 MiB: trim, floor now 650
        memory.anon = 670 * MIB
        results.append(await trimmer.check())  # +20 over the new floor
        memory.anon = 500 * MIB
        results.append(await trimmer.check())  # shrank by itself: the floor follows
        memory.anon, memory.live = 540 * MIB, 510 * MIB
        results.append(await trimmer.check())  # +40 over 500
        return results

    assert asyncio.run(scenario()) == [False, False, True, False, False, True]
    assert memory.calls == [0, 0]
    assert trimmer.trims == 2
    assert trimmer.released == (900 - 650 + 540 - 510) * MIB


def test_off_or_unavailable_starts_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hubless_server.observability.malloc_trim")

    async def started(trimmer: MallocTrimmer) -> bool:
        trimmer.start()
        running = trimmer._task is not None
        await trimmer.stop()
        return running

    memory = FakeMemory(anon=MIB, live=MIB)
    on = MallocTrimmer(10, trim=memory.trim, rss_anon=memory.rss_anon)
    assert asyncio.run(started(on))
    assert not asyncio.run(started(MallocTrimmer(0, trim=memory.trim, rss_anon=memory.rss_anon)))
    unavailable = MallocTrimmer(10, trim=None, rss_anon=lambda: None)
    assert not unavailable.available
    assert not asyncio.run(started(unavailable))
    assert "not trimming" in caplog.text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc")
def test_real_malloc_trim_returns_freed_memory() -> None:
    trim = glibc_malloc_trim()
    if trim is None:
        pytest.skip("the C library is not glibc")
    trimmer = MallocTrimmer(10, trim=trim)
    assert trimmer.available
    after = trimmer.trim_now()
    assert 0 < after <= (rss_anon_bytes() or 0) + 64 * MIB
    assert trimmer.trims == 1


def test_the_server_runs_a_trimmer_unless_off(start_fake: StartFake) -> None:
    on = start_fake(["all-minilm-l6-v2"])
    off = start_fake(["all-minilm-l6-v2"], "--malloc-trim-interval", "0")
    assert (on.server.trimmer._task is not None) == on.server.trimmer.available
    assert off.server.trimmer._task is None
