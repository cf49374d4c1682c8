"""Reading the volume manifest from a server that must not stall, fill its memory, or unload
its models because of what sits at the manifest's path.

The manifest is read through :func:`hubless_volume.read_volume_file` only: a regular file
inside the volume of at most ``MAX_MANIFEST_BYTES``. A FIFO there used to freeze every port
(the reload check read it on the event loop and blocked in ``open``), and a link to
``/dev/zero`` took the process from 0.4 to 5.4 GB in 6 s; both are now refused without being
read. The server reads it in three places: the initial plan (:class:`~.registry.Registry`),
the reload check (:class:`ManifestWatch`, in a worker thread: one read, hashed to tell whether
it changed, and the same bytes parsed) and the load retries (:mod:`.load_retry`, in a worker
thread).

A failed read is one of three reasons, counted in ``hubless_manifest_errors_total{reason}``:

* ``missing``: no manifest, after one was there. That is not an empty volume (the fetcher
  never removes the manifest, it replaces it atomically): the models loaded keep serving and
  nothing is unloaded until a manifest is back. Before any manifest was seen an absent file is
  an empty volume, as at startup;
* ``unreadable``: not a regular file inside the volume (FIFO, device, link leaving it), over
  its size cap, or an I/O error;
* ``invalid``: not JSON, or JSON of another shape (:class:`hubless_volume.ManifestError`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from hubless_server.observability import metrics
from hubless_volume import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    Manifest,
    ManifestError,
    ManifestMissingError,
    VolumeFileError,
    read_volume_file,
)

log = logging.getLogger(__name__)

REASONS = ("missing", "unreadable", "invalid")
"""The ``reason`` label of ``hubless_manifest_errors_total``."""


class ManifestUnreadableError(ManifestError):
    """The manifest is there but cannot be read as a file: not a regular file inside the
    volume, over its size cap, or an I/O error."""


def manifest_label(models_dir: Path | str) -> str:
    """How errors name the manifest (as :meth:`hubless_volume.Manifest.load` does)."""
    return f"manifest {Manifest.path_in(Path(models_dir))}"


def read_manifest_bytes(models_dir: Path | str) -> bytes:
    """The manifest's bytes; :class:`ManifestMissingError` when it is absent,
    :class:`ManifestUnreadableError` when it is not a regular file inside the volume under
    its cap or cannot be read. Never blocks on a FIFO; blocking file I/O all the same: an
    asyncio caller runs it in a thread."""
    label = manifest_label(models_dir)
    try:
        return read_volume_file(models_dir, MANIFEST_NAME, MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise ManifestMissingError(label, "", "is missing") from None
    except VolumeFileError as exc:
        raise ManifestUnreadableError(label, "", exc.reason) from None
    except OSError as exc:
        raise ManifestUnreadableError(label, "", f"cannot read it: {exc}") from None


def parse_manifest(raw: bytes, models_dir: Path | str) -> Manifest:
    """The manifest from its bytes, invalid model entries left out (``Manifest.rejected``);
    :class:`ManifestError` when the file as a whole is not a manifest."""
    return Manifest.from_bytes(raw, manifest_label(models_dir), skip_invalid=True)


def load_manifest(models_dir: Path | str, *, missing_ok: bool) -> Manifest:
    """``Manifest.load(models_dir, skip_invalid=True, missing_ok=missing_ok)`` whose errors
    tell the reasons apart (:func:`error_reason`): an absent file is an empty volume with
    ``missing_ok``, else :class:`ManifestMissingError`. Blocking: run it in a thread."""
    try:
        raw = read_manifest_bytes(models_dir)
    except ManifestMissingError:
        if missing_ok:
            return Manifest()
        raise
    return parse_manifest(raw, models_dir)


def error_reason(exc: ManifestError) -> str:
    """``missing``, ``unreadable`` or ``invalid`` (see the module docstring)."""
    if isinstance(exc, ManifestMissingError):
        return "missing"
    if isinstance(exc, ManifestUnreadableError):
        return "unreadable"
    return "invalid"


def count_error(exc: ManifestError) -> str:
    """Count ``exc`` in ``hubless_manifest_errors_total``; returns its reason."""
    reason = error_reason(exc)
    metrics.MANIFEST_ERRORS.labels(reason).inc()
    return reason


class ManifestWatch:
    """Tells whether the manifest changed since the last look, reading it only when its
    (device, inode, size, mtime) moved (the fetcher replaces it atomically: a new inode), and
    then once: the bytes hashed are the bytes parsed.

    Every method does blocking file I/O: the reloader runs :meth:`look` in a worker thread,
    one look at a time. A failure to read is reported by :meth:`look` once per change of what
    is at the path (a FIFO that stays there is one failure, not one per check)."""

    def __init__(self, models_dir: Path | str) -> None:
        self.models_dir = Path(models_dir)
        self.path = Manifest.path_in(self.models_dir)
        self._signature: tuple[int, ...] | None = None
        self._digest = ""
        self.seen = False
        """Something was at the manifest's path at some look: from then on an absent
        manifest is an error (it vanished), not an empty volume."""

    def _stat(self) -> tuple[int, ...] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def _read(self) -> tuple[str, bytes | None, ManifestError | None]:
        """(digest, bytes, error): the digest names what is there, bytes or not."""
        try:
            raw = read_manifest_bytes(self.models_dir)
        except ManifestMissingError as exc:
            return "absent", None, exc
        except ManifestError as exc:
            self.seen = True
            return f"unreadable: {exc.message}", None, exc
        self.seen = True
        return hashlib.sha256(raw).hexdigest(), raw, None

    def prime(self) -> None:
        """Remember the manifest as it is now (before the registry reads it)."""
        self._signature = self._stat()
        self._digest = self._read()[0]

    def look(self, force: bool = False) -> Manifest | None:
        """The manifest when it changed since the last look (or ``force``), else None.

        Raises :class:`ManifestError` when what changed cannot be used: a manifest seen before
        that is gone (:class:`ManifestMissingError`), one that is not a regular file inside
        the volume (:class:`ManifestUnreadableError`) or not a valid manifest. An absent
        manifest that was never seen is an empty volume (an empty :class:`Manifest`)."""
        signature = self._stat()
        if not force and signature is not None and signature == self._signature:
            return None
        self._signature = signature
        digest, raw, error = self._read()
        if digest == self._digest and not force:
            return None
        self._digest = digest
        if isinstance(error, ManifestMissingError) and not self.seen:
            return Manifest()
        if error is not None:
            raise error
        assert raw is not None
        return parse_manifest(raw, self.models_dir)
