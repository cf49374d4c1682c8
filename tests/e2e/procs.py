"""Real processes for the end-to-end tests: the fetcher CLI and the server, over sockets.

Every subprocess gets an isolated ``HF_HOME`` and a bounded timeout. The server is started
through :func:`hubless_fakehub.stack.start_server` (``--port 0 --port-file``: no port races;
offline, with ``HF_ENDPOINT`` at a closed local port, so a server that tried to reach the hub
would fail loudly instead of quietly downloading) with the tests' settings: ``--metrics-port
0``, float32 on CPU, one thread, a 2 s grace period.
"""

from __future__ import annotations

import stat
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hubless_fakehub import stack
from hubless_fakehub.stack import ServerProcess, child_env

__all__ = ["ServerProcess", "child_env"]

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
    env = child_env(hf_home, HF_ENDPOINT=endpoint)
    return run_cli(args, env, FETCH_TIMEOUT_S)


def remove(models_dir: Path, name: str, *, hf_home: Path) -> str:
    """``hubless-fetch remove`` one model from the volume."""
    args = [console_script("hubless-fetch"), "remove", "--models-dir", str(models_dir), name]
    return run_cli(args, child_env(hf_home), 60)


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


#: What every test server runs with, before the test's own arguments (which win).
TEST_SERVER_ARGS = (
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
)


def server_args(models_dir: Path, port_file: Path, extra: Sequence[str] = ()) -> list[str]:
    """The ``hubless-serve`` command line of the tests (for a test that starts it itself)."""
    return stack.server_argv(models_dir, port_file, *TEST_SERVER_ARGS, *extra)


def start_server(
    models_dir: Path,
    workdir: Path,
    *,
    extra_args: Sequence[str] = (),
    wait_for: Iterable[str] = ALL_SERVICES,
    timeout: float = SERVER_START_TIMEOUT_S,
    **options: Any,
) -> ServerProcess:
    """Start ``hubless-serve`` on the volume with the tests' settings and wait for
    ``wait_for`` to be SERVING (:func:`hubless_fakehub.stack.start_server`, whose ``env``,
    ``command_prefix`` and ``ready`` ``options`` take). Use it in a ``with`` block, which stops
    the server on the way out."""
    return stack.start_server(
        models_dir,
        workdir,
        *TEST_SERVER_ARGS,
        *extra_args,
        wait_for=wait_for,
        timeout=timeout,
        **options,
    )


running_server = start_server
"""The name most tests use: ``with running_server(volume, workdir) as server:``."""
