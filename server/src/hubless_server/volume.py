"""Read-only checks of an installed model's files against its manifest entry."""

from __future__ import annotations

import hashlib
from pathlib import Path

from hubless_fetcher.manifest import ModelEntry

_CHUNK = 1 << 20


class VolumeError(Exception):
    """A model's files on the volume do not match its manifest entry."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_model_files(entry: ModelEntry, models_dir: Path, verify_sha256: bool = False) -> None:
    """Raise :class:`VolumeError` unless every file of ``entry`` exists in its snapshot with
    the recorded size (and sha256 when ``verify_sha256``). Reads only, never writes."""
    snapshot = entry.snapshot_dir(models_dir)
    if not snapshot.is_dir():
        raise VolumeError(f"snapshot folder {snapshot} is missing")
    if not entry.files:
        raise VolumeError("the manifest entry lists no files")
    for record in entry.files:
        path = snapshot / record.path
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise VolumeError(f"{record.path}: missing or unreadable ({exc.strerror})") from exc
        if size != record.size:
            raise VolumeError(f"{record.path}: {size} bytes on disk, manifest says {record.size}")
        if verify_sha256:
            try:
                actual = _sha256(path)
            except OSError as exc:
                raise VolumeError(f"{record.path}: unreadable ({exc.strerror})") from exc
            if actual != record.sha256:
                raise VolumeError(
                    f"{record.path}: sha256 {actual[:12]}... does not match the manifest's "
                    f"{record.sha256[:12]}..."
                )
