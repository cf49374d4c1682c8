"""The one server-subprocess helper (:mod:`hubless_fakehub.stack`) and the one ``/proc`` reader
(:mod:`hubless_fakehub.procfs`) that the demo, these tests, the benchmarks and the soak share,
tried on small Python processes instead of a real server."""

from __future__ import annotations

import math
import os
import signal
import socket
import sys
import textwrap
from pathlib import Path

import pytest

from hubless_fakehub import procfs
from hubless_fakehub.stack import (
    HOST,
    ServerProcess,
    StackError,
    child_env,
    free_port,
    start_process,
)

pytestmark = pytest.mark.e2e

#: Binds a port, writes it to the file named by argv[1], prints a line, then serves until
#: SIGTERM, on which it says so and exits 3.
LISTENER = textwrap.dedent(
    """
    import signal, socket, sys, time
    def bye(*_):
        print("got SIGTERM", flush=True)
        sys.exit(3)
    signal.signal(signal.SIGTERM, bye)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    open(sys.argv[1], "w").write(str(sock.getsockname()[1]))
    print("listening", flush=True)
    while True:
        time.sleep(0.05)
    """
)


def _accepts(server: ServerProcess) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((HOST, server.port)) == 0


def test_start_process_reads_the_port_waits_for_ready_and_stops_by_sigterm(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    server = start_process(
        [sys.executable, "-c", LISTENER, str(port_file)],
        log_path=tmp_path / "logs" / "listener.log",
        env=dict(os.environ),
        ready=_accepts,
        name="listener",
        port_file=port_file,
        timeout=60,
    )
    try:
        assert server.port == int(port_file.read_text())
        assert server.target == f"{HOST}:{server.port}"
        assert server.ready_after_s >= 0
        server.check_alive()
        assert procfs.threads(server.pid) >= 1
        assert procfs.memory_mib(server.pid)["VmRSS"] > 0
        assert procfs.cpu_seconds(server.pid) >= 0
        assert "listening" in server.log_text()
    finally:
        status = server.stop(wait_s=30)
    assert status == 3
    assert server.log_tail(1) == "got SIGTERM"
    # Gone: the /proc reader answers "nothing" instead of raising.
    assert math.isnan(procfs.cpu_seconds(server.pid))
    assert procfs.threads(server.pid) == -1
    assert procfs.memory_mib(server.pid) == {}
    with pytest.raises(StackError, match="listener exited 3"):
        server.check_alive()


def test_a_process_that_exits_before_ready_names_its_status_and_log(tmp_path: Path) -> None:
    script = "import sys; print('cannot start: no volume', flush=True); sys.exit(2)"
    with pytest.raises(StackError, match=r"(?s)server exited 2.*cannot start: no volume"):
        start_process(
            [sys.executable, "-c", script],
            log_path=tmp_path / "server.log",
            env=dict(os.environ),
            ready=lambda server: False,
            name="server",
            timeout=60,
        )


def test_a_process_never_ready_is_stopped_and_named(tmp_path: Path) -> None:
    seen: list[ServerProcess] = []

    def never(server: ServerProcess) -> bool:
        seen.append(server)
        server.not_ready = "health says NOT_SERVING"
        return False

    port_file = tmp_path / "port"
    with pytest.raises(StackError, match=r"slow not ready after .* NOT_SERVING"):
        start_process(
            [sys.executable, "-c", LISTENER, str(port_file)],
            log_path=tmp_path / "slow.log",
            env=dict(os.environ),
            ready=never,
            name="slow",
            port_file=port_file,
            timeout=1.0,
        )
    assert seen and seen[-1].proc.poll() is not None  # stopped, not left behind


def test_stop_kills_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    script = (
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ignoring SIGTERM', flush=True)\ntime.sleep(600)"
    )
    server = start_process(
        [sys.executable, "-c", script],
        log_path=tmp_path / "stubborn.log",
        env=dict(os.environ),
        ready=lambda server: "ignoring SIGTERM" in server.log_text(),
        name="stubborn",
        timeout=60,
    )
    assert server.stop(wait_s=0.5) == -signal.SIGKILL


def test_explain_death_names_a_server_that_died_in_the_block(tmp_path: Path) -> None:
    server = start_process(
        [sys.executable, "-c", "import time; print('bye', flush=True); time.sleep(0.3)"],
        log_path=tmp_path / "short.log",
        env=dict(os.environ),
        ready=lambda server: True,
        name="short",
        timeout=60,
    )
    died = pytest.raises(StackError, match=r"(?s)short died \(exit status 0\).*bye")
    with died, server.explain_death():
        server.proc.wait(30)
        raise ConnectionError("the call failed")


def test_child_env_drops_hub_and_hubless_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "secret")
    monkeypatch.setenv("HUBLESS_THREADS", "7")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("KEEP_ME", "yes")
    env = child_env(tmp_path / "hf-home", HF_ENDPOINT="http://127.0.0.1:9", HUBLESS_JOBS="2")
    assert "HF_TOKEN" not in env and "HUBLESS_THREADS" not in env
    assert "TRANSFORMERS_OFFLINE" not in env
    assert env["KEEP_ME"] == "yes"
    assert env["HF_HOME"] == str(tmp_path / "hf-home") and (tmp_path / "hf-home").is_dir()
    assert env["HF_ENDPOINT"] == "http://127.0.0.1:9" and env["HUBLESS_JOBS"] == "2"
    assert "127.0.0.1" in env["NO_PROXY"]


def test_free_port_is_bindable() -> None:
    with socket.socket() as sock:
        sock.bind((HOST, free_port()))


def test_cpu_model_and_thread_names_of_this_process() -> None:
    assert procfs.cpu_model()
    names = procfs.thread_names(os.getpid())
    assert names and all(count >= 1 for count in names.values())
    assert procfs.threads(os.getpid()) >= 1
