"""What every suite is told by the CLI."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .procs import BENCH_DIR


@dataclass(frozen=True)
class Shape:
    """A request shape of the embeddings suite: ``clients`` closed-loop clients, each request
    carrying ``texts`` sentences; written ``CLIENTSxTEXTS`` (e.g. ``64x1``, ``8x32``)."""

    clients: int
    texts: int

    @property
    def label(self) -> str:
        return f"{self.clients}x{self.texts}"


# The shapes issue 18 sets targets for: its own CPU per request decides at 64x1, the forward
# at 8x32.
DEFAULT_SHAPES = (Shape(64, 1), Shape(8, 32))


def parse_shapes(spec: str) -> list[Shape]:
    """``"64x1,8x32"`` -> shapes, in order, without repeats; ``"none"`` or ``""`` -> none.

    More sentences per request than hubless-serve's ``--max-texts`` (64 by default) are
    refused by the server: raise it with ``--server-arg=--max-texts=N``."""
    if spec.strip().lower() in ("", "none"):
        return []
    out: list[Shape] = []
    for part in (p.strip() for p in spec.split(",")):
        m = re.fullmatch(r"(\d+)\s*[xX]\s*(\d+)", part)
        if not m:
            raise ValueError(
                f"bad shape {part!r} in --shapes {spec!r}: write CLIENTSxTEXTS, e.g. 64x1,8x32 "
                "(or 'none')"
            )
        shape = Shape(int(m[1]), int(m[2]))
        if shape.clients < 1 or shape.texts < 1:
            raise ValueError(f"bad shape {part!r}: clients and sentences per request must be >= 1")
        if shape not in out:
            out.append(shape)
    return out


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
    # Embeddings suite: request shapes measured on hubless-torch fp32/bf16 and the null server.
    shapes: list[Shape] = field(default_factory=lambda: list(DEFAULT_SHAPES))

    @property
    def work_dir(self) -> Path:
        """Scratch space (volumes, peer settings), gitignored."""
        return self.models_dir

    def heavy_concurrency(self, cap: int = 8) -> list[int]:
        """Concurrencies for the slow full-size tasks (zero-shot, generation): capped, since
        at 64 clients a request there would take longer than the whole measuring window."""
        return sorted({min(c, cap) for c in self.concurrency})
