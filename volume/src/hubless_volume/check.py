"""The one check of an installed model's files against its manifest entry.

Fast: every file exists (following its snapshot symlink to the blob) with the recorded size.
Deep: the sha256 of its content matches too. Both the fetcher (``verify``, repairs, up-to-date
checks) and the server (before loading a model) use :func:`check_entry`; it only reads. The
files an entry derived from its commit (``hubless-optimize``'s ONNX exports, the golden
outputs, the signature files) are checked the same way with ``artifacts=True``
(``hubless-fetch verify``); the other callers leave them out: a bad artifact only makes its
model fall back to PyTorch (the server hashes it when it loads it), where a bad model file
fails the model, and the fetcher must not re-download a model for it. The signature files are
only checked to be there: whether they verify is :func:`hubless_volume.signing.verify_model`'s
question, which needs the trusted key.

Every file checked must be a regular file (a FIFO or a device with the recorded size is not
one: opening it would block or never end), and a derived file must be one of its own, not a
link; a deep check of an ONNX artifact also reads its structure and refuses one whose tensors
keep their data in other files (:mod:`hubless_volume.onnx_check`).
"""

from __future__ import annotations

import hashlib
import stat
from dataclasses import dataclass
from pathlib import Path

from hubless_volume.golden import GoldenRecord
from hubless_volume.manifest import ArtifactRecord, ModelEntry
from hubless_volume.onnx_check import external_data_problems
from hubless_volume.paths import SIGNATURE_FILES, SIGNATURE_KIND, VolumePathError, derived_folder
from hubless_volume.safeio import VolumeFileError, kind_of, open_regular_file

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Problem:
    """One missing or corrupt file of an installed model (``path`` is empty when the problem
    is the model's, not one file's: no snapshot folder, no files listed)."""

    model: str
    path: str
    reason: str

    @property
    def detail(self) -> str:
        """``"<path>: <reason>"``, or the reason alone for a whole-model problem."""
        return f"{self.path}: {self.reason}" if self.path else self.reason

    def __str__(self) -> str:
        return f"{self.model}: {self.detail}"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's content; :class:`~hubless_volume.safeio.VolumeFileError` (an
    :class:`OSError`) when it is not a regular file (never blocks on a FIFO)."""
    digest = hashlib.sha256()
    with open_regular_file(path) as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_entry(
    models_dir: Path, entry: ModelEntry, *, deep: bool = False, artifacts: bool = False
) -> list[Problem]:
    """Problems of one installed model; empty when every file is in place (and, when
    ``deep``, has the recorded sha256). With ``artifacts`` the files derived from its commit
    too (:func:`check_derived`: artifacts, golden outputs, signature files; a problem's
    ``path`` is then relative to the repository folder, ``hubless-onnx/<commit>/model.onnx``)."""
    try:
        snapshot = entry.snapshot_dir(models_dir)
    except VolumePathError as exc:
        return [Problem(entry.name, "", str(exc))]
    if not entry.files:
        return [Problem(entry.name, "", "the manifest entry lists no files")]
    if not snapshot.is_dir():
        return [Problem(entry.name, "", f"snapshot folder {snapshot} is missing")]
    problems: list[Problem] = []
    for record in entry.files:
        try:
            link = entry.file_path(models_dir, record.path)
        except VolumePathError as exc:
            problems.append(Problem(entry.name, record.path, f"refused: {exc}"))
            continue
        reason = _check_file(link, record.size, record.sha256 if deep else None)
        if reason:
            problems.append(Problem(entry.name, record.path, reason))
    if artifacts:
        problems += check_derived(models_dir, entry, deep=deep)
    return problems


def check_artifacts(models_dir: Path, entry: ModelEntry, *, deep: bool = False) -> list[Problem]:
    """Problems of the artifacts ``entry`` records (each a plain file in the repository
    folder, never a link); empty when each is in place with its size (and, when ``deep``,
    its sha256, and an ONNX artifact keeps no tensor data in another file). What
    ``hubless-optimize`` asks to tell whether its exports are current."""
    return _check_records(models_dir, entry, entry.artifacts, deep)


def check_derived(models_dir: Path, entry: ModelEntry, *, deep: bool = False) -> list[Problem]:
    """Problems of every file ``entry`` derived from its commit: its artifacts and golden
    outputs, each a plain file in place with its size (and sha256), and its signature files,
    each a plain file in place (whether they verify needs the key:
    :func:`hubless_volume.signing.verify_model`). Empty when all are."""
    golden = [entry.golden] if entry.golden is not None else []
    problems = _check_records(models_dir, entry, [*entry.artifacts, *golden], deep)
    if not entry.signature:
        return problems
    try:
        folder = entry.signature_dir(models_dir)
    except VolumePathError as exc:
        return [*problems, Problem(entry.name, entry.signature, f"refused: {exc}")]
    for name in SIGNATURE_FILES:
        reason = plain_file_refusal(folder / name)
        if reason:
            relative = f"{derived_folder(SIGNATURE_KIND, entry.commit)}/{name}"
            problems.append(Problem(entry.name, relative, reason))
    return problems


def _check_records(
    models_dir: Path, entry: ModelEntry, records: list[ArtifactRecord | GoldenRecord], deep: bool
) -> list[Problem]:
    problems: list[Problem] = []
    for record in records:
        try:
            path = entry.artifact_path(models_dir, record)
        except VolumePathError as exc:
            problems.append(Problem(entry.name, record.path, f"refused: {exc}"))
            continue
        reason = plain_file_refusal(path) or _check_file(
            path, record.size, record.sha256 if deep else None
        )
        if not reason and deep and isinstance(record, ArtifactRecord):
            reason = artifact_refusal(record, path)
        if reason:
            problems.append(Problem(entry.name, record.path, reason))
    return problems


def plain_file_refusal(path: Path) -> str:
    """Why ``path`` is not a regular file of its own (missing, a link, a FIFO, a device...),
    or ``""``; from ``lstat``, so nothing is opened. What a derived file (artifact, golden
    outputs, signature file) must be."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    if stat.S_ISLNK(mode):
        return "is a link, not a file"
    if not stat.S_ISREG(mode):
        return f"is {kind_of(mode)}, not a regular file"
    return ""


def artifact_refusal(record: ArtifactRecord, path: Path) -> str:
    """Why the artifact at ``path`` must not be used although its bytes are the recorded
    ones, or ``""``: an ONNX model with external data (or that cannot be read as one)."""
    if record.kind != "onnx":
        return ""
    problems = external_data_problems(path)
    if not problems:
        return ""
    shown = "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
    return f"refused: not a self-contained ONNX model: {shown}"


def _check_file(link: Path, size: int, sha256: str | None) -> str:
    """Why the file at ``link`` is not right, or ``""``."""
    try:
        st = link.stat()  # follows the snapshot symlink to the blob
    except FileNotFoundError:
        return "dangling link (blob missing)" if link.is_symlink() else "missing"
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    if not stat.S_ISREG(st.st_mode):
        return f"is {kind_of(st.st_mode)}, not a regular file"
    actual = st.st_size
    if actual != size:
        return f"size {actual} != expected {size}"
    if sha256 is not None:
        try:
            digest = sha256_file(link)
        except VolumeFileError as exc:
            return exc.reason
        except OSError as exc:
            return f"unreadable: {exc.strerror or exc}"
        if digest != sha256:
            return f"sha256 {digest} != expected {sha256}"
    return ""
