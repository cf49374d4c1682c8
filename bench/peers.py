"""The servers a user would pick instead of hubless, each in its own venv under bench/.venvs/.

Install recipes (torch is always pinned to 2.13.0, the local CPU wheel, so no CUDA build is
ever downloaded):

* infinity-emb: ``infinity-emb[server]`` plus ``transformers<5`` and
  ``sentence-transformers<5`` (infinity 0.0.78 calls ``tokenizer.batch_encode_plus``, which
  transformers 5 removed; its ``[all]`` extra would pull a CUDA torch).
* MLServer: ``mlserver mlserver-huggingface`` (pulls TensorFlow). Expected not to load a
  model with torch 2.13; the benchmark starts it anyway and records why.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from .procs import BENCH_DIR, LOG_DIR, ServerProcess, free_port, running

log = logging.getLogger("bench")

VENVS = BENCH_DIR / ".venvs"

RECIPES: dict[str, list[list[str]]] = {
    "infinity": [
        ["torch==2.13.0"],
        [
            "torch==2.13.0",
            "infinity-emb[server]==0.0.78",
            "transformers>=4.40,<5",
            "sentence-transformers>=3,<5",
        ],
    ],
    "mlserver": [
        ["torch==2.13.0"],
        ["torch==2.13.0", "mlserver==1.7.1", "mlserver-huggingface==1.7.1"],
    ],
}
EXECUTABLES = {"infinity": "infinity_emb", "mlserver": "mlserver"}


def venv_bin(name: str) -> Path:
    return VENVS / name / "bin"


def ensure_venv(name: str, install: bool) -> str | None:
    """Make sure the peer's venv exists; return None when ready, else why not."""
    exe = venv_bin(name) / EXECUTABLES[name]
    if exe.exists():
        return None
    if not install:
        return f"not installed (bench/.venvs/{name}); run without --no-peer-install"
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    install_log = LOG_DIR / f"install-{name}.log"
    log.info("installing peer %s into bench/.venvs/%s (minutes; log %s)", name, name, install_log)
    with open(install_log, "wb") as fh:
        cmds = [[_base_python(), "-m", "venv", str(VENVS / name)]]
        cmds += [[str(venv_bin(name) / "pip"), "install", "-q", *pkgs] for pkgs in RECIPES[name]]
        for cmd in cmds:
            rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT)
            if rc != 0:
                return f"install failed ({' '.join(cmd[-3:])}: exit {rc}; see {install_log})"
    return None if exe.exists() else f"install did not provide {exe.name}"


def _base_python() -> str:
    """The interpreter the main .venv was made from (a venv of a venv works too)."""
    cfg = Path(sys.prefix) / "pyvenv.cfg"
    with contextlib.suppress(OSError):
        for line in cfg.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "executable":
                return value.strip()
    return sys.executable


def failure_reason(log_text: str) -> str:
    """The most telling line of a failed start: the last ImportError/Error line."""
    lines = [ln.strip() for ln in log_text.splitlines() if ln.strip()]
    for pattern in (r"ImportError: .*", r"ModuleNotFoundError: .*", r"\w+Error: .*"):
        hits = [m.group(0) for ln in lines if (m := re.search(pattern, ln))]
        if hits:
            return hits[0][:400]
    return (lines[-1] if lines else "no output")[:400]


@contextlib.contextmanager
def infinity(
    model_dir: Path, dtype: str = "float32", batch_size: int = 64
) -> Iterator[ServerProcess]:
    """infinity-emb v2 serving ``model_dir`` on CPU (torch engine), ready on /health."""
    port = free_port()
    argv = [
        str(venv_bin("infinity") / "infinity_emb"),
        "v2",
        "--model-id",
        str(model_dir),
        "--served-model-name",
        "minilm",
        "--engine",
        "torch",
        "--device",
        "cpu",
        "--dtype",
        dtype,
        "--batch-size",
        str(batch_size),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    with running(
        f"infinity-{dtype}",
        argv,
        port=port,
        ready="http",
        ready_url=f"http://127.0.0.1:{port}/health",
        timeout_s=240.0,
        env={"INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"},
    ) as server:
        server.extra["url"] = f"http://127.0.0.1:{port}/embeddings"
        server.extra["argv"] = argv
        yield server


@contextlib.contextmanager
def mlserver(model_dir: Path, workdir: Path) -> Iterator[ServerProcess]:
    """MLServer + mlserver-huggingface (feature-extraction) over ``model_dir``, V2 REST."""
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    (workdir / "minilm").mkdir(parents=True, exist_ok=True)
    (workdir / "settings.json").write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "http_port": http_port,
                "grpc_port": grpc_port,
                "metrics_port": metrics_port,
                "parallel_workers": 0,
            }
        )
    )
    (workdir / "minilm" / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "minilm",
                "implementation": "mlserver_huggingface.HuggingFaceRuntime",
                "parameters": {
                    "extra": {
                        "task": "feature-extraction",
                        "pretrained_model": str(model_dir),
                        "pretrained_tokenizer": str(model_dir),
                    }
                },
            }
        )
    )
    argv = [str(venv_bin("mlserver") / "mlserver"), "start", str(workdir)]
    with running(
        "mlserver",
        argv,
        port=http_port,
        ready="http",
        ready_url=f"http://127.0.0.1:{http_port}/v2/models/minilm/ready",
        timeout_s=120.0,
    ) as server:
        server.extra["url"] = f"http://127.0.0.1:{http_port}/v2/models/minilm/infer"
        server.extra["argv"] = argv
        yield server


def mlserver_body(text: str) -> dict[str, object]:
    """A V2 inference request with one string."""
    return {"inputs": [{"name": "args", "shape": [1], "datatype": "BYTES", "data": [text]}]}


def infinity_body(text: str) -> dict[str, object]:
    """An OpenAI-style embeddings request with one string."""
    return {"model": "minilm", "input": [text]}
