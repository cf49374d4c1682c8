"""Writing a file so that a reader sees the old one or the new one, never a mix, and a crash
never leaves the new name pointing at half-written bytes.

The one pattern, written once: the new content goes to a fresh temporary name in the same
folder (same filesystem, so the rename is atomic), is ``fsync``-ed, is renamed over the target
with ``os.replace``, and the folder is ``fsync``-ed so the rename itself survives a power
cut. A failure before the rename removes the temporary file. The temporary name is
``.<target name>.<random>.tmp``: hidden, and recognisable as debris by the fetcher's pruning.

Every writer of the volume (the manifest, the previous-generations record, refs, blobs,
snapshot links, ``hubless-optimize``'s artifacts) and of the fetcher's own outputs (the lock
file, bundles) goes through here.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FILE_MODE = 0o644
"""Mode of the files written on the volume: the server reads them as another user."""


def fsync_dir(path: Path | str) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk; best effort: a
    filesystem that cannot ``fsync`` a folder (some network mounts) is not an error."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_name(target: Path) -> Path:
    """A fresh, unused name beside ``target``: ``.<name>.<random>.tmp`` (nothing created)."""
    return target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")


@contextlib.contextmanager
def atomic_output(
    target: Path | str, *, fsync: bool = True, mode: int | None = FILE_MODE
) -> Iterator[Path]:
    """``with atomic_output(target) as tmp:`` write ``tmp`` (a fresh path beside ``target``,
    not yet created: create it as a file or a symlink); when the block ends normally, ``tmp``
    is fsynced (``fsync``), given ``mode`` (``None``: as created), renamed over ``target``,
    and the folder fsynced. When the block raises, ``tmp`` is removed and ``target`` is
    untouched."""
    target = Path(target)
    tmp = temp_name(target)
    try:
        yield tmp
        if not tmp.is_symlink():
            if fsync:
                fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            if mode is not None:
                os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync:
        fsync_dir(target.parent)


def atomic_write_bytes(
    path: Path | str, data: bytes, *, fsync: bool = True, mode: int = FILE_MODE
) -> None:
    """Replace ``path`` with ``data`` atomically (see the module docstring)."""
    with atomic_output(path, fsync=False, mode=mode) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
    if fsync:
        fsync_dir(Path(path).parent)


def atomic_write_text(
    path: Path | str, text: str, *, fsync: bool = True, mode: int = FILE_MODE
) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync, mode=mode)


def json_bytes(data: Any) -> bytes:
    """``data`` as the volume's JSON files are written: 2-space indent, a final newline."""
    return (json.dumps(data, indent=2) + "\n").encode("utf-8")


def atomic_write_json(
    path: Path | str, data: Any, *, fsync: bool = True, mode: int = FILE_MODE
) -> None:
    """Replace ``path`` with ``data`` as JSON (:func:`json_bytes`) atomically."""
    atomic_write_bytes(path, json_bytes(data), fsync=fsync, mode=mode)


def atomic_place_file(
    source: Path | str,
    target: Path | str,
    *,
    move: bool = False,
    fsync: bool = True,
    mode: int = FILE_MODE,
) -> None:
    """Copy (or, with ``move``, move) ``source`` to ``target`` atomically: the bytes land
    under a temporary name beside ``target``, fsynced, then renamed over it. ``move`` from
    the same filesystem is a rename, from another a copy and delete."""
    with atomic_output(target, fsync=fsync, mode=mode) as tmp:
        if move:
            shutil.move(source, tmp)
        else:
            shutil.copyfile(source, tmp)


def atomic_symlink(link: Path | str, points_to: str, *, fsync: bool = True) -> None:
    """Make ``link`` a symlink to ``points_to``, replacing whatever was there atomically."""
    with atomic_output(link, fsync=fsync, mode=None) as tmp:
        os.symlink(points_to, tmp)
