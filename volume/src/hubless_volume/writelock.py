"""The volume write lock: one writer at a time on a models volume, across processes.

Every program that changes a volume (``hubless-fetch`` ``fetch``, ``import``, ``remove``,
``gc``, ``verify --deep`` recording its check, and ``hubless-optimize`` installing an ONNX
artifact) holds ``.hubless.lock`` at the volume root while it does. Readers (the server) never
take it: the manifest is replaced atomically. It lives in the volume format's distribution so
that the server's distribution (which ships ``hubless-optimize``) can take it without
depending on the fetcher.

The lock file must be a regular file (a link, FIFO or device put in its place is refused,
never opened through). An exclusive ``flock`` on the file, standard library only (the same
kind of lock the fetcher took through ``filelock`` before, so a writer of either kind
excludes the other). Re-entrant within a thread: a function that takes it may be called by
one that already holds it (an install inside a fetch); other threads of the process wait
like other processes.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import threading
from pathlib import Path
from types import TracebackType

from hubless_volume.safeio import VolumeFileError, kind_of

log = logging.getLogger(__name__)

WRITE_LOCK_NAME = ".hubless.lock"


class _Held:
    """The per-process state of one lock file: a thread lock and the flocked descriptor."""

    def __init__(self) -> None:
        self.thread_lock = threading.RLock()
        self.fd = -1
        self.depth = 0


_HELD: dict[str, _Held] = {}
_HELD_GUARD = threading.Lock()


def _held(path: str) -> _Held:
    with _HELD_GUARD:
        return _HELD.setdefault(path, _Held())


def _open_lock_file(path: str) -> int:
    """The lock file's descriptor, created if absent; a link, FIFO or device at its place is
    refused (:class:`~hubless_volume.safeio.VolumeFileError`), never followed or waited on."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise VolumeFileError(WRITE_LOCK_NAME, "is a link, not a regular file") from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise VolumeFileError(WRITE_LOCK_NAME, f"is {kind_of(mode)}, not a regular file")
    return fd


class VolumeWriteLock:
    """``with VolumeWriteLock(models_dir):`` holds the volume's writer lock, waiting (and
    saying so once, on ``logger``, by default this module's) while another writer has it."""

    def __init__(self, models_dir: Path, logger: logging.Logger | None = None) -> None:
        self.models_dir = Path(models_dir)
        self.path = str(self.models_dir.resolve() / WRITE_LOCK_NAME)
        self.log = logger or log
        self._state = _held(self.path)

    def __enter__(self) -> VolumeWriteLock:
        state = self._state
        if not state.thread_lock.acquire(blocking=False):
            self.log.info("another thread is writing to %s; waiting for it", self.models_dir)
            state.thread_lock.acquire()
        try:
            if state.depth == 0:
                fd = _open_lock_file(self.path)
                try:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        self.log.info(
                            "another writer (hubless-fetch or hubless-optimize) is working on "
                            "%s; waiting for it",
                            self.models_dir,
                        )
                        fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                state.fd = fd
            state.depth += 1
        except BaseException:
            state.thread_lock.release()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        state = self._state
        state.depth -= 1
        if state.depth == 0:
            fd, state.fd = state.fd, -1
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        state.thread_lock.release()
