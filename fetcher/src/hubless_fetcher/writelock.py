"""The volume write lock: one writer at a time on a models volume, across processes.

Not to be confused with the catalog lock file (``catalog.lock.json``, see
:mod:`hubless_fetcher.lockfile`): this is an inter-process file lock, ``.hubless.lock`` at the
volume root, that every writer (``fetch``, ``import``, ``remove``, ``verify --deep`` recording
its check, :func:`~hubless_fetcher.install.install_model`) holds while it changes the volume.
Readers (the server) never take it: the manifest is replaced atomically.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from types import TracebackType

from filelock import FileLock, Timeout

logger = logging.getLogger(__name__)

WRITE_LOCK_NAME = ".hubless.lock"


@functools.cache
def _file_lock(path: str) -> FileLock:
    return FileLock(path)


class VolumeWriteLock:
    """``with VolumeWriteLock(models_dir):`` holds the volume's writer lock, waiting (and
    saying so once) while another process has it.

    Re-entrant within a thread: every instance for the same volume shares one underlying
    lock, so :func:`~hubless_fetcher.install.install_model` may take it inside a fetch that
    already holds it.
    """

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = Path(models_dir)
        self._lock = _file_lock(str(self.models_dir.resolve() / WRITE_LOCK_NAME))

    def __enter__(self) -> VolumeWriteLock:
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            logger.info("another hubless-fetch is working on %s; waiting for it", self.models_dir)
            self._lock.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._lock.release()
