"""Reading the volume's own files without trusting what is at their path.

The manifest, the previous-generations record, the catalog and its lock file are read by
programs that must not stall or fill their memory because of what sits at those paths: a FIFO
blocks ``open`` until a writer comes (a server reading its manifest on the event loop froze
every port), and ``/dev/zero`` behind a symlink never ends (0.4 -> 5.4 GB in 6 s). Every such
read goes through :func:`read_regular_file` (a file the operator names: catalog, lock file) or
:func:`read_volume_file` (a file on the models volume, which must also stay inside it):

- the path is ``stat``-ed first and anything but a regular file (FIFO, device, socket,
  folder) is refused without being opened, so no device's open has side effects;
- it is then opened with ``O_NONBLOCK`` (a FIFO swapped in meanwhile cannot block the open)
  and ``O_NOFOLLOW`` on the resolved path (a link swapped in meanwhile is refused), and the
  opened descriptor is ``fstat``-ed and checked again;
- a file bigger than its cap is refused from its size, before a byte is read, and never more
  than the cap (plus one byte, to notice a file that grew) is read.

Refusals raise :class:`VolumeFileError`, an :class:`OSError` (so loaders that already turn
"cannot read it" into their own error keep doing so) naming the file and why. An absent file
raises :class:`FileNotFoundError` as ``open`` would, so "absent" keeps its meaning.

The caps (:data:`MAX_MANIFEST_BYTES` and the others) are far above what a real file reaches
and far below what would hurt a server. Measured on the default catalog's ten models (5-9
files each): the manifest is 15,140 bytes, 1.1-1.7 KB per entry, ~180 bytes per file record;
so 16 MiB holds over 5,000 models of 15-20 files. A lock file lists the same file records
without the rest of the entry; the default catalog is 2.4 KB for ten models.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

MAX_MANIFEST_BYTES = 16 << 20
"""Cap on ``hubless-manifest.json``: ~1.5 KB per model entry, so about 10,000 models."""
MAX_PREVIOUS_BYTES = 16 << 20
"""Cap on ``hubless-previous.json``: the manifest's entry shape, one per kept generation."""
MAX_LOCK_BYTES = 16 << 20
"""Cap on a catalog lock file (``catalog.lock.json``): ~180 bytes per file record."""
MAX_CATALOG_BYTES = 1 << 20
"""Cap on a catalog (``catalog.toml``): ~240 bytes per model, so over 4,000 models."""

_CHUNK = 1 << 20


class VolumeFileError(OSError):
    """A file that must be a regular file (inside the volume, under its size cap) is not.

    ``file`` names it (relative to the volume for a volume file) and ``reason`` says why; the
    message is ``"<file>: <reason>"``."""

    def __init__(self, file: str, reason: str) -> None:
        super().__init__(f"{file}: {reason}")
        self.file = file
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.file, self.reason))


def kind_of(mode: int) -> str:
    """What a ``st_mode`` is, in words (``"a FIFO (named pipe)"``, ``"a regular file"``...)."""
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a regular file"


def _require_regular(st: os.stat_result, label: str, max_bytes: int | None) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise VolumeFileError(label, f"is {kind_of(st.st_mode)}, not a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise VolumeFileError(
            label, f"is {st.st_size} bytes, more than the {max_bytes} bytes allowed for it"
        )


def _open_checked(path: str, label: str, max_bytes: int | None, *, nofollow: bool) -> int:
    """A read-only descriptor of ``path``, checked to be a regular file (under ``max_bytes``)
    before and after opening; :class:`FileNotFoundError` when it is absent."""
    _require_regular(os.stat(path), label, max_bytes)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_NOFOLLOW if nofollow else 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if nofollow and exc.errno == errno.ELOOP:  # it became a link after it was resolved
            raise VolumeFileError(label, "was replaced by a link while being opened") from None
        raise
    try:
        _require_regular(os.fstat(fd), label, max_bytes)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_fd(fd: int, label: str, max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while chunk := os.read(fd, min(_CHUNK, max_bytes + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise VolumeFileError(label, f"grew past the {max_bytes} bytes allowed for it")
    return b"".join(chunks)


def read_regular_file(path: Path | str, max_bytes: int, *, label: str | None = None) -> bytes:
    """The bytes of ``path``, which must be a regular file (symlinks followed) of at most
    ``max_bytes``; for files the operator names (a catalog, a lock file), which may be links
    anywhere (a Kubernetes ConfigMap mount is links).

    :class:`FileNotFoundError` when absent, :class:`VolumeFileError` (naming ``label``, by
    default the path) for a FIFO, device, socket or folder, or a file over ``max_bytes``:
    neither blocks nor reads more than ``max_bytes + 1`` bytes."""
    name = os.fspath(path)
    fd = _open_checked(name, label or name, max_bytes, nofollow=False)
    try:
        return _read_fd(fd, label or name, max_bytes)
    finally:
        os.close(fd)


def open_regular_file(path: Path | str, *, label: str | None = None) -> BinaryIO:
    """``open(path, "rb")`` for a file that must be a regular file (symlinks followed), for
    callers that stream it (hashing): refused like :func:`read_regular_file`, with no size
    cap, and never blocks on a FIFO."""
    name = os.fspath(path)
    fd = _open_checked(name, label or name, None, nofollow=False)
    return os.fdopen(fd, "rb")


def volume_relative(models_dir: Path | str, path: Path | str) -> tuple[str, str]:
    """``(label, real)`` for a file of the volume: ``path`` relative to ``models_dir`` (as
    given, for messages) and its fully resolved path. ``path`` is relative to ``models_dir``
    or absolute; :class:`VolumeFileError` when it is relative with ``..``, or when it (links
    followed) resolves outside ``models_dir``."""
    root = Path(models_dir)
    given = Path(path)
    if given.is_absolute():
        candidate = given
        label = os.path.relpath(given, root)
    else:
        if ".." in given.parts:
            raise VolumeFileError(os.fspath(given), "leaves the volume ('..')")
        candidate = root / given
        label = given.as_posix()
    real_root = os.path.realpath(root)
    real = os.path.realpath(candidate)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise VolumeFileError(label, f"resolves to {real}, outside the volume {real_root}")
    return label, real


def read_volume_file(models_dir: Path | str, path: Path | str, max_bytes: int) -> bytes:
    """The bytes of a file of the models volume: ``path`` (relative to ``models_dir``, or an
    absolute path under it) must resolve, links followed, to a regular file inside
    ``models_dir`` of at most ``max_bytes``.

    :class:`FileNotFoundError` when it is absent (a link to nothing included);
    :class:`VolumeFileError` naming the file relative to the volume and why otherwise (a
    FIFO, device, socket or folder; a link leaving the volume; over ``max_bytes``). Never
    blocks on a FIFO and never reads more than ``max_bytes + 1`` bytes. Blocking file I/O
    all the same: an asyncio caller runs it in a thread (``asyncio.to_thread``)."""
    label, real = volume_relative(models_dir, path)
    fd = _open_checked(real, label, max_bytes, nofollow=True)
    try:
        return _read_fd(fd, label, max_bytes)
    finally:
        os.close(fd)
