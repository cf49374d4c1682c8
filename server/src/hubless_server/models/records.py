"""A served model's record (:class:`ModelRecord`) and its :class:`State`.

The registry (:mod:`hubless_server.models.registry`) owns the records: it alone adds, replaces and
removes them; the reloader and the load retries change them through its methods. A record is
plain data: what is installed (its manifest entry), what is loaded (runtime, batcher) and
what clients see of it (state, error, device, dtype, backend).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubless_server.inference.batching import Batcher
from hubless_server.runtimes.base import ModelRuntime
from hubless_volume import ModelEntry, Problem, check_entry


class State(enum.Enum):
    LOADING = "loading"  # queued or being loaded
    READY = "ready"
    FAILED = "failed"  # installed, but corrupt or failed to load
    MISSING = "missing"  # in the task's preference order, not installed
    SKIPPED = "skipped"  # installed alternate not loaded (--no-load-alternates)


@dataclass
class ModelRecord:
    """One model of a served task and its state."""

    name: str
    task: str
    entry: ModelEntry | None
    state: State
    error: str = ""
    is_default: bool = False
    device: str = ""
    dtype: str = ""
    load_seconds: float = 0.0
    max_input_tokens: int = 0
    runtime: ModelRuntime[Any, Any] | None = None
    batcher: Batcher[Any, Any] | None = None
    loaded_at: float = 0.0  # time.time() when it became READY
    replacing_commit: str = ""  # the other version in memory during a live update
    weights_bytes: int = 0  # estimated (hubless_server.models.memory), for --max-model-memory
    files_missing: bool = False  # the last load failed on missing files (a fetch moving them)
    backend: str = ""  # what runs its forward pass once loaded: "torch" or "onnx"
    precision: str = ""  # how its weights are stored and computed (RuntimeInfo.precision)
    signed: bool = False  # its signature verified with --trusted-key at this load
    warning: str = ""  # what a trust check warned of (--golden-check warn): its error once READY

    @property
    def repo_id(self) -> str:
        return self.entry.repo_id if self.entry else ""

    @property
    def commit(self) -> str:
        return self.entry.commit if self.entry else ""

    @property
    def size_bytes(self) -> int:
        return self.entry.size if self.entry else 0


class VolumeError(Exception):
    """A model's files on the volume do not match its manifest entry; ``public`` says so
    without paths of the server's filesystem (the message may hold them)."""

    def __init__(self, message: str, public: str = "") -> None:
        super().__init__(message)
        self.public = public or message


def _public_problem(problem: Problem) -> str:
    """A volume problem for clients: the file's path in the snapshot and what is wrong with
    it, or, when the reason holds a filesystem path, only that the files are misplaced."""
    if "/" not in problem.reason:
        return problem.detail
    return "its files are not where the manifest says (the server log has the path)"


def check_model_files(entry: ModelEntry, models_dir: Path, verify_sha256: bool = False) -> None:
    """Raise :class:`VolumeError` (naming the first problem) unless every file of ``entry`` is
    in place with its recorded size, and sha256 when ``verify_sha256``. Reads only."""
    problems = check_entry(models_dir, entry, deep=verify_sha256)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise VolumeError(problems[0].detail + more, _public_problem(problems[0]) + more)
