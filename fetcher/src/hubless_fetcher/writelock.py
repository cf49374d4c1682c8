"""The volume write lock: one writer at a time on a models volume, across processes.

Not to be confused with the catalog lock file (``catalog.lock.json``, see
:mod:`hubless_fetcher.lockfile`): this is an inter-process file lock, ``.hubless.lock`` at the
volume root, that every writer (``fetch``, ``import``, ``remove``, ``verify --deep`` recording
its check, :func:`~hubless_fetcher.install.install_model`, and the server distribution's
``hubless-optimize``) holds while it changes the volume. Readers (the server) never take it:
the manifest is replaced atomically.

The lock itself is the volume format's (:class:`hubless_volume.writelock.VolumeWriteLock`), so
that ``hubless-optimize`` takes the same lock without depending on the fetcher; this one only
says that it waits on the fetcher's logger (which the CLI prints).
"""

from __future__ import annotations

import logging
from pathlib import Path

from hubless_volume import writelock
from hubless_volume.writelock import WRITE_LOCK_NAME

__all__ = ["WRITE_LOCK_NAME", "VolumeWriteLock"]

logger = logging.getLogger(__name__)


class VolumeWriteLock(writelock.VolumeWriteLock):
    """:class:`hubless_volume.writelock.VolumeWriteLock`, logging on the fetcher's logger."""

    def __init__(self, models_dir: Path) -> None:
        super().__init__(models_dir, logger)
