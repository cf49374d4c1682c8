"""Run a HublessServer in-process on its own event-loop thread, bound to 127.0.0.1."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc

from hubless_server.app import HublessServer
from hubless_server.core.config import Settings
from hubless_server.core.flags import load_settings
from hubless_server.models.registry import RuntimeFactory

T = TypeVar("T")


def settings_for(models_dir: Path, *flags: str) -> Settings:
    return load_settings(
        [
            "--models-dir",
            str(models_dir),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--batch-wait-ms",
            "0",
            "--drain-delay",  # stop() at once; tests of the drain window give their own
            "0",
            *flags,
        ],
        {},
    )


class RunningServer:
    """A started server; ``channel`` is a plain (sync) gRPC channel to it."""

    def __init__(
        self,
        settings: Settings,
        runtime_factory: RuntimeFactory | None,
        wait: bool = True,
        tracer_provider: Any = None,
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = HublessServer(
            settings, runtime_factory, native_bf16=False, tracer_provider=tracer_provider
        )
        self.port = self.call(self.server.start())
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        if wait:
            self.wait_loaded()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def wait_loaded(self, timeout: float = 120) -> None:
        self.call(self.server.wait_loaded(), timeout)

    def stop(self, grace: float = 0) -> None:
        self.channel.close()
        try:
            self.call(self.server.stop(grace))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
