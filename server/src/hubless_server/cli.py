"""``hubless-serve`` / ``python -m hubless_server``: parse settings, run until a signal."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from typing import TYPE_CHECKING

from hubless_server.core.config import Settings
from hubless_server.core.flags import ExitCode, load_settings
from hubless_server.core.values import ConfigError
from hubless_server.observability.logs import configure_logging

if TYPE_CHECKING:
    from hubless_server.app import HublessServer

log = logging.getLogger("hubless_server")

#: Exit status when ``--require-models`` finds served tasks without a model.
EXIT_MODELS_MISSING = ExitCode.MODELS_MISSING


async def tasks_without_model(server: HublessServer) -> list[str]:
    """Once the initial loading is over: the served tasks that have no model."""
    await server.wait_loaded()
    registry = server.registry
    if registry is None:
        return []
    missing = [task for task in registry.tasks if not registry.serving(task)]
    for task in missing:
        log.error("--require-models: %s", registry.unavailable_message(task))
    return missing


async def serve(settings: Settings) -> int:
    """Run the server until SIGTERM/SIGINT, then drain: ``--drain-delay`` seconds refusing
    new RPCs with SHUTTING_DOWN, then up to ``--grace-period`` for the calls in flight;
    returns the exit status (:data:`EXIT_MODELS_MISSING` when ``--require-models`` fails).

    A second signal during the drain falls back to the default action (stop at once). SIGHUP
    checks the volume manifest now (live model updates) instead of ending the process."""
    from hubless_server.app import HublessServer

    server = HublessServer(settings)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    await server.start()
    stop = asyncio.Event()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        for s in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(s)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    terminated = asyncio.ensure_future(server.wait_for_termination())
    waiter = asyncio.ensure_future(stop.wait())
    required = asyncio.ensure_future(
        tasks_without_model(server) if settings.require_models else asyncio.sleep(0, [])
    )
    status: int = ExitCode.OK
    first = asyncio.FIRST_COMPLETED
    done, _ = await asyncio.wait({terminated, waiter, required}, return_when=first)
    if done == {required}:
        missing = required.result()
        if missing:
            log.error(
                "--require-models: no model for the served task(s) %s after the initial "
                "loading; exiting. Install them (`hubless-fetch fetch --tasks %s`) or serve "
                "fewer tasks (--tasks)",
                ", ".join(missing),
                ",".join(missing),
            )
            status = EXIT_MODELS_MISSING
        else:
            await asyncio.wait({terminated, waiter}, return_when=first)
    if received:
        log.info(
            "received %s: health NOT_SERVING, new RPCs refused for %.1f s, then in-flight "
            "RPCs drained for up to %.1f s",
            received[0],
            settings.drain_delay,
            settings.grace_period,
        )
    await server.stop(settings.grace_period)
    for task in (terminated, waiter, required):
        task.cancel()
    return status


def check_trusted_key_setting(settings: Settings) -> str:
    """Why ``--trusted-key`` cannot be used ("" when it can, or is not given): not a PEM
    elliptic-curve public key, or the signature verifier is not installed."""
    from hubless_server.models.trust import check_trust_settings
    from hubless_volume import KeyFileError, SigningUnavailableError

    try:
        check_trust_settings(settings.trusted_key)
    except KeyFileError as exc:
        return f"--trusted-key: {exc}"
    except SigningUnavailableError as exc:
        return str(exc)
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hubless-serve``; the exit status (:data:`~hubless_server.core.flags.EXIT_CODES`)."""
    try:
        settings = load_settings(argv)
    except ConfigError as exc:
        configure_logging()
        log.error("invalid configuration: %s", exc)
        return ExitCode.CONFIG
    configure_logging(settings.log_format, settings.log_level)
    if not settings.models_dir.is_dir():
        log.error(
            "models dir %s does not exist: fill it with `hubless-fetch fetch --models-dir %s`",
            settings.models_dir,
            settings.models_dir,
        )
        return ExitCode.CONFIG
    from hubless_server.observability.egress import EgressConfigError
    from hubless_server.observability.tracing import TracingUnavailableError
    from hubless_server.transport.auth import TokenFileError
    from hubless_server.transport.chain import Transport
    from hubless_server.transport.tls import TLSConfigError

    # The TLS and token files, checked before the slow imports (and again at the start).
    try:
        Transport(settings)
    except (TLSConfigError, TokenFileError) as exc:
        log.error("invalid configuration: %s", exc)
        return ExitCode.CONFIG
    trust_problem = check_trusted_key_setting(settings)
    if trust_problem:
        log.error("invalid configuration: %s", trust_problem)
        return ExitCode.CONFIG
    from hubless_server.runtimes.placement import PlacementError, configure_threads
    from hubless_server.transport.open_files import raise_open_files_limit

    configure_threads(settings.intra_op_threads)
    files_before, files, files_hard = raise_open_files_limit()
    log.info(
        "starting hubless-serve",
        extra={
            "fields": {
                "models_dir": str(settings.models_dir),
                "threads": settings.intra_op_threads,
                "device": settings.device,
                "dtype": settings.dtype,
                "open_files": files,
                "open_files_was": files_before,
                "open_files_hard": files_hard,
            }
        },
    )
    try:
        return asyncio.run(serve(settings))
    except (
        PlacementError,
        TLSConfigError,
        TokenFileError,
        TracingUnavailableError,
        EgressConfigError,
    ) as exc:
        log.error("invalid configuration: %s", exc)
        return ExitCode.CONFIG
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return ExitCode.CANNOT_START
