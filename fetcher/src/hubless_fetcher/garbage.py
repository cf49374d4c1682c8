"""``gc``: prune now everything on the volume that no model uses.

That is: in every ``models--*`` folder, whatever neither the manifest nor a kept previous
generation references (leftovers of an interrupted run, a hand-made copy), and the previous
generations whose retention has passed (:mod:`hubless_fetcher.retention`), or every previous
generation with ``all_previous``. It goes through
:func:`~hubless_fetcher.volume.prune_unreferenced` like every other deletion, holding the
volume write lock, and never follows a link out of the volume. Partial downloads in
``.staging/`` stay (the next ``fetch`` resumes or removes them), and so does anything at the
volume root that is not a ``models--*`` folder.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from hubless_fetcher.retention import KeepPrevious
from hubless_fetcher.settings import ConfigError
from hubless_fetcher.volume import prune_unreferenced
from hubless_fetcher.writelock import VolumeWriteLock
from hubless_volume import Manifest, PreviousGeneration, PreviousGenerations

NONE_KEPT = KeepPrevious(0)


@dataclass
class GcReport:
    """What ``gc`` removed (or, with ``dry_run``, would remove): each path with the bytes
    it takes on disk, and the previous generations it let go."""

    pruned: list[tuple[Path, int]] = field(default_factory=list)
    released: list[PreviousGeneration] = field(default_factory=list)
    dry_run: bool = False

    @property
    def size(self) -> int:
        return sum(size for _, size in self.pruned)


def collect_garbage(
    models_dir: Path,
    keep: KeepPrevious,
    *,
    all_previous: bool = False,
    dry_run: bool = False,
    now: datetime | None = None,
) -> GcReport:
    """Prune what no model uses and the previous generations ``keep`` lets go (every one
    with ``all_previous``); with ``dry_run`` only say what that would remove."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise ConfigError(f"there is no models volume at {models_dir}")
    keep = NONE_KEPT if all_previous else keep
    now = now or datetime.now(UTC)
    writable = os.access(models_dir, os.W_OK)
    lock = VolumeWriteLock(models_dir) if writable or not dry_run else contextlib.nullcontext()
    with lock:
        manifest = Manifest.load(models_dir)
        _kept, expired = keep.split(PreviousGenerations.load(models_dir), manifest, now)
        current = {(e.name, e.repo_id, e.commit) for e in manifest.models.values()}
        report = GcReport(released=[g for g in expired if g.key not in current], dry_run=dry_run)
        found = prune_unreferenced(models_dir, manifest, keep=keep, now=now, dry_run=True)
        seen: set[tuple[int, int]] = set()
        report.pruned = [(path, _size(path, seen)) for path in found]
        if not dry_run:
            prune_unreferenced(models_dir, manifest, keep=keep, now=now)
    return report


def _size(path: Path, seen: set[tuple[int, int]]) -> int:
    """Bytes ``path`` takes on disk, links not followed (a link takes none), each file once."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return 0
    if stat.S_ISLNK(st.st_mode):
        return 0
    if stat.S_ISDIR(st.st_mode):
        return sum(
            _size(Path(root, name), seen) for root, _dirs, files in os.walk(path) for name in files
        )
    if (st.st_dev, st.st_ino) in seen:
        return 0
    seen.add((st.st_dev, st.st_ino))
    return st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size
