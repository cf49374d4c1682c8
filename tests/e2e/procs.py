"""Real processes for the end-to-end tests: the fetcher CLI and the server, over sockets.

Every subprocess gets an isolated ``HF_HOME`` and a bounded timeout. The server is started
with ``--port 0 --port-file`` (no port races), ``--metrics-port 0``, float32 on CPU, one
thread, and ``HF_ENDPOINT`` pointing at a closed local port: a server that tried to reach the
hub would fail loudly instead of quietly downloading.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hubless_client import Client, HealthStatus, ModelState

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(sys.executable).parent

#: gRPC health service names of the six task services and the model listing.
TASK_SERVICES = {
    "embedding": "hubless.v1.EmbeddingsService",
    "emotion": "hubless.v1.EmotionService",
    "sentiment": "hubless.v1.SentimentService",
    "zero-shot": "hubless.v1.ZeroShotService",
    "summarization": "hubless.v1.SummarizationService",
    "conversation": "hubless.v1.ConversationService",
}
ALL_SERVICES = (*TASK_SERVICES.values(), "hubless.v1.ModelsService")

FETCH_TIMEOUT_S = 300.0
SERVER_START_TIMEOUT_S = 240.0


def console_script(name: str) -> str:
    """The path of a console script of this virtual environment."""
    path = BIN_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make setup`")
    return str(path)


def closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env(hf_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a subprocess: this one, minus hub settings, plus an own HF_HOME."""
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
    )
    env.update(extra or {})
    return env


def run_cli(args: Sequence[str], env: Mapping[str, str], timeout: float) -> str:
    """Run a command; return its output, or raise AssertionError with the output."""
    proc = subprocess.run(
        list(args),
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}")
    return proc.stdout


def fetch(models_dir: Path, endpoint: str, names: Iterable[str] = (), *, hf_home: Path) -> str:
    """``hubless-fetch fetch`` the catalog (or ``names``) from ``endpoint`` into the volume."""
    args = [console_script("hubless-fetch"), "fetch", "--models-dir", str(models_dir), *names]
    env = base_env(hf_home, {"HF_ENDPOINT": endpoint})
    return run_cli(args, env, FETCH_TIMEOUT_S)


def remove(models_dir: Path, name: str, *, hf_home: Path) -> str:
    """``hubless-fetch remove`` one model from the volume."""
    args = [console_script("hubless-fetch"), "remove", "--models-dir", str(models_dir), name]
    return run_cli(args, base_env(hf_home), 60)


def set_read_only(root: Path, read_only: bool = True) -> None:
    """``chmod -R a-w`` (or give the owner write access back) on a whole tree."""
    paths = [root, *root.rglob("*")]
    for path in paths if read_only else reversed(paths):
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        new = mode & ~0o222 if read_only else mode | stat.S_IWUSR
        path.chmod(new)


def tree_state(root: Path) -> dict[str, tuple[int, int, int]]:
    """(size, mtime_ns, mode) of every entry under ``root``: a volume the server only read
    is unchanged."""
    state = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        state[path.relative_to(root).as_posix()] = (info.st_size, info.st_mtime_ns, info.st_mode)
    return state


def server_args(models_dir: Path, port_file: Path, extra: Sequence[str] = ()) -> list[str]:
    """The ``hubless-serve`` command line of the tests."""
    return [
        console_script("hubless-serve"),
        "--models-dir",
        str(models_dir),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--port-file",
        str(port_file),
        "--metrics-port",
        "0",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--threads",
        "1",
        "--grace-period",
        "2",
        *extra,
    ]


@dataclass
class ServerProcess:
    """A running ``hubless-serve``; ``target`` is ``127.0.0.1:<port>``."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0
    clients: list[Client] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, **kwargs: object) -> Client:
        """A client of this server, closed when the server stops."""
        options: dict[str, object] = {"timeout": 60.0}
        options.update(kwargs)
        client = Client(self.target, **options)  # type: ignore[arg-type]
        self.clients.append(client)
        return client

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(
                f"hubless-serve exited {self.proc.returncode}; log tail:\n{self.log_tail()}"
            )

    @contextlib.contextmanager
    def explain_death(self) -> Iterator[None]:
        """Turn any failure inside the block into one naming the server's exit status and
        log tail when the server died meanwhile."""
        try:
            yield
        except BaseException as exc:
            time.sleep(0.2)
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"hubless-serve died (exit status {self.proc.returncode}) during the test; "
                    f"log tail:\n{self.log_tail(80)}"
                ) from exc
            raise

    def wait_serving(
        self, services: Iterable[str], timeout: float = SERVER_START_TIMEOUT_S
    ) -> None:
        """Wait until every one of ``services`` is SERVING and no model is still loading."""
        deadline = time.monotonic() + timeout
        client = self.client(timeout=5.0)
        pending = list(services)
        while True:
            self.check_alive()
            try:
                pending = [s for s in pending if client.health(s) is not HealthStatus.SERVING]
                loading = [m.name for m in client.list_models() if m.state is ModelState.LOADING]
            except Exception as exc:  # keep polling until the deadline
                pending_reason = f"{type(exc).__name__}: {exc}"
            else:
                if not pending and not loading:
                    return
                pending_reason = f"not SERVING: {pending}, loading: {loading}"
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"server not ready after {timeout}s ({pending_reason}); log tail:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.25)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
        for client in self.clients:
            with contextlib.suppress(Exception):
                client.close()
        self.clients.clear()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("hubless-serve did not stop in %ss; killing it", timeout)
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_server(
    models_dir: Path,
    workdir: Path,
    *,
    extra_args: Sequence[str] = (),
    wait_for: Iterable[str] = ALL_SERVICES,
    timeout: float = SERVER_START_TIMEOUT_S,
    command_prefix: Sequence[str] = (),
) -> ServerProcess:
    """Start ``hubless-serve`` on the volume, wait for its port and for ``wait_for`` to be
    SERVING. The caller stops it (see :func:`running_server`). ``command_prefix`` runs it
    through a wrapper (e.g. ``unshare ... sh -c '...; exec "$@"' sh``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port_file = workdir / "port"
    port_file.unlink(missing_ok=True)
    log_path = workdir / "server.log"
    env = base_env(
        workdir / "hf-home",
        {
            "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}",
            "HF_HUB_OFFLINE": "1",
            # A crash (e.g. SIGSEGV in a native extension) leaves the Python stacks in the log.
            "PYTHONFAULTHANDLER": "1",
        },
    )
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [*command_prefix, *server_args(models_dir, port_file, extra_args)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            start_new_session=True,
        )
    server = ServerProcess(proc=proc, log_path=log_path)
    try:
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            server.check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"no port file after {timeout}s:\n{server.log_tail()}")
            time.sleep(0.1)
        server.port = int(port_file.read_text().strip())
        server.wait_serving(wait_for, timeout=max(deadline - time.monotonic(), 1.0))
    except BaseException:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def running_server(models_dir: Path, workdir: Path, **kwargs: object) -> Iterator[ServerProcess]:
    """:func:`start_server` as a context manager that always stops the server."""
    server = start_server(models_dir, workdir, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()
