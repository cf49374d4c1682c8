"""Checking installed models against the manifest: fast (links and sizes) or deep (sha256)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from hubless_fetcher.install import sha256_file
from hubless_fetcher.manifest import ModelEntry

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    """One missing or corrupt file of an installed model."""

    model: str
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.model}: {self.path}: {self.reason}"


def check_entry(models_dir: Path, entry: ModelEntry, *, deep: bool = False) -> list[Problem]:
    """Problems of one installed model; empty when every file is in place (and, when
    ``deep``, has the recorded sha256)."""
    problems: list[Problem] = []
    snapshot = entry.snapshot_dir(models_dir)
    for record in entry.files:
        link = snapshot / record.path
        try:
            size = link.stat().st_size  # follows the snapshot symlink to the blob
        except FileNotFoundError:
            reason = "dangling link (blob missing)" if link.is_symlink() else "missing"
            problems.append(Problem(entry.name, record.path, reason))
            continue
        except OSError as exc:
            problems.append(Problem(entry.name, record.path, f"unreadable: {exc}"))
            continue
        if size != record.size:
            problems.append(
                Problem(entry.name, record.path, f"size {size} != expected {record.size}")
            )
            continue
        if deep:
            digest = sha256_file(link)
            if digest != record.sha256:
                problems.append(
                    Problem(entry.name, record.path, f"sha256 {digest} != {record.sha256}")
                )
    return problems
