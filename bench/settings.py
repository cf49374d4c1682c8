"""What every suite is told by the CLI."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .procs import BENCH_DIR


@dataclass
class Settings:
    """Durations, concurrencies and where things go."""

    duration_s: float = 8.0
    warmup_s: float = 2.0
    concurrency: list[int] = field(default_factory=lambda: [1, 8, 64])
    json_dir: Path = BENCH_DIR / "results"
    quick: bool = False
    smoke: bool = False  # CI: embeddings, hubless on both backends and in-process only
    peer_install: bool = True
    peers: bool = True
    threads: int = os.cpu_count() or 1
    server_args: list[str] = field(default_factory=list)
    profile: bool = False
    # Extra hubless-serve configurations for the embeddings suite: label -> extra arguments.
    hubless_variants: dict[str, list[str]] = field(default_factory=dict)
    models_dir: Path = BENCH_DIR / ".models"

    @property
    def work_dir(self) -> Path:
        """Scratch space (volumes, peer settings), gitignored."""
        return self.models_dir

    def heavy_concurrency(self, cap: int = 8) -> list[int]:
        """Concurrencies for the slow full-size tasks (zero-shot, generation): capped, since
        at 64 clients a request there would take longer than the whole measuring window."""
        return sorted({min(c, cap) for c in self.concurrency})
